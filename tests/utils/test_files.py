"""Atomic writes with the umask's permissions, bounded .npz reading, offline mode and file checks."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from larp.utils import files
from larp.utils.files import NpzArchive, atomic_write_bytes, check_file, current_umask, offline_mode


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_umask_is_read_without_changing_it(mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        assert files.default_file_mode() == 0o666 & ~mask and files.default_dir_mode() == 0o777 & ~mask
        assert current_umask() == mask
    finally:
        os.umask(old)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path):
    path = tmp_path / "a.txt"
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text("old"))

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_npz_archive_reads_headers_then_bounded_arrays(tmp_path: Path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.arange(6, dtype=np.int32).reshape(2, 3), b=np.array(["hi"]))
    with NpzArchive(path) as npz:
        assert npz.names == ["a", "b"]
        shape, dtype = npz.header("a")
        assert shape == (2, 3) and dtype == np.int32
        assert np.array_equal(npz.read("a", 24), np.arange(6).reshape(2, 3))
        with pytest.raises(ValueError, match=r"array 'a' declares \(2, 3\) int32 \(24 bytes\), more than the 23"):
            npz.read("a", 23)
        with pytest.raises(ValueError, match=r"missing array 'c' \(found \['a', 'b'\]\)"):
            npz.read("c", 100)


@pytest.mark.parametrize("case", ["npy", "text", "member"])
def test_npz_archive_refuses_what_is_not_an_archive_of_arrays(tmp_path: Path, case: str):
    path = tmp_path / "x.npz"
    if case == "npy":
        np.save(open(path, "wb"), np.zeros(3))
    elif case == "text":
        path.write_text("hello")
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("script.py", "print('hi')")
    message = "not an .npz archive of arrays" if case == "member" else "not a readable .npz archive"
    with pytest.raises(ValueError, match=message):
        NpzArchive(path)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("ON", True), ("yes", True),
                                                 ("0", False), ("", False), ("no", False)])
def test_offline_mode_follows_hf_hub_offline(monkeypatch, value, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert offline_mode() is expected


def test_check_file_compares_the_size_before_hashing(tmp_path: Path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert check_file(path, 7, digest, "the weights") == path
    monkeypatch.setattr(files, "sha256_of", lambda p: pytest.fail("hashed a file of the wrong size"))
    with pytest.raises(ValueError, match="has 7 bytes, expected 8 for the weights"):
        check_file(path, 8, digest, "the weights")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"has SHA-256 {digest}, expected {'0' * 64} for the weights"):
        check_file(path, 7, "0" * 64, "the weights")


def test_write_json_writes_undefined_figures_as_null(tmp_path):
    from larp.utils.files import write_json

    path = write_json(tmp_path / "m.json", {"psnr": float("nan"), "fvd": [1.5, float("inf")], "n": 3,
                                             "nested": {"x": -float("inf"), "ok": 0.25}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"psnr": None, "fvd": [1.5, None], "n": 3, "nested": {"x": None, "ok": 0.25}}
