"""Where whole-video work reads its frames, window by window, in bounded memory.

A source is an in-memory video (uint8 frames (T, H, W, 3) or a float video (3, T, H, W) in [0, 1]) or a
video file, which is streamed: memory holds one window of frames, whatever the video's length. Windows
become the tokenizer's clips lazily: frames are converted to float and resized a few at a time, and at
the native resolution ("tile") each clip is cut from the uint8 window before it is converted, so no
full-resolution float copy of a window is made."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from larp.data.transforms import pad_frames
from larp.data.video_io import VideoReader
from larp.videos.layout import SpatialLayout

# Full-resolution float frames converted at once (bytes): bounds the working memory of large frames.
FRAME_GROUP_BYTES = 64 << 20

VideoInput = np.ndarray | torch.Tensor | str | os.PathLike


class FrameSource:
    """The frames of a video, read window by window (see the module doc). `fps` is the file's frame rate
    (None for in-memory videos); `num_frames` is known for in-memory videos, and for files after a full
    pass over `windows`; `declared_frames` is the header's count for files."""

    def __init__(self, video: VideoInput) -> None:
        self.path: Path | None = None
        self.fps: float | None = None
        if isinstance(video, (str, os.PathLike)):
            self.path = Path(video)
            with VideoReader(self.path) as reader:  # header checks (size limits) before any decoding
                info = reader.info
            self.height, self.width, self.fps = info.height, info.width, info.fps
            self.num_frames: int | None = None
            self.declared_frames = info.num_frames
            self.channels_last = True
            return
        x = torch.from_numpy(video) if isinstance(video, np.ndarray) else video
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected frames as a numpy array, a tensor or a video file path, got "
                             f"{type(video).__name__}")
        if x.dtype == torch.uint8 and x.ndim == 4 and x.shape[-1] == 3:
            self.channels_last = True
        elif x.is_floating_point() and x.ndim == 4 and x.shape[0] == 3:
            lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
            if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
                raise ValueError(f"expected a float video with values in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
            self.channels_last = False
        else:
            raise ValueError("expected uint8 frames (T, H, W, 3) or a float video (3, T, H, W) in [0, 1], "
                             f"got {x.dtype} {tuple(x.shape)}")
        self.tensor = x
        shape = tuple(x.shape[:3]) if self.channels_last else tuple(x.shape[1:])
        self.num_frames, self.height, self.width = shape
        if self.num_frames < 1:
            raise ValueError("a video needs at least one frame, got 0")
        self.declared_frames = self.num_frames

    def windows(self, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, raw frames) of consecutive windows of `size` frames (the last may be shorter); raw
        frames are as stored: uint8 (n, H, W, 3) or float (3, n, H, W), on the CPU for files."""
        if self.path is None:
            for start in range(0, self.num_frames, size):  # type: ignore[arg-type]
                end = start + size
                yield start, self.tensor[start:end] if self.channels_last else self.tensor[:, start:end]
            return
        start = 0
        with VideoReader(self.path) as reader:
            for chunk in reader.chunks(size):
                yield start, torch.from_numpy(chunk)
                start += chunk.shape[0]
        self.num_frames = start

    def frames(self, raw: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Raw frames -> float32 (3, n, H, W) in [0, 1] on `device`."""
        if self.channels_last:
            return raw.to(device).permute(3, 0, 1, 2).float().div_(255.0)
        return raw.to(device=device, dtype=torch.float32)

    def count(self, raw: torch.Tensor) -> int:
        return raw.shape[0] if self.channels_last else raw.shape[1]

    def taker(self, window: int, device: torch.device) -> Callable[[int], torch.Tensor]:
        """A function giving the next `n` frames as float (3, n, H, W), reading window by window and
        converting only the frames asked for (the rest of a window stays as stored, e.g. uint8)."""
        windows = self.windows(window)
        buffered: list[torch.Tensor] = []  # raw frames not yet taken

        def cut(raw: torch.Tensor, start: int, end: int) -> torch.Tensor:
            return raw[start:end] if self.channels_last else raw[:, start:end]

        def take(n: int) -> torch.Tensor:
            have = sum(self.count(x) for x in buffered)
            while have < n:
                _, raw = next(windows, (None, None))
                if raw is None:
                    raise ValueError(f"{self.path} gave fewer frames on a second read; was it modified?")
                buffered.append(raw)
                have += self.count(raw)
            parts, need = [], n
            while need:
                raw = buffered.pop(0)
                k = min(need, self.count(raw))
                parts.append(self.frames(cut(raw, 0, k), device))
                if k < self.count(raw):
                    buffered.insert(0, cut(raw, k, self.count(raw)))
                need -= k
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        return take

    def window_clips(self, raw: torch.Tensor, layout: SpatialLayout, size: int, frames: int,
                     device: torch.device) -> Iterator[torch.Tensor]:
        """A window's clips (3, frames, size, size) in `layout.tiles` order, its last frame repeated up to
        `frames`. Values equal those of converting, padding and resizing the whole window at once."""
        n, (h, w), (rh, rw) = self.count(raw), layout.original_size, layout.resized_size
        if (rh, rw) != (h, w) or rh < size or rw < size:
            group = max(1, FRAME_GROUP_BYTES // (12 * h * w))
            parts = []
            for f0 in range(0, n, group):
                part = self.frames(raw[f0:f0 + group] if self.channels_last else raw[:, f0:f0 + group], device)
                parts.append(TF.resize(part, [rh, rw], antialias=True) if (rh, rw) != (h, w) else part)
            window = pad_frames(torch.cat(parts, dim=1), frames)
            if rh < size or rw < size:  # frames smaller than the model: repeat the border pixels
                window = F.pad(window, (0, max(size - rw, 0), 0, max(size - rh, 0)), mode="replicate")
            for top, left in layout.tiles:
                yield window[..., top:top + size, left:left + size]
            return
        for top, left in layout.tiles:  # native resolution: cut each clip before converting it
            cut = raw[:, top:top + size, left:left + size] if self.channels_last \
                else raw[..., top:top + size, left:left + size]
            yield pad_frames(self.frames(cut, device), frames)
