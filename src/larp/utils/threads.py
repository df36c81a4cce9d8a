"""How many CPU threads torch uses: every command runs on the CPUs it may use unless told otherwise
(`larp ... --threads N`, or a training recipe's `run.threads`)."""

from __future__ import annotations

import os

import torch


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and `taskset` narrow), or the
    machine's count where the platform has no affinity."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """torch's own choice (its physical cores), but never more than the CPUs this process may use: in a
    container or under `taskset` torch may see the whole host, and more threads than CPUs only wait."""
    return max(1, min(torch.get_num_threads(), available_cpus()))


def use_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads`, or the default (`default_threads`) when None or 0; returns
    the number set."""
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 1 (or 0 / None for every available CPU), got {threads}")
    n = threads if threads else default_threads()
    torch.set_num_threads(n)
    return n
