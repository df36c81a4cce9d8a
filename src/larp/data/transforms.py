"""Clip transforms (docs/method.md, Data): resize the shorter side (antialiased), crop, flip, pad by repetition.

Tensor functions take videos whose last three dimensions are (T, H, W) after the channel dimension, i.e.
(3, T, H, W) or (B, 3, T, H, W), uint8 or float; they keep the dtype and device of their input. Random
choices come from a numpy Generator so that datasets control them per item.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    return int(h), int(w)


def _check_video(video: torch.Tensor) -> None:
    if not isinstance(video, torch.Tensor) or video.ndim < 4 or video.shape[-4] != 3:
        shape = tuple(video.shape) if hasattr(video, "shape") else type(video).__name__
        raise ValueError(f"expected a video (3, T, H, W) or (B, 3, T, H, W), got {shape}")


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) after scaling the shorter side to `size`; the longer side truncated to whole pixels, as
    torchvision's `Resize(size)` (the reference's data pipeline) computes it."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if height <= width:
        return size, max(1, int(width * size / height))
    return max(1, int(height * size / width)), size


def resize_short_side(video: torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize so that min(H, W) == size, antialiased when shrinking. uint8 stays uint8."""
    _check_video(video)
    h, w = video.shape[-2:]
    out_hw = short_side_size(h, w, size)
    if out_hw == (h, w):
        return video
    return TF.resize(video, list(out_hw), antialias=antialias)


def resize_frames(frames: torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """Same as `resize_short_side` for frames laid out (T, 3, H, W); channels-last uint8 input (a permuted
    (T, H, W, 3) array) takes torchvision's fast uint8 path."""
    h, w = frames.shape[-2:]
    out_hw = short_side_size(h, w, size)
    if out_hw == (h, w):
        return frames
    return TF.resize(frames, list(out_hw), antialias=antialias)


def center_crop(video: torch.Tensor, size: Size) -> torch.Tensor:
    """Central crop of the last two dimensions; raises if the video is smaller than the crop."""
    th, tw = _pair(size)
    h, w = video.shape[-2:]
    if h < th or w < tw:
        raise ValueError(f"cannot crop {th}x{tw} from frames of {h}x{w}; resize first")
    top, left = (h - th) // 2, (w - tw) // 2
    return video[..., top : top + th, left : left + tw]


def random_crop(video: torch.Tensor, size: Size, rng: np.random.Generator) -> torch.Tensor:
    """Crop at a position drawn uniformly from `rng` (same position for every frame)."""
    th, tw = _pair(size)
    h, w = video.shape[-2:]
    if h < th or w < tw:
        raise ValueError(f"cannot crop {th}x{tw} from frames of {h}x{w}; resize first")
    top = int(rng.integers(0, h - th + 1))
    left = int(rng.integers(0, w - tw + 1))
    return video[..., top : top + th, left : left + tw]


def random_hflip(video: torch.Tensor, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror every frame left-right with probability p (one draw per clip)."""
    return video.flip(-1) if rng.random() < p else video


def pad_frames(frames: np.ndarray | torch.Tensor, num_frames: int) -> np.ndarray | torch.Tensor:
    """Repeat the last frame until there are `num_frames` frames.

    numpy arrays are frames (T, H, W, C) padded along axis 0; tensors are videos (..., 3, T, H, W) padded
    along dimension -3. Longer inputs are returned unchanged."""
    if isinstance(frames, np.ndarray):
        t = frames.shape[0]
        if t == 0:
            raise ValueError("cannot pad a clip with zero frames")
        if t >= num_frames:
            return frames
        return np.concatenate([frames, np.repeat(frames[-1:], num_frames - t, axis=0)], axis=0)
    _check_video(frames)
    t = frames.shape[-3]
    if t == 0:
        raise ValueError("cannot pad a clip with zero frames")
    if t >= num_frames:
        return frames
    last = frames[..., -1:, :, :]
    reps = [1] * frames.ndim
    reps[-3] = num_frames - t
    return torch.cat([frames, last.repeat(*reps)], dim=-3)


class ClipTransform:
    """Frames -> model input: shorter side to `size`, crop `size`x`size`, float (3, T, size, size) in [0, 1].

    Evaluation (train=False) centre-crops and is deterministic. Training adds a random horizontal flip and,
    with random_crop=True, a random instead of a central crop. Accepts uint8 frames (T, H, W, 3) as numpy
    or tensor (resized on uint8, the fast path) or a video tensor (3, T, H, W) in uint8 or float."""

    def __init__(self, size: int, train: bool, *, random_crop: bool = False, flip_p: float = 0.5) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.train = train
        self.random_crop = random_crop
        self.flip_p = flip_p

    def __call__(
        self, frames: np.ndarray | torch.Tensor, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        if self.train and rng is None:
            raise ValueError("a training transform needs a numpy Generator for its random choices")
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        if frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == torch.uint8:
            # (T, H, W, 3) -> (T, 3, H, W), a channels-last view torchvision resizes fastest.
            x = resize_frames(frames.permute(0, 3, 1, 2), self.size).permute(1, 0, 2, 3)
        else:
            x = resize_short_side(frames, self.size)
        if self.train and self.random_crop:
            x = random_crop(x, self.size, rng)
        else:
            x = center_crop(x, self.size)
        if self.train:
            x = random_hflip(x, rng, self.flip_p)
        if x.dtype == torch.uint8:
            return x.float().div_(255.0).contiguous()
        return x.float().contiguous()

    def __repr__(self) -> str:
        return f"ClipTransform(size={self.size}, train={self.train}, random_crop={self.random_crop})"
