"""Output locks (one writer per folder, stale locks taken over), the manifest behind --overwrite, and the
YAML budget."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from larp.cli import main
from larp.utils.config import ConfigError, safe_yaml
from larp.utils.outputs import (
    LOCK_NAME,
    FileLock,
    FolderBusyError,
    Manifest,
    NotOwnedError,
    exclusive_output,
    lock_path,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_is_refused_with_the_holder_named_and_the_lock_goes_with_the_first(tmp_path):
    out = tmp_path / "run"
    with exclusive_output(out, "train"):
        with pytest.raises(FolderBusyError, match=rf"{out} is being written by larp train \(pid {os.getpid()} on "
                                                  rf"{socket.gethostname()}, since "):
            with exclusive_output(out, "generate"):
                pass
        assert json.loads((out / LOCK_NAME).read_text())["command"] == "train"
    assert not (out / LOCK_NAME).exists()
    with exclusive_output(out, "generate"):  # free again
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    path = lock_path(tmp_path / "x.mp4", folder=False)
    assert path == tmp_path / ".x.mp4.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "time": time.time()}))
    with exclusive_output(tmp_path / "x.mp4", "decode", folder=False) as lock:
        assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()
    # another host's lock is judged by its heartbeat (mtime): fresh is held, old is stale
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time()}))
    assert not FileLock(path).acquire()
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert FileLock(path).acquire()


def test_the_heartbeat_keeps_a_long_lock_fresh(tmp_path):
    lock = FileLock(tmp_path / "l.lock", heartbeat=0.05)
    assert lock.acquire()
    os.utime(lock.path, (0, 0))
    time.sleep(0.3)
    assert time.time() - lock.path.stat().st_mtime < 5
    lock.release()
    assert not lock.path.exists()


def test_manifest_clear_removes_only_recorded_entries_and_never_the_folder(tmp_path):
    out = tmp_path / "out"
    manifest = Manifest(out)
    manifest.claim(out / "model", out / "metrics.json")
    (out / "model").mkdir()
    (out / "model" / "w.bin").write_text("w")
    (out / "metrics.json").write_text("{}")
    (out / "thesis.txt").write_text("precious")
    assert manifest.entries() == ["model", "metrics.json"]
    with pytest.raises(NotOwnedError, match=r"thesis.txt exist\(s\) and larp did not write it"):
        manifest.claim(out / "thesis.txt")
    # an input inside an entry stops the clearing before anything is removed
    with pytest.raises(NotOwnedError, match=r"w.bin is an input of this run but lies in .*model"):
        manifest.clear(keep=[out / "model" / "w.bin"])
    assert (out / "model" / "w.bin").exists()
    assert sorted(p.name for p in manifest.clear()) == ["metrics.json", "model"]
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    assert (out / "thesis.txt").read_text() == "precious"


def test_manifest_file_has_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        Manifest(tmp_path).record(tmp_path / "a")
    finally:
        os.umask(old)
    assert (tmp_path / ".larp-files").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------- YAML budget
def test_billion_laughs_is_refused_before_expansion():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1024
    with pytest.raises(ConfigError, match=r"expands to more than 100,000 values through its aliases"):
        safe_yaml(text, "recipe r.yaml")
    assert safe_yaml("x: &x [1, 2]\ny: *x\n", "r") == {"x": [1, 2], "y": [1, 2]}
    with pytest.raises(ConfigError, match=r"more than the 1,048,576 bytes"):
        safe_yaml("#" * (1 << 20) + "\n", "recipe big.yaml")


def test_cli_reports_a_billion_laughs_recipe_in_one_line(tmp_path, capsys):
    lines = ["a: &a [1,1,1,1,1,1,1,1,1,1]"] + [
        f"{n}: &{n} [" + ",".join([f"*{p}"] * 10) + "]" for p, n in zip("abcdefg", "bcdefgh", strict=True)]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    assert main(["train", "tokenizer", "--config", str(recipe), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "expands to more than 100,000 values" in err and err.count("\n") == 1
