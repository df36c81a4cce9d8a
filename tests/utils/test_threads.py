"""CPU threads: every command runs on the CPUs it may use unless `--threads` says otherwise."""

from __future__ import annotations

import os

import pytest
import torch

from larp.utils import threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_is_torchs_choice_within_the_cpus_this_process_may_use(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # e.g. `taskset -c 3`
    assert threads.available_cpus() == 1
    assert threads.default_threads() == 1
    assert threads.use_threads(None) == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)  # a big host
    torch.set_num_threads(2)
    assert threads.use_threads(0) == 2  # torch's own count (its cores) when fewer than the CPUs


def test_an_explicit_count_is_set_and_a_negative_one_refused():
    assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be >= 1 .* got -2"):
        threads.use_threads(-2)
