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

Token files (`VideoTokens.save`) are .npz archives without pickle: the tokens and one JSON string holding
everything needed to decode them (tokenizer id, window and tile layout, original size, frame rate).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from larp.data.transforms import pad_frames
from larp.models.tokenizer import LARPTokenizer
from larp.utils.device import DTYPES, autocast
from larp.utils.files import atomic_write_bytes
from larp.videos.layout import SpatialLayout, blend_tiles, plan_layout, plan_windows

FILE_FORMAT = "larp.video_tokens"
FILE_VERSION = 1
DEFAULT_FPS = 8.0  # for writing tokens whose source frame rate is unknown


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
        for name in ("frames_per_window", "frame_size", "codebook_size", "num_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or None, got {self.fps}")
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
        """Read a file written by `save`; anything else raises VideoTokensError naming the cause."""
        p = Path(path)
        if not p.is_file():
            raise VideoTokensError(p, "file not found" if not p.exists() else "not a file")
        try:
            data = np.load(p, allow_pickle=False)
            names, arrays = None, None
            if isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy gives an array
                with data:
                    names = sorted(data.files)
                    if names == ["metadata", "tokens"]:
                        arrays = {k: data[k] for k in names}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
            raise VideoTokensError(p, f"not a readable .npz archive ({exc})") from exc
        if arrays is None:
            found = "a single array" if names is None else f"arrays {names}"
            raise VideoTokensError(p, f"expected the arrays ['metadata', 'tokens'] of a larp token file, "
                                      f"found {found}")
        meta_arr = arrays["metadata"]
        if meta_arr.dtype.kind != "U" or meta_arr.shape != (1,):
            raise VideoTokensError(p, f"metadata must be one JSON string, found {meta_arr.dtype} {meta_arr.shape}")
        try:
            meta = json.loads(str(meta_arr[0]))
        except json.JSONDecodeError as exc:
            raise VideoTokensError(p, f"metadata is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
            raise VideoTokensError(p, f"not a larp token file (metadata format is "
                                      f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
        if meta.get("version") != FILE_VERSION:
            raise VideoTokensError(p, f"token file version {meta.get('version')!r}; this larp reads "
                                      f"version {FILE_VERSION}")
        try:
            return cls._from_metadata(arrays["tokens"], meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise VideoTokensError(p, f"inconsistent contents: {exc}") from exc

    @classmethod
    def _from_metadata(cls, tokens: np.ndarray, meta: dict[str, Any]) -> VideoTokens:
        known = {f.name for f in fields(cls)} - {"tokens", "layout"}
        layout_keys = {f.name for f in fields(SpatialLayout)}
        expected = known | layout_keys | {"format", "version"}
        if set(meta) != expected:
            missing, unknown = sorted(expected - set(meta)), sorted(set(meta) - expected)
            raise ValueError(f"metadata keys: missing {missing}, unknown {unknown}")
        layout = SpatialLayout(
            spatial=str(meta["spatial"]), original_size=_ints(meta["original_size"], 2),
            resized_size=_ints(meta["resized_size"], 2), crop_box=_ints(meta["crop_box"], 4),
            tiles=tuple(_ints(t, 2) for t in meta["tiles"]), overlap=int(meta["overlap"]))
        (h, w), size = layout.original_size, int(meta["frame_size"])
        planned = plan_layout(h, w, size, layout.spatial, layout.overlap)
        if layout != planned:  # decoding relies on it: tiles inside the frame, the crop box covered
            raise ValueError(f"the recorded layout {layout} is not the one larp plans for {h}x{w} frames "
                             f"and a model of {size}x{size} ({planned}); was the file edited?")
        fps = meta["fps"]
        return cls(tokens=tokens, tokenizer=str(meta["tokenizer"]),
                   frames_per_window=int(meta["frames_per_window"]), frame_size=int(meta["frame_size"]),
                   codebook_size=int(meta["codebook_size"]), num_frames=int(meta["num_frames"]),
                   fps=None if fps is None else float(fps), layout=layout)


def _ints(values: Any, n: int) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != n or not all(isinstance(v, int) for v in values):
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


def _as_source(frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The input as a tensor (no copy) and whether it is channels-last uint8 (T, H, W, 3)."""
    x = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected frames as a numpy array or tensor, got {type(frames).__name__}")
    if x.dtype == torch.uint8 and x.ndim == 4 and x.shape[-1] == 3:
        return x, True
    if x.is_floating_point() and x.ndim == 4 and x.shape[0] == 3:
        lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(f"expected a float video with values in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        return x, False
    raise ValueError("expected uint8 frames (T, H, W, 3) or a float video (3, T, H, W) in [0, 1], "
                     f"got {x.dtype} {tuple(x.shape)}")


def _shape(source: torch.Tensor, channels_last: bool) -> tuple[int, int, int]:
    return tuple(source.shape[:3]) if channels_last else tuple(source.shape[1:])  # type: ignore[return-value]


def _frames_float(source: torch.Tensor, channels_last: bool, start: int, count: int,
                  device: torch.device) -> torch.Tensor:
    """Frames [start, start + count) as float32 (3, count, H, W) in [0, 1] on `device`."""
    if channels_last:
        return source[start : start + count].to(device).permute(3, 0, 1, 2).float().div_(255.0)
    return source[:, start : start + count].to(device=device, dtype=torch.float32)


def _window_clips(window: torch.Tensor, layout: SpatialLayout, size: int) -> torch.Tensor:
    """A window (3, T, H, W) -> its clips (num_tiles, 3, T, S, S) under `layout`."""
    if tuple(window.shape[-2:]) != layout.resized_size:
        window = TF.resize(window, list(layout.resized_size), antialias=True)
    rh, rw = layout.resized_size
    if rh < size or rw < size:  # frames smaller than the model: repeat the border pixels
        window = F.pad(window, (0, max(size - rw, 0), 0, max(size - rh, 0)), mode="replicate")
    return torch.stack([window[..., t : t + size, left : left + size] for t, left in layout.tiles])


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
def tokenize_video(tokenizer: LARPTokenizer, frames: np.ndarray | torch.Tensor, *, spatial: str = "crop",
                   overlap: int | None = None, fps: float | None = None, tokenizer_id: str = "",
                   batch_size: int = 4, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32,
                   progress: Callable[[int, int], None] | None = None) -> VideoTokens:
    """Tokens of a whole video: uint8 frames (T, H, W, 3) or a float video (3, T, H, W) in [0, 1].

    Windows of the model's T frames (the last padded by repeating its last frame) and the `spatial`
    layout of the module doc; codes are the deterministic (argmax) ones. `fps` and `tokenizer_id` are
    only recorded, for decoding. Runs on the tokenizer's device, under autocast for bfloat16/float16.
    `progress(done, total)` is called after each batch with the clips (windows x tiles) encoded so far."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source, channels_last = _as_source(frames)
    num_frames, height, width = _shape(source, channels_last)
    _, t, size, _ = tokenizer.video_shape
    layout = plan_layout(height, width, size, spatial, overlap)
    dev = _model_device(tokenizer, device)
    rows: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    windows = plan_windows(num_frames, t)
    total, done = len(windows) * len(layout.tiles), 0

    def flush() -> None:
        nonlocal done
        with _precision(dev, dtype):
            rows.append(tokenizer.encode(torch.stack(pending), deterministic=True).cpu())
        done += len(pending)
        pending.clear()
        if progress is not None:
            progress(done, total)

    for start, real in windows:
        window = pad_frames(_frames_float(source, channels_last, start, real, dev), t)
        for clip in _window_clips(window, layout, size):
            pending.append(clip)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return VideoTokens(tokens=torch.cat(rows).numpy().astype(np.int64), tokenizer=tokenizer_id,
                       frames_per_window=t, frame_size=size, codebook_size=tokenizer.codebook_size,
                       num_frames=num_frames, fps=fps, layout=layout)


@torch.no_grad()
def iter_decode(tokenizer: LARPTokenizer, tokens: VideoTokens, *, batch_size: int = 4,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """`decode_tokens` window by window: float32 CPU chunks (3, real frames, H_out, W_out) in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_compatible(tokenizer, tokens)
    dev = _model_device(tokenizer, device)
    layout = tokens.layout
    top, left, ch, cw = layout.crop_box
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
            video = blend_tiles(clips[:, :, :real], positions, (ch, cw), layout.overlap)
            if (ch, cw) != layout.output_size:
                video = TF.resize(video, list(layout.output_size), antialias=True)
            yield video.clamp_(0.0, 1.0).cpu()


def decode_tokens(tokenizer: LARPTokenizer, tokens: VideoTokens, *, batch_size: int = 4,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode a whole video's tokens -> float32 (3, num_frames, H_out, W_out) in [0, 1], on the CPU.

    The window padding is trimmed, so the frame count is the original one. (H_out, W_out) is
    `tokens.layout.output_size`: the original frame size for "cover" and "tile" tokens, and for "crop"
    tokens the centre crop's region at the original scale (about min(H, W) square)."""
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
        diff = reference.double().clamp(0, 1) - recon.to(reference.device).double().clamp(0, 1)
        self.sse += float(diff.square().sum())
        self.count += diff.numel()

    @property
    def value(self) -> float:
        if self.count == 0:
            raise ValueError("no frames were compared")
        mse = max(self.sse / self.count, 10 ** (-self.max_db / 10))
        return -10.0 * math.log10(mse)


def iter_reconstruct(tokenizer: LARPTokenizer, frames: np.ndarray | torch.Tensor, *, tile: bool = False,
                     overlap: int | None = None, batch_size: int = 4, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32, meter: PSNRMeter | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Iterator[torch.Tensor]:
    """`reconstruct_video` window by window (CPU float32 chunks), updating `meter` with each chunk;
    `progress` follows the encoding as in `tokenize_video` (decoding goes window by window: one chunk each)."""
    tokens = tokenize_video(tokenizer, frames, spatial="tile" if tile else "cover", overlap=overlap,
                            batch_size=batch_size, device=device, dtype=dtype, progress=progress)
    source, channels_last = _as_source(frames)
    cpu = torch.device("cpu")
    for (start, real), chunk in zip(tokens.windows,
                                    iter_decode(tokenizer, tokens, batch_size=batch_size, device=device,
                                                dtype=dtype), strict=True):
        if meter is not None:
            meter.update(_frames_float(source, channels_last, start, real, cpu), chunk)
        yield chunk


def reconstruct_video(tokenizer: LARPTokenizer, frames: np.ndarray | torch.Tensor, *, tile: bool = False,
                      overlap: int | None = None, batch_size: int = 4, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """Tokenize and decode a whole video -> (float32 (3, T, H, W) in [0, 1], PSNR in dB against the input).

    The output always has the input's T, H and W. Without `tile` the whole field of view is tokenized at
    the model's scale (layout "cover") and resized back; with `tile` S×S tiles cover the native frame
    (layout "tile"), which keeps fine detail at the cost of more tokens. The result lies on the input's
    device when the input is a tensor, else on the CPU."""
    meter = PSNRMeter()
    chunks = list(iter_reconstruct(tokenizer, frames, tile=tile, overlap=overlap, batch_size=batch_size,
                                   device=device, dtype=dtype, meter=meter))
    recon = torch.cat(chunks, dim=1)
    if isinstance(frames, torch.Tensor):
        recon = recon.to(frames.device)
    return recon, meter.value
