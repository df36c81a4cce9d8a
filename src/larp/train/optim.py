"""Optimisation pieces shared by the tokenizer and AR trainings: parameter groups, the learning-rate
schedule and the exponential moving average of the weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from larp.train.config import OptimConfig


class WarmupCosine:
    """Learning-rate factor: linear warm-up, then cosine from 1 to `min_ratio` at `total` steps."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(opt: torch.optim.Optimizer, optim: OptimConfig, total: int,
                   warmup: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine over `total` optimiser steps; `warmup` overrides `optim.warmup_steps`."""
    steps = optim.warmup_steps if warmup is None else warmup
    return torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(steps, total, optim.min_lr_ratio))


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
