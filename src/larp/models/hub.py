"""Loading and saving models as `config.json` + `model.safetensors` folders (local or Hugging Face hub).

No pickle anywhere: weights are safetensors, configs are JSON. Loading is strict and bounded:

* the config is parsed and range-checked first (unknown keys and absurd sizes are refused);
* the model is built on the meta device (no memory, no initialisation) and every tensor name, shape and
  dtype is compared with the weight file's header before any weight is read;
* only floating-point weights with finite values are accepted (an integer, boolean or NaN tensor would
  otherwise load after a silent cast and give silently wrong results);
* the weights then become the model's parameters, so peak memory is about one copy of the weights.

Every refusal is a `CheckpointError` that names the file and the tensors concerned."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from larp.models.card import model_card
from larp.utils.errors import CheckpointError
from larp.utils.files import (
    atomic_write_bytes,
    hf_endpoint,
    host_resolves,
    offline_mode,
    write_json,
    write_safetensors,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}

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

    # Without network, the hub cache at once (the hub client would retry for tens of seconds first).
    local_only = not host_resolves(hf_endpoint())
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                                      local_files_only=local_only))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"could not get the model {text!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Without network access, download {CONFIG_NAME} and {WEIGHTS_NAME} from "
            f"https://huggingface.co/{text} on a connected machine (e.g. `hf download {text} {CONFIG_NAME} "
            f"{WEIGHTS_NAME} --local-dir {text.split('/')[1]}`), then either copy the hub cache to this "
            "machine's HF_HOME or pass the folder's path instead of the repo id") from exc


def read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"missing {file}: a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    if file.stat().st_size > 1 << 20:  # a config is a few kilobytes
        raise CheckpointError(f"{file} has {file.stat().st_size:,} bytes; a model config is at most 1 MiB")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object, found {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------ weights
# Keys that only one kind of checkpoint's config.json has.
_KIND_KEYS = {"a tokenizer": ("bottleneck_token_num", "encoder_hidden_size", "bottleneck"),
              "an AR model": ("vocab_size", "n_layer", "cls_token_num")}


def checkpoint_kind(config: dict[str, Any]) -> str | None:
    """"a tokenizer" or "an AR model" from a config.json's keys; None when it looks like neither."""
    for kind, keys in _KIND_KEYS.items():
        if sum(k in config for k in keys) >= 2:
            return kind
    return None


def read_weights_header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) from the file's header, without reading any weight."""
    if not file.is_file():
        raise CheckpointError(f"missing weights file {file}")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is truncated or corrupted and cannot be read as safetensors: {exc}") from exc


def _count(shapes: Any) -> int:
    return sum(int(torch.Size(s).numel()) for s in shapes)


def check_against_model(expected: dict[str, torch.Tensor], header: dict[str, tuple[str, tuple[int, ...]]],
                        source: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected, mis-shaped or non-float tensor.

    `expected` is the model's state dict (meta tensors are enough: only names, shapes and dtypes count)."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    common = sorted(set(expected) & set(header))
    mismatched = [f"{k}: checkpoint {header[k][1]} vs model {tuple(expected[k].shape)}"
                  for k in common if header[k][1] != tuple(expected[k].shape)]
    wrong_type = [f"{k}: {header[k][0]}" for k in common if _wrong_type(header[k][0], expected[k])]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if wrong_type:
        problems.append(f"tensors of the wrong type {wrong_type} (weights must be floats: F16, BF16, F32 or F64)")
    if problems:
        sizes = (f" (the model has {_count(t.shape for t in expected.values()):,} values in "
                 f"{len(expected)} tensors; the file holds {_count(s for _, s in header.values()):,} in "
                 f"{len(header)})")
        raise CheckpointError(f"{source} does not match the model{sizes}: " + "; ".join(problems))


def _wrong_type(stored: str, wanted: torch.Tensor) -> bool:
    """Floating tensors take any float type (cast on load); others (counters, ids) their exact type."""
    return stored not in FLOAT_DTYPES if wanted.is_floating_point() else stored != _st_dtype(wanted.dtype)


def _st_dtype(dtype: torch.dtype) -> str:
    names = {torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    return {v: k for k, v in FLOAT_DTYPES.items()}.get(dtype) or names.get(dtype, str(dtype))


def read_weights(file: Path, expected: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors on the CPU, each cast to the dtype of `expected`'s tensor of that name.

    With `expected`, the header is checked first (`check_against_model`); every floating tensor must hold
    finite values."""
    header = read_weights_header(file)
    if expected is not None:
        check_against_model(expected, header, str(file))
    state: dict[str, torch.Tensor] = {}
    not_finite: list[str] = []
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in header:
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    not_finite.append(name)
                if expected is not None and tensor.dtype != expected[name].dtype:
                    tensor = tensor.to(expected[name].dtype)
                state[name] = tensor
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is truncated or corrupted and cannot be read as safetensors: {exc}") from exc
    if not_finite:
        shown = not_finite[:10] + (["..."] if len(not_finite) > 10 else [])
        raise CheckpointError(f"{file} holds NaN or infinite values in {len(not_finite)} tensor(s) {shown}: "
                              "the weights are damaged (or come from a diverged run)")
    return state


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `module` (allocated or on the meta device), naming every missing, unexpected,
    mis-shaped or non-float tensor and refusing NaN/inf values."""
    expected = module.state_dict()
    header = {k: (_st_dtype(v.dtype), tuple(v.shape)) for k, v in state.items()}
    check_against_model(expected, header, source)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite values in {bad}")
    on_meta = any(t.is_meta for t in expected.values())
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=on_meta)


def _finish_meta(model: nn.Module, source: str) -> None:
    """Fill what the weight file does not hold (non-persistent buffers) after a meta-device build."""
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left and hasattr(model, "init_non_persistent_buffers"):
        model.init_non_persistent_buffers()
        left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: {type(model).__name__} has tensors that the weight file does not "
                              f"fill and that it cannot compute ({left})")


class HubModelMixin:
    """`from_pretrained` / `save_pretrained` / `push_to_hub` for a module built from a config dataclass.

    Subclasses set `config_class` (with `from_json_dict` / `to_json_dict`) and take the config as their
    only constructor argument. A subclass with non-persistent buffers (computed, not saved) defines
    `init_non_persistent_buffers()`, which `from_pretrained` calls after building on the meta device."""

    config_class: Any
    kind: str | None = None  # "a tokenizer" or "an AR model": a checkpoint of the other kind is named as such

    @classmethod
    def config_from_folder(cls, folder: Path) -> Any:
        data = read_config(folder)
        found, wanted = checkpoint_kind(data), getattr(cls, "kind", None)
        if found is not None and wanted is not None and found != wanted:
            raise CheckpointError(f"{folder} holds {found}, not {wanted} (its {CONFIG_NAME} has "
                                  f"{', '.join(k for k in _KIND_KEYS[found] if k in data)}); pass it where "
                                  f"{found} is expected")
        try:
            return cls.config_class.from_json_dict(data)
        except ValueError as exc:
            raise CheckpointError(f"{folder / CONFIG_NAME}: {exc}") from exc

    @classmethod
    def from_pretrained(cls: type[M], path_or_repo: str | os.PathLike, revision: str | None = None,
                        map_location: str | torch.device = "cpu") -> M:
        """Load a folder written by `save_pretrained` (or a hub repo id): strict, bounded, pickle-free."""
        folder = resolve_folder(path_or_repo, revision)
        config = cls.config_from_folder(folder)
        with torch.device("meta"):
            model = cls(config)  # type: ignore[call-arg]
        file = folder / WEIGHTS_NAME
        state = read_weights(file, model.state_dict())  # type: ignore[attr-defined]
        model.load_state_dict(state, strict=True, assign=True)  # type: ignore[attr-defined]
        _finish_meta(model, str(file))  # type: ignore[arg-type]
        model.eval()  # type: ignore[attr-defined]
        return model.to(map_location)  # type: ignore[attr-defined]

    def save_pretrained(self, folder: str | os.PathLike, *, recipe: dict[str, Any] | None = None,
                        metrics: dict[str, Any] | None = None, repo_id: str | None = None,
                        training: dict[str, Any] | None = None,
                        evaluations: dict[str, dict[str, Any]] | None = None) -> Path:
        """Write `config.json`, `model.safetensors` and a model card `README.md`, each atomically.

        The card (`larp.models.card.model_card`) holds the config and usage, and the training `recipe`, the
        last evaluation's `metrics`, facts about the run (`training`) and further `evaluations` when given."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        write_safetensors(out / WEIGHTS_NAME, state, metadata={"format": "pt"})
        config = self.config.to_json_dict()  # type: ignore[attr-defined]
        write_json(out / CONFIG_NAME, config)
        card = model_card(type(self).__name__, config, num_parameters=_count(v.shape for v in state.values()),
                          recipe=recipe, metrics=metrics, training=training, evaluations=evaluations,
                          repo_id=repo_id)
        atomic_write_bytes(out / CARD_NAME, lambda tmp: Path(tmp).write_text(card))
        return out

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str | None = None,
                    recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None,
                    evaluations: dict[str, dict[str, Any]] | None = None) -> str:
        """Upload the folder `save_pretrained` writes to the Hugging Face model repo `repo_id` (created if
        needed) and return the commit's URL.

        The folder is first loaded back with `from_pretrained` and compared tensor by tensor, so only what
        loads strictly is uploaded (this holds a second copy of the weights in memory for a moment)."""
        if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")) or repo_id.endswith("/"):
            raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
        if offline_mode():
            raise CheckpointError(f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set; unset it, or save the "
                                  "folder with save_pretrained and upload it later with `hf upload`")
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        with tempfile.TemporaryDirectory(prefix="larp-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", recipe=recipe, metrics=metrics,
                                          repo_id=repo_id, training=training, evaluations=evaluations)
            loaded = type(self).from_pretrained(folder).state_dict()
            ours = self.state_dict()  # type: ignore[attr-defined]
            if loaded.keys() != ours.keys() or any(not torch.equal(loaded[k], ours[k].detach().cpu()) for k in ours):
                raise CheckpointError("the saved folder does not load back identically; nothing was uploaded")
            try:
                api = HfApi(token=token)
                api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
                info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                         revision=revision, commit_message=commit_message
                                         or f"Upload {type(self).__name__} with larp")
            except (HfHubHTTPError, OSError, ValueError) as exc:
                raise CheckpointError(f"could not upload to the Hugging Face repo {repo_id!r} "
                                      f"({type(exc).__name__}: {exc})") from exc
        return str(getattr(info, "commit_url", info))


def write_card(folder: str | os.PathLike, class_name: str, **fields: Any) -> Path:
    """(Re)write the model card of a saved folder from its `config.json` and weight header, with `fields`
    (`recipe`, `metrics`, `training`, `evaluations`, `repo_id`) as `model_card` takes them."""
    folder = Path(folder)
    config = read_config(folder)
    count = _count(shape for _, shape in read_weights_header(folder / WEIGHTS_NAME).values())
    card = model_card(class_name, config, num_parameters=count, **fields)
    atomic_write_bytes(folder / CARD_NAME, lambda tmp: Path(tmp).write_text(card))
    return folder / CARD_NAME
