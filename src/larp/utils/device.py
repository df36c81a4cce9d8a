"""Devices, dtypes and mixed precision, resolved the same way by every command."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else the CPU; any other name as torch spells it ('cuda:1')."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (expected auto, cpu, cuda or cuda:N): {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch build sees no CUDA device")
    return device


def resolve_dtype(name: str | None, device: torch.device, allowed: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """A dtype by name; None picks bfloat16 on CUDA and float32 elsewhere."""
    if name is None:
        name = "bfloat16" if device.type == "cuda" else "float32"
    if name not in allowed:
        raise ValueError(f"dtype must be one of {sorted(allowed)}, got {name!r}")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in `dtype` on `device`; a no-op for float32 (or None)."""
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
