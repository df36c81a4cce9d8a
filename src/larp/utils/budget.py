"""Budgets: every size that a file or an option declares is checked before the work starts.

A budget is a limit with a default that covers ordinary use and an option that raises it deliberately;
the error says how large the request is, the budget, and the option. docs/safety.md lists them.

This module must stay light (no torch): the command line checks options with it before loading models."""

from __future__ import annotations

from typing import Any

from larp.utils.errors import LarpError

DEFAULT_MAX_FRAMES = 100_000  # frames a command writes or reads per video: over an hour at 25 fps
DEFAULT_MAX_FRAME_PIXELS = 3840 * 2160  # pixels of one frame (4K UHD); H.264 itself stops at 8192x4320
DEFAULT_MAX_MEMORY_MB = 2048  # frames (float32) a command holds at once: one batch, one window


class BudgetError(LarpError):
    """A declared size over its budget: refused before any work."""


def check_budget(what: str, value: int | float, limit: int | float, option: str | None) -> None:
    """Refuse `value` above `limit`; the message names what, both numbers, and the option that raises it."""
    if value > limit:
        raise BudgetError(f"{what} is {value:,.0f}, over the budget of {limit:,.0f}"
                          + (f"; pass {option} {int(value) if value < 2**63 else value:.0f} (or more) to allow "
                             "it deliberately" if option else ""))


def check_frames(what: str, frames: int, height: int, width: int, *, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS) -> None:
    """Frame count and frame size of a video that a command is about to read or write."""
    check_budget(f"the frame size of {what} ({width}x{height}, in pixels)", height * width, max_frame_pixels,
                 "--max_frame_pixels")
    check_budget(f"the number of frames of {what}", frames, max_frames, "--max_frames")


def check_memory(what: str, nbytes: int, max_memory_mb: int = DEFAULT_MAX_MEMORY_MB) -> None:
    """Bytes that one step holds at once (a batch of frames, one window), in MB for the option."""
    mb = nbytes / 1e6
    if mb > max_memory_mb:
        raise BudgetError(f"{what} needs {mb:,.0f} MB at once, over the budget of {max_memory_mb:,} MB; ask for "
                          f"less, or pass --max_memory_mb {int(mb) + 1} (or more) to allow it deliberately")


def budget_args(args: Any) -> dict[str, int]:
    """The budgets a parsed command line holds (the defaults for the ones it does not)."""
    return {"max_frames": getattr(args, "max_frames", DEFAULT_MAX_FRAMES),
            "max_frame_pixels": getattr(args, "max_frame_pixels", DEFAULT_MAX_FRAME_PIXELS)}
