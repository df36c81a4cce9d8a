"""Real processes: a second writer of an output is refused while the first runs, and a `kill` (SIGTERM)
ends a command as Ctrl-C does: no half-written file, no hidden temporary file, no lock left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import official

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _long_generate(out: Path, context: Path, frames: int) -> list[str]:
    return [sys.executable, "-m", "larp.cli", "generate", "--tokenizer", str(official("tokenizer_tiny")),
            "--frame_prediction", "--fp_model", str(official("ar_fp_tiny")), "--context", str(context),
            "--num_frames", str(frames), "--device", "cpu", "-o", str(out)]


@pytest.fixture
def context(tmp_path: Path) -> Path:
    import torch

    from larp.data.video_write import write_mp4

    return write_mp4(tmp_path / "context.mp4", torch.rand(3, 8, 32, 32), fps=8)


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_runs_and_a_kill_leaves_nothing_behind(tmp_path, context):
    out = tmp_path / "long"
    first = subprocess.Popen(_long_generate(out, context, 20_000), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        # The first run writes its video while it samples: its temporary file appears early.
        _wait_for(lambda: any(out.glob(".long_000.mp4.*")), "the first run's video to be started")
        second = subprocess.run(_long_generate(out, context, 30), env=_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 1
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "is being written by larp generate (pid " + str(first.pid) in err[0], err
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130 and "Traceback" not in stderr
    # No video, no temporary file, no lock: the folder is as a fresh run would want it.
    assert sorted(p.name for p in out.iterdir() if p.name != ".larp-files") == []
    again = subprocess.run(_long_generate(out, context, 30), env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    from larp.data.video_io import probe_video

    assert probe_video(out / "long_000.mp4").num_frames == 30
