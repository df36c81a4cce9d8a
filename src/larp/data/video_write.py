"""Writing videos: H.264 mp4 (streamed frame by frame), animated GIF and PNG frame grids.

Every writer writes to a temporary file in the target's folder and renames it when complete, so a failure
(a full disk, say) leaves no partial file and an existing file untouched; new files get the permissions
the umask gives. Frame rates must lie in (0, MAX_FPS]."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from larp.utils.errors import LarpError
from larp.utils.files import atomic_write_bytes, default_file_mode

PathLike = str | os.PathLike
MAX_FPS = 1000.0
X264_LOOKAHEAD_BYTES = 512 << 20


# ------------------------------------------------------------------------------------- tensor layout


class NonFiniteVideoError(LarpError):
    """A video (a model's output) holding NaN or infinity, refused instead of written as black frames."""


def to_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """float (3, T, H, W) or (B, 3, T, H, W) in [0, 1] -> uint8 frames (T, H, W, 3) or (B, T, H, W, 3).

    Values are clamped to [0, 1] and rounded; the inverse of `to_tensor`."""
    x = video.detach().float().cpu() if isinstance(video, torch.Tensor) else torch.as_tensor(video).float()
    if x.ndim not in (4, 5) or x.shape[-4] != 3:
        raise ValueError(f"expected a float video (3, T, H, W) or (B, 3, T, H, W), got {tuple(x.shape)}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:  # clamping would turn NaN into black pixels: a broken model must not pass for a dark video
        raise NonFiniteVideoError(f"the video to write holds {bad:,} NaN or infinite values of {x.numel():,}: "
                                  "the model's output is not finite (weights out of range?); nothing is written")
    x = x.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)  # one float copy, however large the video
    x = x.permute(1, 2, 3, 0) if x.ndim == 4 else x.permute(0, 2, 3, 4, 1)
    return x.contiguous().numpy()


def _as_clips(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """Any accepted video input -> uint8 (B, T, H, W, 3).

    Accepted: float (3,T,H,W) / (B,3,T,H,W) in [0, 1] (tensor or array), uint8 (T,H,W,3) / (B,T,H,W,3)."""
    if (
        isinstance(videos, np.ndarray)
        and videos.dtype == np.uint8
        or (isinstance(videos, torch.Tensor) and videos.dtype == torch.uint8)
    ):
        arr = videos.cpu().numpy() if isinstance(videos, torch.Tensor) else videos
        if arr.ndim == 4:
            arr = arr[None]
        if arr.ndim != 5 or arr.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3) or (B, T, H, W, 3), got {arr.shape}")
        return arr
    arr = to_uint8(videos)
    return arr[None] if arr.ndim == 4 else arr


def tile_clips(videos: torch.Tensor | np.ndarray, gap: int = 2) -> np.ndarray:
    """A batch of clips side by side (black gaps between them) -> uint8 (T, H, W_total, 3)."""
    clips = _as_clips(videos)
    b, t, h, w, _ = clips.shape
    out = np.zeros((t, h, b * w + (b - 1) * gap, 3), np.uint8)
    for i in range(b):
        out[:, :, i * (w + gap) : i * (w + gap) + w] = clips[i]
    return out


# ----------------------------------------------------------------------------------------------- writing


def check_fps(fps: float) -> float:
    """`fps` as a float if it is a finite rate in (0, MAX_FPS]; a ValueError naming it otherwise."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.floating, np.integer)) \
            or not 0 < float(fps) <= MAX_FPS:
        raise ValueError(f"frame rate must be a number in (0, {MAX_FPS:g}] frames per second, got {fps!r}")
    return float(fps)


@functools.cache
def one_thread_scaler() -> dict[str, int]:
    """`reformat` options for a one-thread colour conversion. PyAV 17 and later convert on several threads by
    default and start them for every frame (6x slower on a 64x64 frame, the same pixels), and a process
    forked after such a conversion (a DataLoader worker) can wait for ever on the scaler's threads; earlier
    versions have no such option and convert on one thread."""
    try:
        av.VideoFrame(2, 2, "rgb24").reformat(format="yuv420p", threads=1)
    except TypeError:
        return {}
    return {"threads": 1}


class MP4Writer:
    """Streams RGB uint8 frames (H, W, 3) into an H.264 yuv420p mp4.

    The frames go to a temporary file in the same folder, renamed to `path` by `close()`; leaving the
    `with` block by an exception (or calling `abort()`) removes it, so `path` is complete or untouched.
    yuv420p needs even sizes: odd-sized frames get their last row/column repeated (1 pixel larger).
    The same frames give the same bytes on every run: x264's macroblock-tree rate control is off (with it,
    about one encode in ten of a detailed 64x64 clip came out different, decoded pixels included, even on
    one thread). `threads=None` lets x264 choose; its output depends on the number of threads, so writers
    that must give the same bytes on every machine (the synthetic dataset) pass `threads=1`."""

    def __init__(
        self, path: PathLike, fps: float = 8, *, crf: int = 18, keyframe_interval: int | None = None,
        threads: int | None = None,
    ) -> None:
        rate = Fraction(check_fps(fps)).limit_denominator(1001)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            self._container = av.open(self._tmp, mode="w", format="mp4")
        except BaseException:
            os.remove(self._tmp)
            raise
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.pix_fmt = "yuv420p"
        # mbtree=0: x264's macroblock-tree made the bytes (and decoded pixels) of the same frames vary from
        # one encode to the next; without it they do not (the files grow: ~40 % on the synthetic clips at crf 18).
        options = {"crf": str(crf), "x264-params": "mbtree=0"}
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 (or None: x264 chooses), got {threads}")
            options["threads"] = str(threads)
        if keyframe_interval is not None:
            options.update(g=str(keyframe_interval), keyint_min=str(keyframe_interval))
        self._options = options
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"expected a uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if self._size is None:
            self._size = (h, w)
            self._stream.height, self._stream.width = h + h % 2, w + w % 2
            # x264 keeps its look-ahead frames (about 2.6 bytes a pixel each, 40 by default): cap them so
            # that a 4K encode stays near 0.5 GB instead of 2 GB; smaller frames keep the default.
            lookahead = min(40, max(10, X264_LOOKAHEAD_BYTES // (3 * h * w)))
            self._stream.options = {**self._options, "rc-lookahead": str(lookahead)}
        elif self._size != (h, w):
            raise ValueError(f"frame size changed from {self._size} to {(h, w)} in {self.path}")
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        # Converted to yuv420p here, on one thread: PyAV's conversion inside `encode` starts several threads
        # for every frame in recent versions (much slower on small frames, the same pixels).
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(
            format="yuv420p", **one_thread_scaler())
        self._container.mux(self._stream.encode(video_frame))

    def close(self) -> None:
        """Finish the file and move it to `path` (with the permissions the umask gives new files)."""
        if not os.path.exists(self._tmp):
            return  # already closed or aborted
        try:
            if self._size is not None:
                self._container.mux(self._stream.encode(None))
            self._container.close()
            os.chmod(self._tmp, default_file_mode())
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop what was written; `path` is left as it was."""
        try:
            self._container.close()
        except (av.FFmpegError, OSError, ValueError):
            pass  # the container may be half-written or already closed: it is being deleted anyway
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> MP4Writer:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4_streams(paths: Sequence[PathLike], chunks: Iterable[torch.Tensor], fps: float = 8) -> int:
    """Write float chunks (B, 3, t, H, W) in [0, 1] into B mp4 files as they come, never the whole videos in
    memory; each file appears complete or not at all (`MP4Writer`). Returns the frames written per file."""
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(MP4Writer(p, fps)) for p in paths]
        count = 0
        for chunk in chunks:
            for writer, video in zip(writers, chunk.cpu(), strict=True):
                for frame in to_uint8(video):  # (t, H, W, 3)
                    writer.write(frame)
            count += chunk.shape[2]
    return count


def write_mp4(path: PathLike, video: torch.Tensor | np.ndarray, fps: float = 8, *, crf: int = 18,
              threads: int | None = None) -> Path:
    """Write one clip (or a batch side by side) as H.264 yuv420p mp4; see `_as_clips` for accepted inputs.

    Atomic: a failure leaves no file (and an existing `path` untouched). `threads`: see `MP4Writer`."""
    frames = tile_clips(video)
    with MP4Writer(path, fps, crf=crf, threads=threads) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)


def write_gif(path: PathLike, videos: torch.Tensor | np.ndarray, fps: float = 8) -> Path:
    """Write one clip or a batch side by side as a looping animated GIF, atomically."""
    duration = max(1, round(1000 / check_fps(fps)))
    frames = tile_clips(videos)
    images = [Image.fromarray(f) for f in frames]
    atomic_write_bytes(path, lambda tmp: images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0))
    return Path(path)


def write_png_grid(path: PathLike, videos: torch.Tensor | np.ndarray, gap: int = 2) -> Path:
    """A PNG grid of frames: one row per clip, one column per time step, white gaps between cells."""
    clips = _as_clips(videos)
    b, t, h, w, _ = clips.shape
    grid = np.full((b * h + (b - 1) * gap, t * w + (t - 1) * gap, 3), 255, np.uint8)
    for i in range(b):
        for j in range(t):
            grid[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = clips[i, j]
    atomic_write_bytes(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    return Path(path)
