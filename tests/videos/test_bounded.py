"""Token files and whole videos within bounded memory: declared sizes checked before anything is allocated,
video files streamed window by window with the same results as in-memory videos."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from larp import LARPTokenizer
from larp.data import video_io
from larp.data.video_io import read_video, write_mp4
from larp.utils.files import NpzArchive
from larp.videos import source as source_mod
from larp.videos import tokens as tokens_mod
from larp.videos.tokens import (
    PSNRMeter,
    VideoTokens,
    VideoTokensError,
    decode_tokens,
    iter_decode,
    iter_reconstruct,
    reconstruct_video,
    tokenize_video,
)
from tests.conftest import official
from tests.videos.test_tokens import PixelCodec, as_float, random_frames


@pytest.fixture(scope="module")
def tiny() -> LARPTokenizer:
    return LARPTokenizer.from_pretrained(official("tokenizer_tiny"))


def _good(tmp_path: Path) -> tuple[VideoTokens, dict]:
    tokens = tokenize_video(PixelCodec(), random_frames(5, 8, 8), spatial="crop", fps=25.0)
    return tokens, tokens.metadata()


def _save(path: Path, tokens: np.ndarray, meta: dict | str) -> Path:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    np.savez(path, tokens=tokens, metadata=np.array([text]))
    return path


# ------------------------------------------------------------------------------------- token file limits
@pytest.mark.parametrize(("change", "message"), [
    ({"original_size": [60000, 60000]}, r"frames must be between 1x1 and 8192x8192, got 60000x60000"),
    ({"fps": 1e12}, r"fps: frame rate must be a number in \(0, 1000\] frames per second, got 1000000000000.0"),
    ({"fps": -3}, r"frame rate must be a number in \(0, 1000\]"),
    ({"fps": "25"}, r"fps must be a number or null, found '25'"),
    ({"frames_per_window": "4"}, r"frames_per_window must be an integer >= 1, found '4'"),
    ({"num_frames": True}, r"num_frames must be an integer >= 1, found True"),
    ({"num_frames": 10**12}, r"num_frames must be at most 10,000,000"),
    ({"frame_size": 1, "original_size": [8192, 8192], "spatial": "tile"},
     r"8192x8192 frames would take 67,108,864 tiles of 1x1 per window, more than 65,536"),
    ({"tiles": [[0, 0]] * 50_000}, r"the recorded tiles are not the 1 that larp plans"),
])
def test_absurd_declarations_are_refused_before_the_tokens_are_read(tmp_path, monkeypatch, change, message):
    tokens, meta = _good(tmp_path)
    path = _save(tmp_path / "bad.npz", tokens.tokens, {**meta, **change})
    assert path.stat().st_size < 2_000_000
    real_read = NpzArchive.read
    monkeypatch.setattr(NpzArchive, "read", lambda self, name, limit: pytest.fail("tokens read")
                        if name == "tokens" else real_read(self, name, limit))
    with pytest.raises(VideoTokensError, match=message):
        VideoTokens.load(path)


def test_non_finite_fps_in_json_is_refused(tmp_path):
    tokens, meta = _good(tmp_path)
    text = json.dumps(meta).replace('"fps": 25.0', '"fps": NaN')
    with pytest.raises(VideoTokensError, match=r"frame rate must be a number in \(0, 1000\] frames per second, got nan"):
        VideoTokens.load(_save(tmp_path / "nan.npz", tokens.tokens, text))


def test_constructor_checks_the_same_limits():
    tokens, meta = _good(Path("."))
    with pytest.raises(ValueError, match=r"fps: frame rate must be a number in \(0, 1000\]"):
        VideoTokens(tokens.tokens, "", 4, 8, 256, 5, 1e12, tokens.layout)
    with pytest.raises(ValueError, match=r"frame_size must be an integer in \[1, 4,096\], got 100000"):
        VideoTokens(tokens.tokens, "", 4, 100_000, 256, 5, None, tokens.layout)


def _craft(path: Path, meta: dict, shape: tuple[int, ...], payload: bytes, dtype: str = "<i8") -> Path:
    """A token file whose `tokens` member has a header declaring `shape`, followed by `payload`, deflated."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        buffer = io.BytesIO()
        np.save(buffer, np.array([json.dumps(meta)]))
        zf.writestr("metadata.npy", buffer.getvalue())
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
        buffer.write(payload)
        zf.writestr("tokens.npy", buffer.getvalue())
    return path


def test_a_token_member_declaring_gigabytes_is_refused_from_its_header(tmp_path):
    tokens, meta = _good(tmp_path)
    meta = {**meta, "num_frames": 4_000_000, "frames_per_window": 4}  # a million rows, as the metadata says
    path = _craft(tmp_path / "bomb.npz", meta, (1_000_000, 1024), b"\0" * 4096)  # declares 8 GB
    assert path.stat().st_size < 5000
    with pytest.raises(VideoTokensError, match=r"array 'tokens' declares \(1000000, 1024\) int64 "
                                               r"\(8,192,000,000 bytes\), more than the 4,294,967,296 bytes"):
        VideoTokens.load(path)


def test_a_token_member_inflating_beyond_its_header_is_refused(tmp_path):
    tokens, meta = _good(tmp_path)
    path = _craft(tmp_path / "bomb.npz", meta, tokens.tokens.shape, tokens.tokens.tobytes() + b"\0" * (8 << 20))
    assert path.stat().st_size < 40_000
    with pytest.raises(VideoTokensError, match=r"array 'tokens' unpacks to [\d,]+ bytes, more than its 12,288 bytes"):
        VideoTokens.load(path)


def test_pickled_or_float_tokens_are_refused_and_nothing_runs(tmp_path):
    tokens, meta = _good(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(np.array([Payload()], dtype=object))
    path = _craft(tmp_path / "pickle.npz", meta, (2, 768), payload, dtype="|O")
    with pytest.raises(VideoTokensError, match="array 'tokens' holds Python objects"):
        VideoTokens.load(path)
    assert not marker.exists()
    path = _save(tmp_path / "float.npz", tokens.tokens.astype(np.float32), meta)
    with pytest.raises(VideoTokensError, match=r"integer tokens\), found float32 \(2, 768\)"):
        VideoTokens.load(path)


def test_saved_token_files_honour_the_umask(tmp_path):
    tokens, _ = _good(tmp_path)
    old = os.umask(0o027)
    try:
        path = tokens.save(tmp_path / "t.npz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640 and VideoTokens.load(path) == tokens


# ------------------------------------------------------------------------------------- streaming
@pytest.fixture
def movie(tmp_path: Path) -> Path:
    return write_mp4(tmp_path / "movie.mp4", random_frames(21, 50, 72, seed=3), fps=15)


def test_a_file_is_streamed_window_by_window_with_the_same_tokens(tiny, movie, monkeypatch):
    frames, _ = read_video(movie)
    expected = {s: tokenize_video(tiny, frames, spatial=s, fps=15.0, batch_size=3) for s in ("crop", "cover", "tile")}
    chunk_sizes = []
    real_chunks = video_io.VideoReader.chunks

    def spy(self, size, max_frames=None):
        for chunk in real_chunks(self, size, max_frames):
            chunk_sizes.append(chunk.shape[0])
            yield chunk

    monkeypatch.setattr(video_io.VideoReader, "chunks", spy)
    monkeypatch.setattr(video_io, "read_video", lambda *a, **k: pytest.fail("whole video read"))
    for spatial, want in expected.items():
        got = tokenize_video(tiny, movie, spatial=spatial, batch_size=3)  # fps from the file
        assert got == want, spatial
    assert max(chunk_sizes) == 8 and sum(chunk_sizes) == 3 * 21  # one window (the model's T) at a time


def test_reconstructing_a_file_equals_reconstructing_its_frames(tiny, movie):
    frames, _ = read_video(movie)
    for tile in (False, True):
        want, want_psnr = reconstruct_video(tiny, frames, tile=tile)
        got, psnr = reconstruct_video(tiny, movie, tile=tile)
        assert torch.equal(got, want) and psnr == pytest.approx(want_psnr, abs=1e-9)
        meter = PSNRMeter()
        chunks = list(iter_reconstruct(tiny, movie, tile=tile, meter=meter))
        assert [c.shape[1] for c in chunks] == [8, 8, 5]
        assert torch.equal(torch.cat(chunks, dim=1), want) and meter.value == pytest.approx(want_psnr, abs=1e-9)


def test_large_frames_are_converted_and_blended_a_few_frames_at_a_time(tiny, monkeypatch):
    frames = random_frames(11, 40, 70, seed=5)
    want = {tile: reconstruct_video(tiny, frames, tile=tile) for tile in (False, True)}
    tokens = tokenize_video(tiny, frames, spatial="tile", overlap=6)
    whole = decode_tokens(tiny, tokens)
    # As if every frame were huge: one frame per conversion and per blended chunk; identical values.
    monkeypatch.setattr(source_mod, "FRAME_GROUP_BYTES", 1)
    monkeypatch.setattr(tokens_mod, "CHUNK_BYTES", 1)
    chunks = list(iter_decode(tiny, tokens))
    assert [c.shape[1] for c in chunks] == [1] * 11 and torch.equal(torch.cat(chunks, dim=1), whole)
    for tile, (recon, psnr) in want.items():
        got, got_psnr = reconstruct_video(tiny, frames, tile=tile)
        assert torch.equal(got, recon) and got_psnr == pytest.approx(psnr, abs=1e-9)


def test_whole_video_functions_refuse_beyond_max_bytes(tiny):
    frames = random_frames(9, 40, 40)
    tokens = tokenize_video(tiny, frames, spatial="tile")
    with pytest.raises(ValueError, match=r"takes 172,800 bytes as float32, more than max_bytes=100,000; "
                                         r"stream it with iter_decode"):
        decode_tokens(tiny, tokens, max_bytes=100_000)
    with pytest.raises(ValueError, match="stream it with iter_reconstruct"):
        reconstruct_video(tiny, frames, max_bytes=100_000)
    assert decode_tokens(tiny, tokens, max_bytes=None).shape == (3, 9, 40, 40)


def test_exact_codec_through_a_file_source(tmp_path):
    """Lossless frames in a file (PNG-like content is not needed: compare against the decoded file)."""
    path = write_mp4(tmp_path / "x.mp4", random_frames(7, 12, 20), fps=10)
    frames, _ = read_video(path)
    recon, psnr = reconstruct_video(PixelCodec(), path, tile=True, overlap=2, batch_size=3)
    assert torch.equal(recon, as_float(frames)) and psnr == 100.0


def test_a_model_with_huge_weights_is_an_error_not_a_black_video(tmp_path, capsys):
    from larp import tokenizer_preset
    from larp.cli import main
    from larp.data.video_write import NonFiniteVideoError, to_uint8

    with pytest.raises(NonFiniteVideoError, match=r"holds 1 NaN or infinite values of 24"):
        to_uint8(torch.tensor([float("nan")] + [0.5] * 23).reshape(3, 2, 2, 2))
    torch.manual_seed(0)
    model = LARPTokenizer(tokenizer_preset("larp-tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e30)  # finite, so loading accepts them; the output overflows
    folder = model.save_pretrained(tmp_path / "huge")
    video = tmp_path / "v.mp4"
    write_mp4(video, random_frames(8, 32, 32), fps=8)
    assert main(["reconstruct", str(video), "--tokenizer", str(folder), "-o", str(tmp_path / "r.mp4")]) == 1
    out, err = capsys.readouterr()
    assert "NaN or infinite values" in err and "PSNR" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge", "v.mp4"]  # no mp4, no partial file, no lock
