"""The synthetic dataset: coloured shapes moving over a textured background, and its analytic classifier.

Class k is a combination of a colour (6 saturated hues 60 degrees apart), a shape and a kind of motion.
Motions are told apart by their vertical component and the steepness of the path, never by left versus
right: each clip draws its horizontal sign at random, so a horizontally flipped clip (the training
augmentation of spec section 4) stays in its class. Per clip, the start position, travel distance (speed),
object size and the background texture (frequencies, orientation, phase, tint) are random.

`classify_clip` recovers the class with no learning: the object is where saturation is high (the
background is nearly grey), its hue picks the colour, and a straight-line fit of its centroid over time
picks the motion. Both cues survive H.264 compression and the blur of a reconstruction.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from larp.data.prepare import VideoRow, write_csv
from larp.data.video_io import write_mp4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (235, 215, 25),
    "green": (35, 195, 50),
    "cyan": (25, 200, 215),
    "blue": (45, 70, 235),
    "magenta": (215, 40, 215),
}
SHAPES = ("square", "circle", "triangle", "diamond")
# Motion kinds as the angle of (|dx|, up) in degrees: the sign of dx is random per clip.
MOTIONS: dict[str, float] = {"horizontal": 0.0, "up": 90.0, "down": -90.0, "rising": 45.0, "falling": -45.0}
MAX_CLASSES = len(COLOURS) * len(MOTIONS)


@dataclass(frozen=True)
class SyntheticClass:
    index: int
    colour: str
    shape: str
    motion: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}_{self.motion}"


def synthetic_class(k: int) -> SyntheticClass:
    """Class k: colour k mod 6; the motion cycles so that classes sharing a colour move differently."""
    if not 0 <= k < MAX_CLASSES:
        raise ValueError(f"the synthetic dataset has at most {MAX_CLASSES} classes, got class {k}")
    colours, motions = list(COLOURS), list(MOTIONS)
    c, r = k % len(colours), k // len(colours)
    return SyntheticClass(k, colours[c], SHAPES[k % len(SHAPES)], motions[(c + r) % len(motions)])


def synthetic_classes(n: int) -> list[SyntheticClass]:
    if not 1 <= n <= MAX_CLASSES:
        raise ValueError(f"classes must lie in 1..{MAX_CLASSES}, got {n}")
    return [synthetic_class(k) for k in range(n)]


# ------------------------------------------------------------------------------------------ generation


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-saturation texture: two oriented sinusoidal gratings over grey with a faint tint."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 128.0, np.float32)
    for amp in (26.0, 14.0):
        theta = rng.uniform(0, math.pi)
        freq = rng.uniform(1.5, 4.0)
        phase = rng.uniform(0, 2 * math.pi)
        img += amp * np.sin(2 * math.pi * freq * (x * math.cos(theta) + y * math.sin(theta)) + phase)
    tint = rng.uniform(-10, 10, size=3).astype(np.float32)
    return img[..., None] + tint


def _shape_mask(shape: str, cx: float, cy: float, half: float, size: int, ss: int = 4) -> np.ndarray:
    """Antialiased coverage (H, W) in [0, 1] of a shape centred at (cx, cy), by ss x ss supersampling."""
    coords = (np.arange(size * ss, dtype=np.float32) + 0.5) / ss
    dy = coords[:, None] - cy
    dx = coords[None, :] - cx
    if shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "circle":
        inside = dx * dx + dy * dy <= half * half
    elif shape == "diamond":
        inside = np.abs(dx) + np.abs(dy) <= half * 1.25
    elif shape == "triangle":
        # Pointing up: apex at -half, base at +half (flip-symmetric, so flips keep the shape).
        inside = (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) * 0.6)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def synthetic_clip(class_id: int, rng: np.random.Generator, frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip of class `class_id` as uint8 (T, H, W, 3); all randomness comes from `rng`."""
    cls = synthetic_class(class_id)
    if frames < 1 or size < 16:
        raise ValueError(f"need frames >= 1 and size >= 16, got frames={frames}, size={size}")
    colour = np.array(COLOURS[cls.colour], np.float32)
    background = _background(rng, size)
    half = rng.uniform(0.095, 0.15) * size  # object 12-19 px across at 64 px
    angle = math.radians(MOTIONS[cls.motion])
    sign = 1.0 if rng.random() < 0.5 else -1.0
    ux, uy = sign * math.cos(angle), -math.sin(angle)  # image y points down
    travel = rng.uniform(0.25, 0.42) * size
    dx, dy = ux * travel, uy * travel
    margin = 0.06 * size + half
    x0 = rng.uniform(margin - min(dx, 0), size - margin - max(dx, 0))
    y0 = rng.uniform(margin - min(dy, 0), size - margin - max(dy, 0))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        f = t / (frames - 1) if frames > 1 else 0.0
        alpha = _shape_mask(cls.shape, x0 + f * dx, y0 + f * dy, half, size)[..., None]
        out[t] = np.clip(background * (1 - alpha) + colour * alpha, 0, 255).round().astype(np.uint8)
    return out


def solid_color_clips(n: int, frames: int = 16, size: int = 64, seed: int = 0) -> np.ndarray:
    """n clips, each one random solid colour: uint8 (n, T, H, W, 3) (the sanity set of issue 8)."""
    colours = np.random.default_rng(seed).integers(0, 256, size=(n, 3), dtype=np.uint8)
    return np.broadcast_to(colours[:, None, None, None, :], (n, frames, size, size, 3)).copy()


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    classes: int = 10,
    clips_per_class: int = 64,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.25,
    fps: float = 8,
) -> dict[str, Path]:
    """Write mp4 clips under `out_dir/videos/<class>/` and `train.csv`, `val.csv` (relative paths).

    Clip i of class k is generated from the seed sequence (seed, k, i); the last
    round(clips_per_class * val_fraction) clips of every class form the validation split."""
    specs = synthetic_classes(classes)
    if clips_per_class < 1:
        raise ValueError(f"clips_per_class must be >= 1, got {clips_per_class}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    out = Path(out_dir)
    n_val = round(clips_per_class * val_fraction)
    splits: dict[str, list[VideoRow]] = {"train": [], "val": []}
    for spec in specs:
        for i in range(clips_per_class):
            clip = synthetic_clip(spec.index, np.random.default_rng([seed, spec.index, i]), frames, size)
            rel = Path("videos") / spec.name / f"{spec.name}_{i:04d}.mp4"
            write_mp4(out / rel, clip, fps=fps)
            split = "val" if i >= clips_per_class - n_val else "train"
            splits[split].append(VideoRow(f"{spec.name}_{i:04d}", rel.as_posix(), spec.name, spec.index))
    return {name: write_csv(out / f"{name}.csv", rows) for name, rows in splits.items()}


# ------------------------------------------------------------------------------------------ classifier


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue angle (radians) of RGB vectors in an opponent-colour plane; grey has no direction."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.arctan2(math.sqrt(3) / 2 * (g - b), r - (g + b) / 2)


def clip_features(video: torch.Tensor | np.ndarray) -> tuple[float, float, float]:
    """(hue in radians, motion angle in degrees of (|dx|, up), speed in px/frame) of the salient object."""
    x = (
        video.detach().float().cpu().numpy()
        if isinstance(video, torch.Tensor)
        else np.asarray(video, np.float32)
    )
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"expected a float video (3, T, H, W) in [0, 1], got shape {x.shape}")
    sat = x.max(axis=0) - x.min(axis=0)  # (T, H, W)
    t_len, h, w = sat.shape
    # Per frame, the object is the clearly saturated region (the background stays near grey).
    thr = np.maximum(0.08, 0.5 * np.quantile(sat.reshape(t_len, -1), 0.995, axis=1))
    weight = np.clip(sat - thr[:, None, None], 0, None)
    mass = weight.sum(axis=(1, 2))
    total = weight.sum()
    if total <= 0:
        return 0.0, 0.0, 0.0
    # Mean chroma of object pixels, weighted by saturation, gives the hue.
    rgb = (x * weight[None]).sum(axis=(1, 2, 3)) / total
    hue = float(_hue(rgb))
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    ok = mass > 0.05 * mass.max()
    cy = (weight.sum(axis=2) @ ys)[ok] / mass[ok]
    cx = (weight.sum(axis=1) @ xs)[ok] / mass[ok]
    t = np.arange(t_len, dtype=np.float32)[ok]
    if len(t) < 2:
        return hue, 0.0, 0.0
    tc = t - t.mean()
    vx = float((tc * (cx - cx.mean())).sum() / (tc * tc).sum())
    vy = float((tc * (cy - cy.mean())).sum() / (tc * tc).sum())
    return hue, math.degrees(math.atan2(-vy, abs(vx))), math.hypot(vx, vy)


def classify_clip(video: torch.Tensor | np.ndarray, num_classes: int = 10) -> int:
    """The class (0..num_classes-1) of a synthetic clip, float (3, T, H, W) in [0, 1], from its pixels.

    Nearest palette hue among the colours in use, then, among the classes of that colour, the motion
    whose angle is nearest to the fitted path of the object's centroid."""
    specs = synthetic_classes(num_classes)
    hue, motion, _ = clip_features(video)
    palette = {name: float(_hue(np.array(rgb, np.float32))) for name, rgb in COLOURS.items()}

    def hue_gap(name: str) -> float:
        d = abs(hue - palette[name]) % (2 * math.pi)
        return min(d, 2 * math.pi - d)

    colour = min({s.colour for s in specs}, key=hue_gap)
    candidates = [s for s in specs if s.colour == colour]
    return min(candidates, key=lambda s: abs(motion - MOTIONS[s.motion])).index


def classify_clips(videos: torch.Tensor | np.ndarray, num_classes: int = 10) -> np.ndarray:
    """`classify_clip` over a batch (B, 3, T, H, W) -> int64 (B,)."""
    return np.array([classify_clip(v, num_classes) for v in videos], np.int64)
