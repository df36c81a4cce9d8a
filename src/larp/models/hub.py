"""Loading and saving models as `config.json` + `model.safetensors` folders (local or Hugging Face hub).

No pickle anywhere: weights are safetensors, configs are JSON. Loading is strict: a missing or unexpected
tensor, a shape mismatch, an unknown config key or a damaged file raises an error that names it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from larp.utils.errors import CheckpointError
from larp.utils.files import atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="HubModelMixin")



def resolve_folder(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is, else a Hugging Face repo id fetched through the hub cache.

    Respects HF_HUB_OFFLINE and HF_HOME. Offline without a cached copy, one error says what to fetch."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"{text!r} is neither a model folder (with {CONFIG_NAME} and {WEIGHTS_NAME}) "
                              "nor a Hugging Face repo id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"could not get the model {text!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Without network access, download {CONFIG_NAME} and {WEIGHTS_NAME} from "
            f"https://huggingface.co/{text} on a connected machine (e.g. `huggingface-cli download {text}`), "
            "then either copy the hub cache to this machine's HF_HOME or pass the folder's path instead "
            "of the repo id") from exc


def read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"missing {file}: a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object, found {type(data).__name__}")
    return data


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"missing weights file {file}")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is truncated or corrupted and cannot be read as safetensors: {exc}") from exc


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `module`, naming every missing, unexpected or mis-shaped tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)



class HubModelMixin:
    """`from_pretrained` / `save_pretrained` for a module built from a config dataclass.

    Subclasses set `config_class` (with `from_json_dict` / `to_json_dict`) and take the config as their
    only constructor argument."""

    config_class: Any

    @classmethod
    def from_pretrained(cls: type[M], path_or_repo: str | os.PathLike, revision: str | None = None,
                        map_location: str | torch.device = "cpu") -> M:
        folder = resolve_folder(path_or_repo, revision)
        raw = read_config(folder)
        try:
            config = cls.config_class.from_json_dict(raw)
        except ValueError as exc:
            raise CheckpointError(f"{folder / CONFIG_NAME}: {exc}") from exc
        model = cls(config)  # type: ignore[call-arg]
        load_state_dict_strict(model, read_weights(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
        model.eval()
        return model.to(map_location)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        atomic_write_bytes(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        text = json.dumps(self.config.to_json_dict(), indent=2, sort_keys=True) + "\n"  # type: ignore[attr-defined]
        atomic_write_bytes(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
        return out
