"""Optimisation pieces shared by the tokenizer and AR trainings: parameter groups, the learning-rate
schedule and the exponential moving average of the weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from larp.train.config import OptimConfig


class WarmupCosine:
    """Learning-rate factor of the step numbered `step` (counted from 1), as the reference computes it:
    linear warm-up from `min_ratio` + (1 - min_ratio) / warmup at step 1 to 1 at step `warmup`, then cosine
    down to `min_ratio` at step `total`. Without warm-up the cosine starts at step 1."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        m = self.min_ratio
        if step <= self.warmup:
            return m + (1 - m) * step / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))


def make_schedule(optim: OptimConfig, total: int, warmup: int | None = None) -> WarmupCosine:
    """Warm-up then cosine over `total` optimiser steps; `warmup` overrides `optim.warmup_steps`."""
    return WarmupCosine(optim.warmup_steps if warmup is None else warmup, total, optim.min_lr_ratio)


def fused_adam(device: torch.device) -> bool:
    """Whether Adam(W) takes its fused kernel on `device`: one pass over each parameter for the whole update.
    On a CPU it is several times faster than the per-parameter loop torch uses there by default (the
    reference's optimiser), the same update to float32 rounding; torch has it on CPUs from 2.4."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)


def remember_base_lrs(opt: torch.optim.Optimizer) -> None:
    """Keep each group's learning rate as its base (`base_lr`), which `set_lr_factor` scales."""
    for group in opt.param_groups:
        group.setdefault("base_lr", group["lr"])


def set_lr_factor(opt: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's rate to its base rate times `factor`, before a step; returns the first group's."""
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * factor
    return opt.param_groups[0]["lr"]


def make_ema(model: nn.Module, decay: float) -> nn.Module | None:
    """An exponential moving average of the weights (timm's ModelEmaV3), or None when decay is 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def prefix_groups(model: nn.Module, lr: float, multipliers: dict[str, float]) -> list[dict[str, Any]]:
    """Adam groups by parameter-name prefix, in the order of `multipliers` (the first matching prefix wins;
    "" matches the rest), each with learning rate `lr * multiplier`. Frozen parameters (requires_grad False)
    are left out; empty groups are dropped."""
    parts: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in multipliers}
    for name, param in model.named_parameters():
        if param.requires_grad:
            parts[next(prefix for prefix in parts if name.startswith(prefix))].append(param)
    return [{"params": ps, "lr": lr * multipliers[prefix]} for prefix, ps in parts.items() if ps]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on the weights of Linear layers only (not embeddings, norms, PE)."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    trained = [p for p in model.parameters() if p.requires_grad]
    with_decay = [p for p in trained if id(p) in decay]
    without = [p for p in trained if id(p) not in decay]
    return [{"params": with_decay, "weight_decay": weight_decay}, {"params": without, "weight_decay": 0.0}]
