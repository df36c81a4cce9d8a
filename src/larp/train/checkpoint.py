"""Training checkpoints: atomic, pickle-free, resumable.

A checkpoint is a folder `step_XXXXXXXX/` holding `tensors.safetensors` (every tensor of the nested training
state: model, discriminator, optimisers, EMA, RNG states) and `state.json` (everything else, with the
tensors' places). It is written into a temporary folder and renamed into place, so a crash, a full disk or
an interrupted write never damages the previous checkpoint."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from larp.utils.errors import CheckpointError
from larp.utils.files import default_dir_mode, default_file_mode

log = logging.getLogger(__name__)

TENSORS = "tensors.safetensors"
STATE = "state.json"
TMP_PREFIX, OLD_PREFIX = ".tmp_", ".old_"  # half-written and replaced checkpoint folders
_TENSOR_TAG = "__tensor__"
_TUPLE_TAG = "__tuple__"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Replace every tensor in a nested structure by a reference, collecting tensors by path."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR_TAG: key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint keys must be str or int, got {k!r} at {prefix}")
            # JSON keys are strings: remember integer keys (optimizer state is keyed by parameter index).
            jk = f"#int:{k}" if isinstance(k, int) else k
            out[jk] = flatten_state(v, tensors, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, tuple):
        return {_TUPLE_TAG: [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR_TAG in obj:
            return tensors[obj[_TENSOR_TAG]]
        if _TUPLE_TAG in obj:
            return tuple(unflatten_state(v, tensors) for v in obj[_TUPLE_TAG])
        return {(int(k[5:]) if k.startswith("#int:") else k): unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(final: Path, step: int, state: dict[str, Any]) -> Path:
    """Write `state` as the checkpoint folder `final`, atomically: into a temporary sibling first, then
    renamed into place (replacing an older folder of that name whole)."""
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=root))
    try:
        os.chmod(tmp, default_dir_mode())  # mkdtemp gives 0700 and safetensors 0600: the umask's modes instead
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten_state(state, tensors)
        save_file(tensors, str(tmp / TENSORS))
        os.chmod(tmp / TENSORS, default_file_mode())
        (tmp / STATE).write_text(json.dumps({"step": step, "state": skeleton}))
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after an interrupt): replace it whole
            old = root / f"{OLD_PREFIX}{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except (SafetensorError, OSError) as exc:  # a full disk, a quota: the older checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p for p in list_checkpoints(root) if p != final]
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint was changed"
        # an OSError, as before, so callers that handle I/O failures still do; the CLI prints it in one line
        raise OSError(f"could not write the checkpoint {final} ({' '.join(str(exc).split())}; is the disk "
                      f"full?); {kept}. Free some space and continue with --resume") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_checkpoint(root: Path, step: int, state: dict[str, Any]) -> Path:
    """Write `state` as `root/step_{step:08d}` atomically and return that folder."""
    return write_checkpoint(root / f"step_{step:08d}", step, state)


def remove_temporaries(root: Path) -> list[Path]:
    """Delete the half-written folders that a process killed during `write_checkpoint` leaves in `root`."""
    if not root.is_dir():
        return []
    prefixes = (TMP_PREFIX, OLD_PREFIX, ".step_")  # ".step_": the temporary name of earlier versions
    stale = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefixes)]
    for folder in stale:
        log.info("removing %s, left by an interrupted checkpoint write", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Read a checkpoint folder, naming the file when it is damaged."""
    state_file, tensor_file = folder / STATE, folder / TENSORS
    try:
        meta = json.loads(state_file.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {folder} has no {STATE}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_file} is damaged: {exc}") from exc
    try:
        tensors = load_file(str(tensor_file))
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {folder} has no {TENSORS}") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{tensor_file} is truncated or corrupted: {exc}") from exc
    try:
        return unflatten_state(meta["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(f"{folder}: {STATE} refers to tensor {exc} missing from {TENSORS}") from exc


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def load_latest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint; a damaged one is reported and the previous one is used."""
    for folder in reversed(list_checkpoints(root)):
        try:
            return folder, load_checkpoint(folder)
        except CheckpointError as exc:
            log.error("skipping damaged checkpoint: %s", exc)
    return None


def prune_checkpoints(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for folder in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
