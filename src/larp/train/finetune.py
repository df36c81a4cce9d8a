"""Fine-tuning: start a run from released or own weights, carry an AR model's class embedding over to a new
class count, and keep named parts of a tokenizer fixed."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from larp.models.hub import WEIGHTS_NAME, load_state_dict_strict, read_config, read_weights, resolve_folder
from larp.utils.config import ConfigError

log = logging.getLogger("larp.train")

# Parameter-name prefixes of the parts that `model.freeze` names (every tokenizer parameter is in one).
TOKENIZER_PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("x_embedder.", "encoder_latent_query_embed", "encoder.", "bottleneck.in_linear."),
    "decoder": ("bottleneck.out_linear.", "decoder_patch_query_token_type_embed", "decoder.", "final_layer."),
    "prior": ("prior_model.",),
    "codebook": ("bottleneck.regularizer.",),
}
CLASS_TABLE = "cls_embedding.embedding_table.weight"


def freeze(model: nn.Module, parts: list[str]) -> list[str]:
    """Stop the gradient of the tokenizer's `parts` (keys of TOKENIZER_PARTS); returns the frozen names."""
    frozen = []
    for part in parts:
        if part not in TOKENIZER_PARTS:
            raise ConfigError(f"model.freeze: unknown part {part!r}; expected some of {list(TOKENIZER_PARTS)}")
        names = [n for n, p in model.named_parameters() if n.startswith(TOKENIZER_PARTS[part])]
        if not names:
            raise ConfigError(f"model.freeze: the model has no {part} to freeze")
        for name in names:
            model.get_parameter(name).requires_grad_(False)
        frozen += names
    return frozen


def _class_rows(old: torch.Tensor, fresh: torch.Tensor, old_classes: int, new_classes: int,
                rows: list[int]) -> torch.Tensor:
    """The new class table: rows copied from the checkpoint's `old` table where `rows` asks (-1: the fresh
    row of the model as built, initialised as in training), and the checkpoint's null-class row (the last,
    used for guidance) kept when both tables have one."""
    if not rows:
        rows = list(range(new_classes)) if old_classes == new_classes else [-1] * new_classes
    if len(rows) != new_classes:
        raise ConfigError(f"model.class_rows has {len(rows)} entries; the new model has {new_classes} classes")
    out = fresh.detach().clone()
    for i, r in enumerate(rows):
        if not -1 <= r < old_classes:
            raise ConfigError(f"model.class_rows[{i}]={r}: expected -1 (a fresh row) or a class of the "
                              f"checkpoint, in [0, {old_classes})")
        if r >= 0:
            out[i] = old[r]
    if len(old) > old_classes and len(fresh) > new_classes:
        out[new_classes] = old[old_classes]
    return out


def load_init_weights(model: nn.Module, source: str, class_rows: list[int] | None = None) -> Path:
    """Copy the weights of the model folder or hub id `source` into `model` (strictly: every tensor must
    match by name and shape), except an AR model's class table, which is carried over row by row
    (`class_rows`, see `_class_rows`) when the class counts differ. Returns the weights file."""
    folder = resolve_folder(source)
    file = folder / WEIGHTS_NAME
    state = read_weights(file)
    own = model.state_dict()
    if CLASS_TABLE in state and CLASS_TABLE in own and state[CLASS_TABLE].shape[1:] == own[CLASS_TABLE].shape[1:]:
        old_classes = int(read_config(folder).get("num_classes", len(state[CLASS_TABLE])))
        new_classes = int(model.config.num_classes)  # type: ignore[union-attr]
        state[CLASS_TABLE] = _class_rows(state[CLASS_TABLE], own[CLASS_TABLE], old_classes, new_classes,
                                         list(class_rows or []))
        if old_classes != new_classes or class_rows:
            log.info("class embedding: %d classes from %s's %d (rows %s)", new_classes, source, old_classes,
                     class_rows or "fresh")
    elif class_rows:
        raise ConfigError("model.class_rows is for a class-conditional AR model and checkpoint")
    load_state_dict_strict(model, state, str(file))
    return file
