"""Shared test helpers: the official fixtures folder and small models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"


def official(name: str) -> Path:
    """Path of an official fixture folder; skips the test when ../shared is absent (a user's clone)."""
    folder = FIXTURES / name
    if not folder.is_dir():
        pytest.skip(f"official fixtures not found at {folder} (they live in ../shared beside the repo)")
    return folder


# One thread: the tests use tiny tensors, where a second OpenMP thread only adds contention (tens of
# times slower when another process is busy on this 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
