"""Decoding videos with PyAV (one decoder for every container and codec); writing is in `video_write`.

Reading returns uint8 frames (T, H, W, 3) in RGB whatever the source pixel format (grayscale, odd sizes,
10-bit...); `to_tensor` turns them into the library's float (3, T, H, W) layout in [0, 1]. Clips are read
by seeking to the key frame before the first wanted frame, so the cost of a clip does not grow with the
length of the file. Every reading failure raises `VideoReadError` naming the file and the cause.

Memory stays bounded whatever a file declares: frame sizes above `MAX_FRAME_SIDE` are refused from the
header, `VideoReader` streams a whole video a few frames at a time, and `read_video` (the whole video in
memory) refuses a video larger than its `max_bytes`. Writers write to a temporary file and rename it, so
an interrupted write (a full disk, say) leaves no partial file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch

from larp.data.transforms import pad_frames

# The writers live in larp.data.video_write; they are importable from here as well.
from larp.data.video_write import (  # noqa: F401
    MAX_FPS,
    MP4Writer,
    check_fps,
    one_thread_scaler,
    tile_clips,
    to_uint8,
    write_gif,
    write_mp4,
    write_png_grid,
)

PathLike = str | os.PathLike

# Frames larger than this on either side are refused from the header (8K UHD is 7680x4320): decoding one
# would take gigabytes, and a tiny file can declare any size.
MAX_FRAME_SIDE = 8192
# What `read_video` accepts to hold in memory by default (uint8 RGB); `VideoReader` streams any length.
READ_VIDEO_MAX_BYTES = 4 << 30

# A header may announce a frame or two more than the stream holds (common in AVI and MP4 files cut by
# tools); missing frames within this margin of the declared end are padded instead of failing the read.
_END_SLACK_FRACTION = 0.02
_END_SLACK_MIN = 2
# Frames between two wanted frames beyond which seeking again is cheaper than decoding through.
_SEEK_GAP = 48


class VideoReadError(ValueError):
    """A video file could not be read; the message names the file and the cause."""

    def __init__(self, path: PathLike, cause: str | None = None) -> None:
        if cause is None:  # rebuilt by a DataLoader from a worker's error, of which torch passes only the text
            path, cause = _from_worker_text(str(path))
        self.path = str(path)
        self.cause = cause
        super().__init__(self.path, cause)  # args that rebuild it: picklable across worker processes

    def __str__(self) -> str:
        return f"cannot read video {self.path}: {self.cause}"


def _from_worker_text(text: str) -> tuple[str, str]:
    """(path, cause) from torch's text of an error in a DataLoader worker ("Caught VideoReadError in
    DataLoader worker process 0. Original Traceback ... VideoReadError: cannot read video PATH: CAUSE"), so
    that the main process gets the same error, which the callers skip or report as they do without workers."""
    last = next((line for line in reversed(text.splitlines()) if "VideoReadError: " in line), text)
    message = last.split("VideoReadError: ", 1)[-1].strip()
    if message.startswith("cannot read video ") and ": " in message:
        rest = message.removeprefix("cannot read video ")
        splits = [(rest[:i], rest[i + 2:]) for i in range(len(rest)) if rest.startswith(": ", i)]
        # a path may hold ": " itself: the split that names an existing file, else the first
        return next((sp for sp in splits if os.path.exists(sp[0])), splits[0])
    return "(unknown file)", message


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns from a file's header (frame count counted from packets if absent)."""

    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


# ----------------------------------------------------------------------------------------------- reading


def _open(path: PathLike) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise VideoReadError(p, "file not found")
    if p.is_dir():
        raise VideoReadError(p, "is a directory, expected a video file")
    if p.stat().st_size == 0:
        raise VideoReadError(p, "empty file (0 bytes)")
    try:
        return av.open(str(p), mode="r")
    except av.FFmpegError as e:
        raise VideoReadError(p, f"truncated, corrupt or not a video container ({e})") from e


def _video_stream(container: av.container.InputContainer, path: PathLike) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoReadError(path, f"no video stream (streams found: {', '.join(kinds)})")
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


def _count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    # Demuxing without decoding is cheap; used only when the header has no frame count (MKV, WebM...).
    # Readers seek before decoding, so the demuxer need not be rewound here.
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _probe(
    container: av.container.InputContainer, path: PathLike
) -> tuple[VideoInfo, av.video.stream.VideoStream]:
    stream = _video_stream(container, path)
    fps = _stream_fps(stream)
    try:
        n = int(stream.frames) if stream.frames else _count_packets(container, stream)
    except av.FFmpegError as e:
        raise VideoReadError(path, f"truncated or corrupt while counting frames ({e})") from e
    if n <= 0:
        raise VideoReadError(path, "the video stream holds zero frames")
    if fps <= 0:
        raise VideoReadError(path, "the video stream declares no frame rate")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoReadError(path, f"the video stream declares an invalid frame size {width}x{height}")
    if max(width, height) > MAX_FRAME_SIDE:
        raise VideoReadError(path, f"the video stream declares frames of {width}x{height}; larp reads frames "
                                   f"of at most {MAX_FRAME_SIDE} pixels a side")
    return VideoInfo(num_frames=n, fps=fps, width=width, height=height), stream


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, frame rate and frame size of a video file, without decoding it."""
    with _open(path) as container:
        return _probe(container, path)[0]


def _frame_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    # libswscale converts any pixel format (gray, yuv420p10, odd widths...) to packed RGB. A stream whose
    # frame size changes midway is scaled to the size its header declares (`size`, W x H), so that every
    # frame has one shape and no frame is larger than what was checked.
    if size is not None and (frame.width, frame.height) != size:
        return frame.to_ndarray(format="rgb24", width=size[0], height=size[1], **one_thread_scaler())
    return frame.to_ndarray(format="rgb24", **one_thread_scaler())


class _Decoder:
    """Decodes frames in order from a seek point, giving each its frame index."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        fps: float,
        path: PathLike,
    ) -> None:
        self.container, self.stream, self.path = container, stream, path
        self.time_base = stream.time_base
        self.start = stream.start_time or 0
        self.fps = fps
        self.can_seek = self.time_base is not None

    def frames(self, target: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Frames from the key frame at or before `target` (from the start when seeking is unusable)."""
        seek = self.can_seek and target > 0
        try:
            if seek:
                ts = self.start + int(target / self.fps / self.time_base)
                self.container.seek(ts, backward=True, any_frame=False, stream=self.stream)
            else:
                self.container.seek(0)
        except av.FFmpegError as e:
            raise VideoReadError(
                self.path, f"truncated or corrupt: seeking to frame {target} failed ({e})"
            ) from e
        counter = 0
        try:
            for frame in self.container.decode(self.stream):
                if frame.pts is None or self.time_base is None:
                    if seek:
                        # Without timestamps only counting from the start gives indices.
                        self.can_seek = False
                        yield from self.frames(0)
                        return
                    idx = counter
                else:
                    idx = int(round(float((frame.pts - self.start) * self.time_base) * self.fps))
                counter += 1
                yield idx, frame
        except av.FFmpegError as e:
            raise VideoReadError(self.path, f"truncated or corrupt data while decoding ({e})") from e


def _gather(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    info: VideoInfo,
    targets: np.ndarray,
    path: PathLike,
) -> np.ndarray:
    """Decode the frames at indices `targets` (any order, repeats allowed), seeking before each run."""
    decoder = _Decoder(container, stream, info.fps, path)
    wanted = sorted({int(t) for t in targets})
    got: dict[int, np.ndarray] = {}
    i = 0
    it: Iterator[tuple[int, av.VideoFrame]] | None = None
    prev: tuple[int, av.VideoFrame] | None = None
    from_start = False
    sought = -1  # the target of the last seek: decode on towards it, however far the key frame was
    while i < len(wanted):
        far = prev is not None and wanted[i] - prev[0] > _SEEK_GAP and wanted[i] != sought
        if it is None or far:
            it, prev, sought = decoder.frames(wanted[i]), None, wanted[i]
            from_start = not decoder.can_seek or wanted[i] == 0
        item = next(it, None)
        if item is None:
            break  # end of stream
        idx, frame = item
        if prev is None and idx > wanted[i] and not from_start:
            # The seek landed after the wanted frame (bad index in the file): decode from the start.
            decoder.can_seek = False
            it = None
            continue
        while i < len(wanted) and wanted[i] <= idx:
            # A wanted index skipped by the timestamps (variable frame rate) takes the previous frame.
            use = frame if wanted[i] == idx or prev is None else prev[1]
            got[wanted[i]] = _frame_rgb(use)
            i += 1
        prev = (idx, frame)

    if i < len(wanted):
        slack = max(_END_SLACK_MIN, int(info.num_frames * _END_SLACK_FRACTION))
        if prev is None or wanted[i] < info.num_frames - slack:
            last = "none" if prev is None else str(prev[0])
            raise VideoReadError(
                path,
                f"truncated or corrupt: the stream ended before frame {wanted[i]} "
                f"(the header declares {info.num_frames} frames; last frame decoded: {last})",
            )
        # A frame or two short of the declared count: the last decoded frame stands in for them.
        last_rgb = _frame_rgb(prev[1])
        for w in wanted[i:]:
            got[w] = last_rgb
    return np.stack([got[int(t)] for t in targets])


def clip_indices(
    num_available: int,
    num_frames: int,
    start: int | None,
    stride: int,
    mode: Literal["consecutive", "uniform"],
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Indices of the frames of one clip (fewer than `num_frames` when the video is too short)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if mode == "uniform":
        # Spread over the whole video; a video shorter than the clip gives each frame once (then padding).
        if num_available < num_frames:
            return np.arange(num_available)
        return np.linspace(0, num_available - 1, num_frames).round().astype(np.int64)
    if mode != "consecutive":
        raise ValueError(f"mode must be 'consecutive' or 'uniform', got {mode!r}")
    span = (num_frames - 1) * stride + 1
    latest = max(0, num_available - span)
    if start is None:
        start = int((rng if rng is not None else np.random.default_rng()).integers(0, latest + 1))
    elif not 0 <= start < num_available:
        raise ValueError(f"start {start} is outside the video's {num_available} frames")
    return np.arange(start, min(start + span, num_available), stride)


def read_clip(
    path: PathLike,
    num_frames: int,
    start: int | None = None,
    *,
    stride: int = 1,
    mode: Literal["consecutive", "uniform"] = "consecutive",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Read `num_frames` frames as uint8 (T, H, W, 3) RGB.

    mode="consecutive": frames start, start+stride, ...; `start=None` draws a start from `rng` among those
    that fit. mode="uniform": `num_frames` frames evenly spaced over the whole video (`start` must be None).
    Clips running past the end of a short video are padded by repeating the last frame."""
    if mode == "uniform" and start is not None:
        raise ValueError("mode='uniform' spreads the clip over the whole video; do not pass start")
    with _open(path) as container:
        info, stream = _probe(container, path)
        targets = clip_indices(info.num_frames, num_frames, start, stride, mode, rng)
        frames = _gather(container, stream, info, targets, path)
    return pad_frames(frames, num_frames)


class VideoReader:
    """A video file's frames in order, a chunk at a time: memory holds one chunk, whatever the length.

    `info` is the header's (checked, see `probe_video`); `chunks(n)` yields uint8 arrays (n, H, W, 3),
    the last one possibly shorter, and raises VideoReadError when the file ends well before the frame
    count its header declares. Use as a context manager."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self._container = _open(path)
        try:
            self.info, self._stream = _probe(self._container, path)
        except BaseException:
            self._container.close()
            raise

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def chunks(self, size: int, max_frames: int | None = None) -> Iterator[np.ndarray]:
        """uint8 (size, H, W, 3) chunks of consecutive frames from the first; at most `max_frames` frames."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        info, dims = self.info, (self.info.width, self.info.height)
        count = 0
        pending: list[np.ndarray] = []
        for _, frame in _Decoder(self._container, self._stream, info.fps, self.path).frames(0):
            if max_frames is not None and count >= max_frames:
                raise VideoReadError(self.path, f"more than {max_frames:,} frames (the header declares "
                                                f"{info.num_frames:,})")
            pending.append(_frame_rgb(frame, dims))
            count += 1
            if len(pending) == size:
                yield np.stack(pending)
                pending.clear()
        if pending:
            yield np.stack(pending)
        if count == 0:
            raise VideoReadError(self.path, f"truncated or corrupt: no frame decoded (header declares "
                                            f"{info.num_frames})")
        slack = max(_END_SLACK_MIN, int(info.num_frames * _END_SLACK_FRACTION))
        if count < info.num_frames - slack:
            raise VideoReadError(self.path, f"truncated or corrupt: decoded {count} of the {info.num_frames} "
                                            "frames the header declares")


def read_video(path: PathLike, max_bytes: int | None = READ_VIDEO_MAX_BYTES) -> tuple[np.ndarray, float]:
    """Decode every frame of a file into memory: uint8 (T, H, W, 3) RGB and the frame rate.

    A video of more than `max_bytes` of frames (None: no limit) is refused, from its header when it
    declares that much, else as soon as decoding passes the limit; `VideoReader` streams longer ones."""
    with VideoReader(path) as reader:
        info = reader.info
        frame_bytes = info.width * info.height * 3
        limit = None if max_bytes is None else max(1, max_bytes // frame_bytes)
        if limit is not None and info.num_frames > limit:
            raise VideoReadError(path, f"{info.num_frames:,} frames of {info.width}x{info.height} take "
                                       f"{info.num_frames * frame_bytes:,} bytes, more than the {max_bytes:,} "
                                       "bytes read_video holds in memory; stream it with VideoReader")
        frames = np.concatenate(list(reader.chunks(64, max_frames=limit)))
    return frames, info.fps


# ------------------------------------------------------------------------------------- tensor layout


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) frames -> float32 (3, T, H, W) in [0, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div_(255.0)
