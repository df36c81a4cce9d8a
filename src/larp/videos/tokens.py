"""Tokenize, decode and reconstruct whole videos of any length, frame rate, size and aspect ratio.

A tokenizer takes clips of exactly T frames of S×S pixels. A whole video is mapped onto such clips:

* Time: consecutive windows of T frames (`plan_windows`). The last window is padded by repeating its last
  frame, and decoding trims the padding, so the output has the input's frame count. The frame rate is
  kept as it is (no temporal resampling); it is only recorded so that decoding writes the same rate.
* Space, one of three layouts (`spatial`):
  - "crop": shorter side resized to S (antialiased), centre S×S crop: one clip per window, the tokens the
    generators are trained on. Decoding returns the crop's region at the original scale: about
    min(H, W) × min(H, W) pixels (what lies outside the crop was never tokenized).
  - "cover": shorter side resized to S, then overlapping S×S tiles along the longer side, so the whole
    field of view is tokenized; decoding blends the tiles and resizes back to the original H×W.
  - "tile": no resize: overlapping S×S tiles over the native frame (replicate-padded on the bottom and
    right where the frame is smaller than S); decoding blends them at the native H×W.
  Overlapping tiles are blended with a linear ramp (`tile_weights`), normalised per pixel: a constant stays
  constant and tiles that agree reproduce their content exactly.

Memory is bounded whatever the video's length: the input may be a video file, read window by window
(`larp.videos.source`); `iter_decode` and `iter_reconstruct` yield the output window by window (a window
of very large frames in several chunks). Only `decode_tokens` and `reconstruct_video`, which return the
whole video, hold it all, and they refuse beyond their `max_bytes`.

Token files (`VideoTokens.save`) are .npz archives without pickle: the tokens and one JSON string holding
everything needed to decode them (tokenizer id, window and tile layout, original size, frame rate).
`VideoTokens.load` checks every declared size against the limits below and against the file's own
contents before it allocates anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from larp.data.video_io import check_fps
from larp.models.config import SIZE_LIMITS
from larp.models.tokenizer import LARPTokenizer
from larp.utils.device import DTYPES, autocast
from larp.utils.files import NpzArchive, atomic_write_bytes
from larp.videos.defaults import DEFAULT_BATCH, DEFAULT_SPATIAL
from larp.videos.layout import SpatialLayout, blend_tiles, plan_layout, plan_windows
from larp.videos.source import FrameSource, VideoInput

FILE_FORMAT = "larp.video_tokens"
FILE_VERSION = 1
DEFAULT_FPS = 8.0  # for writing tokens whose source frame rate is unknown

# What a token file may declare; checked before anything is allocated.
MAX_NUM_FRAMES = 10_000_000  # about four days at 30 fps
MAX_METADATA_BYTES = 16 << 20  # the JSON string (it lists the tiles)
MAX_TOKEN_BYTES = 4 << 30  # the token array
# What decode_tokens / reconstruct_video return at most by default (float32 frames).
WHOLE_VIDEO_MAX_BYTES = 8 << 30
# Blending accumulators (float64) plus resized output (float32) of one chunk of a window's frames.
CHUNK_BYTES = 128 << 20


class VideoTokensError(ValueError):
    """A token file that cannot be used; the message names the file and the cause."""

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path, self.cause = str(path), cause
        super().__init__(f"cannot use token file {self.path}: {cause}")


# ------------------------------------------------------------------------------------------ tokens


@dataclass(eq=False)
class VideoTokens:
    """The tokens of one video and what decoding them needs.

    `tokens` (num_windows * num_tiles, N) int64 are ordered window by window, and within a window tile by
    tile in `layout.tiles` order; in the "crop" layout there is one tile, so it is (num_windows, N)."""

    tokens: np.ndarray
    tokenizer: str  # the model folder or hub id that made them ("" when unknown)
    frames_per_window: int  # the model's T
    frame_size: int  # the model's S
    codebook_size: int  # the model's K
    num_frames: int  # of the original video
    fps: float | None
    layout: SpatialLayout

    def __post_init__(self) -> None:
        limits = {"frames_per_window": SIZE_LIMITS["frames"], "frame_size": SIZE_LIMITS["pixels"],
                  "codebook_size": SIZE_LIMITS["codes"], "num_frames": MAX_NUM_FRAMES}
        for name, limit in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an integer in [1, {limit:,}], got {value!r}")
        if self.fps is not None:
            try:
                self.fps = check_fps(self.fps)
            except ValueError as exc:
                raise ValueError(f"fps: {exc} (or None when unknown)") from exc
        t = self.tokens
        if not isinstance(t, np.ndarray) or t.ndim != 2 or t.dtype.kind not in "iu":
            desc = f"{t.dtype} {t.shape}" if isinstance(t, np.ndarray) else type(t).__name__
            raise ValueError(f"tokens must be an integer array (clips, N), got {desc}")
        self.tokens = t.astype(np.int64, copy=False)
        expected = self.num_windows * self.num_tiles
        if t.shape[0] != expected:
            raise ValueError(f"{self.num_frames} frames in windows of {self.frames_per_window} with "
                             f"{self.num_tiles} tiles need {expected} token rows, found {t.shape[0]}")
        if t.size and (t.min() < 0 or t.max() >= self.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}), found [{t.min()}, {t.max()}]")

    @property
    def windows(self) -> list[tuple[int, int]]:
        return plan_windows(self.num_frames, self.frames_per_window)

    @property
    def num_windows(self) -> int:
        return math.ceil(self.num_frames / self.frames_per_window)

    @property
    def num_tiles(self) -> int:
        return len(self.layout.tiles)

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """(3, T, H, W) of `decode_tokens`' output."""
        return (3, self.num_frames, *self.layout.output_size)

    def metadata(self) -> dict[str, Any]:
        lay = self.layout
        return {"format": FILE_FORMAT, "version": FILE_VERSION, "tokenizer": self.tokenizer,
                "frames_per_window": self.frames_per_window, "frame_size": self.frame_size,
                "codebook_size": self.codebook_size, "num_frames": self.num_frames, "fps": self.fps,
                "spatial": lay.spatial, "original_size": list(lay.original_size),
                "resized_size": list(lay.resized_size), "crop_box": list(lay.crop_box),
                "tiles": [list(t) for t in lay.tiles], "overlap": lay.overlap}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VideoTokens):
            return NotImplemented
        return self.metadata() == other.metadata() and np.array_equal(self.tokens, other.tokens)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz (arrays `tokens` and `metadata`, a one-element JSON string array), atomically."""
        meta = np.array([json.dumps(self.metadata(), sort_keys=True)])

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez(f, tokens=self.tokens, metadata=meta)

        atomic_write_bytes(Path(path), write)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VideoTokens:
        """Read a file written by `save`; anything else raises VideoTokensError naming the cause.

        The metadata is read and checked first; the token array is read only when the shape its header
        declares is the one the metadata implies (and within MAX_TOKEN_BYTES)."""
        p = Path(path)
        if not p.is_file():
            raise VideoTokensError(p, "file not found" if not p.exists() else "not a file")
        try:
            with NpzArchive(p) as npz:
                if npz.names != ["metadata", "tokens"]:
                    raise VideoTokensError(p, "expected the arrays ['metadata', 'tokens'] of a larp token file, "
                                              f"found arrays {npz.names}")
                meta = _read_metadata(p, npz.read("metadata", MAX_METADATA_BYTES))
                try:
                    layout, values = _parse_metadata(meta)
                except (KeyError, TypeError, ValueError) as exc:
                    raise VideoTokensError(p, f"inconsistent contents: {exc}") from exc
                rows = math.ceil(values["num_frames"] / values["frames_per_window"]) * len(layout.tiles)
                shape, dtype = npz.header("tokens")
                if len(shape) != 2 or dtype.kind not in "iu" or shape[0] != rows \
                        or not 1 <= shape[1] <= SIZE_LIMITS["tokens"]:
                    raise VideoTokensError(p, f"inconsistent contents: {values['num_frames']} frames in windows "
                                              f"of {values['frames_per_window']} with {len(layout.tiles)} tiles "
                                              f"need {rows} token rows (of at most {SIZE_LIMITS['tokens']:,} "
                                              f"integer tokens), found {dtype} {shape}")
                tokens = npz.read("tokens", MAX_TOKEN_BYTES)
        except VideoTokensError:
            raise
        except ValueError as exc:  # the archive's own errors: unreadable, oversized, object arrays
            raise VideoTokensError(p, str(exc)) from exc
        try:
            return cls(tokens=tokens, layout=layout, **values)
        except (TypeError, ValueError) as exc:
            raise VideoTokensError(p, f"inconsistent contents: {exc}") from exc


def _read_metadata(path: Path, meta_arr: np.ndarray) -> dict[str, Any]:
    if meta_arr.dtype.kind != "U" or meta_arr.shape != (1,):
        raise VideoTokensError(path, f"metadata must be one JSON string, found {meta_arr.dtype} {meta_arr.shape}")
    try:
        meta = json.loads(str(meta_arr[0]))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise VideoTokensError(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
        raise VideoTokensError(path, f"not a larp token file (metadata format is "
                                     f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != FILE_VERSION:
        raise VideoTokensError(path, f"token file version {meta.get('version')!r}; this larp reads "
                                     f"version {FILE_VERSION}")
    return meta


def _parse_metadata(meta: dict[str, Any]) -> tuple[SpatialLayout, dict[str, Any]]:
    """The layout and the other VideoTokens fields of a token file's metadata, every type and size checked
    (the layout must be the one larp plans: decoding relies on its tiles lying inside the frame)."""
    known = {f.name for f in fields(VideoTokens)} - {"tokens", "layout"}
    expected = known | {f.name for f in fields(SpatialLayout)} | {"format", "version"}
    if set(meta) != expected:
        missing, unknown = sorted(expected - set(meta)), sorted(set(meta) - expected)
        raise ValueError(f"metadata keys: missing {missing}, unknown {unknown}")
    (h, w), size, spatial = _ints(meta["original_size"], 2), _int(meta, "frame_size"), meta["spatial"]
    if not isinstance(spatial, str):
        raise ValueError(f"spatial must be a string, found {spatial!r}")
    overlap = _int(meta, "overlap", low=0)
    planned = plan_layout(h, w, size, spatial, overlap)  # bounds the frame size and the tile count first
    tiles = meta["tiles"]
    if not isinstance(tiles, list) or len(tiles) != len(planned.tiles):
        raise ValueError(f"the recorded tiles are not the {len(planned.tiles)} that larp plans for {h}x{w} "
                         f"frames and a model of {size}x{size}")
    layout = SpatialLayout(spatial=spatial, original_size=(h, w), resized_size=_ints(meta["resized_size"], 2),
                           crop_box=_ints(meta["crop_box"], 4), tiles=tuple(_ints(t, 2) for t in tiles),
                           overlap=overlap)
    if layout != planned:
        raise ValueError(f"the recorded layout {layout} is not the one larp plans for {h}x{w} frames "
                         f"and a model of {size}x{size} ({planned}); was the file edited?")
    fps = meta["fps"]
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))):
        raise ValueError(f"fps must be a number or null, found {fps!r}")
    if fps is not None:
        try:
            fps = check_fps(fps)
        except ValueError as exc:
            raise ValueError(f"fps: {exc}") from exc
    if not isinstance(meta["tokenizer"], str):
        raise ValueError(f"tokenizer must be a string, found {meta['tokenizer']!r}")
    values = {k: _int(meta, k) for k in ("frames_per_window", "codebook_size", "num_frames")}
    if values["num_frames"] > MAX_NUM_FRAMES:
        raise ValueError(f"num_frames must be at most {MAX_NUM_FRAMES:,}, found {values['num_frames']:,}")
    return layout, {**values, "frame_size": size, "fps": fps, "tokenizer": meta["tokenizer"]}


def _int(meta: dict[str, Any], key: str, low: int = 1) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, found {value!r}")
    return value


def _ints(values: Any, n: int) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != n or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"expected a list of {n} integers, found {values!r}")
    return tuple(values)


# ---------------------------------------------------------------------------------------- helpers


def _model_device(tokenizer: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """Where the work runs: the tokenizer's device; a different `device` is refused, not silently moved to."""
    param = next(tokenizer.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    if device is None:
        return here
    want = torch.device(device)
    if want.type != here.type or (want.index is not None and here.index is not None and want.index != here.index):
        raise ValueError(f"the tokenizer is on {here}, not {want}: move it first (tokenizer.to({str(want)!r})) "
                         "or leave device=None")
    return here


def _precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` (bfloat16/float16) so that the weights stay as they are; float32 runs as is."""
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    return autocast(device, dtype)


def check_compatible(tokenizer: LARPTokenizer, tokens: VideoTokens) -> None:
    """Raise a ValueError unless `tokenizer` can decode `tokens` (same T, S, N and K)."""
    _, t, s, _ = tokenizer.video_shape
    theirs = (tokens.frames_per_window, tokens.frame_size, tokens.num_tokens, tokens.codebook_size)
    ours = (t, s, tokenizer.num_tokens, tokenizer.codebook_size)
    if theirs != ours:
        def describe(t: int, s: int, n: int, k: int) -> str:
            return f"T={t} frames of {s}x{s}, N={n} tokens, K={k} codes"

        raise ValueError(f"the tokens were made by a different tokenizer ({tokens.tokenizer or 'unknown'}: "
                         f"{describe(*theirs)}) than the one given ({describe(*ours)})")


# --------------------------------------------------------------------------------------- public API


@torch.no_grad()
def tokenize_video(tokenizer: LARPTokenizer, frames: VideoInput, *, spatial: str = DEFAULT_SPATIAL,
                   overlap: int | None = None, fps: float | None = None, tokenizer_id: str = "",
                   batch_size: int = DEFAULT_BATCH, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32,
                   progress: Callable[[int, int], None] | None = None) -> VideoTokens:
    """Tokens of a whole video: uint8 frames (T, H, W, 3), a float video (3, T, H, W) in [0, 1], or the
    path of a video file, which is streamed window by window (memory does not grow with its length).

    Windows of the model's T frames (the last padded by repeating its last frame) and the `spatial`
    layout of the module doc; codes are the deterministic (argmax) ones. `fps` and `tokenizer_id` are
    only recorded, for decoding (a file's own frame rate when `fps` is None). Runs on the tokenizer's
    device, under autocast for bfloat16/float16. `progress(done, total)` is called after each batch with
    the clips (windows x tiles) encoded so far; for a file, `total` counts the frames its header declares."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = FrameSource(frames)
    _, t, size, _ = tokenizer.video_shape
    layout = plan_layout(source.height, source.width, size, spatial, overlap)
    dev = _model_device(tokenizer, device)
    _precision(dev, dtype)  # an unsupported dtype fails before the video is read
    rows: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    total, done = math.ceil(source.declared_frames / t) * len(layout.tiles), 0

    def flush() -> None:
        nonlocal done
        with _precision(dev, dtype):
            rows.append(tokenizer.encode(torch.stack(pending), deterministic=True).cpu())
        done += len(pending)
        pending.clear()
        if progress is not None:
            progress(done, max(total, done))

    num_frames = 0
    for _, raw in source.windows(t):
        num_frames += source.count(raw)
        for clip in source.window_clips(raw, layout, size, t, dev):
            pending.append(clip)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return VideoTokens(tokens=torch.cat(rows).numpy().astype(np.int64), tokenizer=tokenizer_id,
                       frames_per_window=t, frame_size=size, codebook_size=tokenizer.codebook_size,
                       num_frames=num_frames, fps=fps if fps is not None else source.fps, layout=layout)


def _frame_groups(real: int, per_frame_bytes: int) -> list[tuple[int, int]]:
    """[start, end) groups of a window's `real` frames, each within CHUNK_BYTES (at least one frame)."""
    group = max(1, CHUNK_BYTES // max(per_frame_bytes, 1))
    return [(f0, min(f0 + group, real)) for f0 in range(0, real, group)]


@torch.no_grad()
def iter_decode(tokenizer: LARPTokenizer, tokens: VideoTokens, *, batch_size: int = DEFAULT_BATCH,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """`decode_tokens` in order, as float32 CPU chunks (3, frames, H_out, W_out): one per window, or
    several for a window of very large frames (each within CHUNK_BYTES of working memory)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_compatible(tokenizer, tokens)
    dev = _model_device(tokenizer, device)
    layout = tokens.layout
    top, left, ch, cw = layout.crop_box
    out_h, out_w = layout.output_size
    # Tile positions relative to the output region; tiles hanging over it (padding) are clipped.
    positions = [(t - top, x - left) for t, x in layout.tiles]
    windows = iter(tokens.windows)
    rows = torch.from_numpy(tokens.tokens)
    pending: list[torch.Tensor] = []
    for b in range(0, rows.shape[0], batch_size):
        with _precision(dev, dtype):
            pending.extend(tokenizer.decode(rows[b : b + batch_size].to(dev)).float().unbind(0))
        while len(pending) >= tokens.num_tiles:
            clips = torch.stack(pending[: tokens.num_tiles])
            del pending[: tokens.num_tiles]
            _, real = next(windows)
            # Frames are blended independently, so a few at a time give the same values.
            for f0, f1 in _frame_groups(real, 3 * (8 * ch * cw + 4 * out_h * out_w)):
                video = blend_tiles(clips[:, :, f0:f1], positions, (ch, cw), layout.overlap)
                if (ch, cw) != (out_h, out_w):
                    video = TF.resize(video, [out_h, out_w], antialias=True)
                yield video.clamp_(0.0, 1.0).cpu()


def _whole(num_frames: int, size: tuple[int, int], max_bytes: int | None, streaming: str) -> None:
    """Refuse to return a whole video over `max_bytes` (float32), pointing to the streaming function."""
    nbytes = 3 * num_frames * size[0] * size[1] * 4
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(f"the whole video ({num_frames:,} frames of {size[1]}x{size[0]}) takes {nbytes:,} bytes "
                         f"as float32, more than max_bytes={max_bytes:,}; stream it with {streaming} (or pass "
                         "max_bytes=None)")


def decode_tokens(tokenizer: LARPTokenizer, tokens: VideoTokens, *, batch_size: int = DEFAULT_BATCH,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                  max_bytes: int | None = WHOLE_VIDEO_MAX_BYTES) -> torch.Tensor:
    """Decode a whole video's tokens -> float32 (3, num_frames, H_out, W_out) in [0, 1], on the CPU.

    The window padding is trimmed, so the frame count is the original one. (H_out, W_out) is
    `tokens.layout.output_size`: the original frame size for "cover" and "tile" tokens, and for "crop"
    tokens the centre crop's region at the original scale (about min(H, W) square). A result over
    `max_bytes` is refused before decoding; `iter_decode` streams any length."""
    _whole(tokens.num_frames, tokens.layout.output_size, max_bytes, "iter_decode")
    return torch.cat(list(iter_decode(tokenizer, tokens, batch_size=batch_size, device=device, dtype=dtype)),
                     dim=1)


class PSNRMeter:
    """PSNR over a whole video accumulated chunk by chunk: -10 log10(mean squared error), range [0, 1],
    both sides clamped to [0, 1] (as in `larp.eval.metrics.psnr`), capped at `max_db`."""

    def __init__(self, max_db: float = 100.0) -> None:
        self.sse, self.count, self.max_db = 0.0, 0, max_db

    def update(self, reference: torch.Tensor, recon: torch.Tensor) -> None:
        if reference.shape != recon.shape:
            raise ValueError(f"shapes differ: {tuple(reference.shape)} vs {tuple(recon.shape)}")
        recon = recon.to(reference.device)
        # One image plane at a time: float64 copies of a whole chunk of 4K frames would take gigabytes.
        for ref_plane, rec_plane in zip(reference.reshape(-1, *reference.shape[-2:]).unbind(0),
                                        recon.reshape(-1, *recon.shape[-2:]).unbind(0), strict=True):
            diff = ref_plane.double().clamp_(0, 1) - rec_plane.double().clamp_(0, 1)
            self.sse += float(diff.square_().sum())
        self.count += reference.numel()

    @property
    def value(self) -> float:
        if self.count == 0:
            raise ValueError("no frames were compared")
        mse = max(self.sse / self.count, 10 ** (-self.max_db / 10))
        return -10.0 * math.log10(mse)


def iter_reconstruct(tokenizer: LARPTokenizer, frames: VideoInput, *, tile: bool = False,
                     overlap: int | None = None, batch_size: int = DEFAULT_BATCH, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32, meter: PSNRMeter | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Iterator[torch.Tensor]:
    """`reconstruct_video` as CPU float32 chunks (see `iter_decode`), updating `meter` with each chunk.

    `frames` may be a video file's path: it is read twice (tokenize, then compare), a window at a time.
    `progress` follows the encoding as in `tokenize_video`."""
    tokens = tokenize_video(tokenizer, frames, spatial="tile" if tile else "cover", overlap=overlap,
                            batch_size=batch_size, device=device, dtype=dtype, progress=progress)
    source, cpu = FrameSource(frames), torch.device("cpu")
    reference = source.taker(tokens.frames_per_window, cpu) if meter is not None else None
    for chunk in iter_decode(tokenizer, tokens, batch_size=batch_size, device=device, dtype=dtype):
        if meter is not None and reference is not None:
            meter.update(reference(chunk.shape[1]), chunk)
        yield chunk


def reconstruct_video(tokenizer: LARPTokenizer, frames: VideoInput, *, tile: bool = False,
                      overlap: int | None = None, batch_size: int = DEFAULT_BATCH, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32,
                      max_bytes: int | None = WHOLE_VIDEO_MAX_BYTES) -> tuple[torch.Tensor, float]:
    """Tokenize and decode a whole video -> (float32 (3, T, H, W) in [0, 1], PSNR in dB against the input).

    The output always has the input's T, H and W. Without `tile` the whole field of view is tokenized at
    the model's scale (layout "cover") and resized back; with `tile` S×S tiles cover the native frame
    (layout "tile"), which keeps fine detail at the cost of more tokens. The result lies on the input's
    device when the input is a tensor, else on the CPU. A result over `max_bytes` is refused before any
    work; `iter_reconstruct` streams any length."""
    source = FrameSource(frames)
    _whole(source.declared_frames, (source.height, source.width), max_bytes, "iter_reconstruct")
    meter = PSNRMeter()
    chunks = list(iter_reconstruct(tokenizer, frames, tile=tile, overlap=overlap, batch_size=batch_size,
                                   device=device, dtype=dtype, meter=meter))
    recon = torch.cat(chunks, dim=1)
    if isinstance(frames, torch.Tensor):
        recon = recon.to(frames.device)
    return recon, meter.value
