"""The synthetic dataset: coloured shapes moving over a textured background, and its analytic classifier.

Class k is a combination of a colour (6 saturated hues 60 degrees apart), a shape and a kind of motion.
Motions are told apart by their vertical component and the steepness of the path, never by left versus
right: each clip draws its horizontal sign at random, so a horizontally flipped clip (the training
augmentation of the data pipeline) stays in its class. Per clip, the start position, travel distance (speed),
object size and the background texture (frequencies, orientation, phase, tint) are random.

`classify_clip` recovers the class with no learning: the object is where saturation is high (the
background is nearly grey), its hue picks the colour, and a straight-line fit of its centroid over time
picks the motion. Both cues survive H.264 compression and the blur of a reconstruction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

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


def _shape_mask(shape: str, cx: float, cy: float, half: float, size: int, ss: int = 4,
                rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> np.ndarray:
    """Antialiased coverage (H, W) in [0, 1] of a shape centred at (cx, cy), by ss x ss supersampling;
    only pixel rows [r0, r1) and columns [c0, c1) when given (the same values as in the whole frame)."""
    (r0, r1), (c0, c1) = rows or (0, size), cols or (0, size)
    dy = ((np.arange(r0 * ss, r1 * ss, dtype=np.float32) + 0.5) / ss)[:, None] - cy
    dx = ((np.arange(c0 * ss, c1 * ss, dtype=np.float32) + 0.5) / ss)[None, :] - cx
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
    return inside.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))


@dataclass(frozen=True)
class MovingShape:
    """One object: a shape of one colour, `half` pixels from its centre to its side, at centres[t] = (x, y)."""

    shape: str
    colour: tuple[float, float, float]
    half: float
    centres: np.ndarray  # (T, 2) float, pixels


@dataclass(frozen=True)
class Scene:
    """A clip before rendering: a static background (H, W, 3) in 0..255 and the objects drawn over it."""

    background: np.ndarray
    objects: tuple[MovingShape, ...]

    @property
    def frames(self) -> int:
        return len(self.objects[0].centres) if self.objects else 1

    def render(self) -> np.ndarray:
        """uint8 (T, H, W, 3): each object composited over the background by its antialiased coverage."""
        size = self.background.shape[0]
        out = np.empty((self.frames, size, size, 3), np.uint8)
        for t in range(self.frames):
            img = self.background.astype(np.float64)
            for obj in self.objects:
                cx, cy = (float(v) for v in obj.centres[t])
                # Only the window the shape can cover (1.25 half at most from its centre) is drawn.
                reach = 1.25 * obj.half + 2
                r0, r1 = max(0, math.floor(cy - reach)), min(size, math.ceil(cy + reach) + 1)
                c0, c1 = max(0, math.floor(cx - reach)), min(size, math.ceil(cx + reach) + 1)
                if r0 >= r1 or c0 >= c1:
                    continue
                alpha = _shape_mask(obj.shape, cx, cy, obj.half, size, rows=(r0, r1), cols=(c0, c1))[..., None]
                window = img[r0:r1, c0:c1]
                img[r0:r1, c0:c1] = window * (1 - alpha) + np.asarray(obj.colour, np.float32) * alpha
            out[t] = np.clip(img, 0, 255).round().astype(np.uint8)
        return out


def synthetic_scene(class_id: int, rng: np.random.Generator, frames: int = 16, size: int = 64) -> Scene:
    """The scene of one clip of class `class_id`; all randomness comes from `rng`."""
    cls = synthetic_class(class_id)
    if frames < 1 or size < 16:
        raise ValueError(f"need frames >= 1 and size >= 16, got frames={frames}, size={size}")
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
    steps = [t / (frames - 1) if frames > 1 else 0.0 for t in range(frames)]
    centres = np.array([(x0 + f * dx, y0 + f * dy) for f in steps], np.float64)
    return Scene(background, (MovingShape(cls.shape, COLOURS[cls.colour], half, centres),))


def synthetic_clip(class_id: int, rng: np.random.Generator, frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip of class `class_id` as uint8 (T, H, W, 3); all randomness comes from `rng`."""
    return synthetic_scene(class_id, rng, frames, size).render()


def solid_color_clips(n: int, frames: int = 16, size: int = 64, seed: int = 0) -> np.ndarray:
    """n clips, each one random solid colour: uint8 (n, T, H, W, 3) (the solid-colour sanity set)."""
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
    round(clips_per_class * val_fraction) clips of every class form the validation split. The files are
    the same bytes on every run (single-threaded encoding). The CSVs list
    clip 0 of every class, then clip 1 of every class, ...: any first rows (a quick validation on the
    first N clips, a smoke run) cover all classes."""
    specs = synthetic_classes(classes)
    if clips_per_class < 1:
        raise ValueError(f"clips_per_class must be >= 1, got {clips_per_class}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    out = Path(out_dir)
    n_val = round(clips_per_class * val_fraction)
    splits: dict[str, list[VideoRow]] = {"train": [], "val": []}
    for i in range(clips_per_class):
        for spec in specs:
            clip = synthetic_clip(spec.index, np.random.default_rng([seed, spec.index, i]), frames, size)
            rel = Path("videos") / spec.name / f"{spec.name}_{i:04d}.mp4"
            write_mp4(out / rel, clip, fps=fps, threads=1)  # one thread: the same bytes on every machine
            split = "val" if i >= clips_per_class - n_val else "train"
            splits[split].append(VideoRow(f"{spec.name}_{i:04d}", rel.as_posix(), spec.name, spec.index))
    return {name: write_csv(out / f"{name}.csv", rows) for name, rows in splits.items()}


# ------------------------------------------------------------------------------------------ analysis

# A pixel belongs to the salient object when its chroma (max - min of R, G, B in [0, 1]) reaches 0.3: the
# background's tint gives at most 0.08, the palette's weakest colour (green) 0.63, so the edge sits near half
# coverage for every colour.
SALIENT_CHROMA = 0.3
# H.264 stores colour at half resolution in 2x2 blocks, which turns a small diamond into an octagon of
# blocks; a light smoothing of the chroma map (before the threshold) undoes the staircase.
CHROMA_SMOOTHING = 0.7
# Salient regions smaller than this (pixels at 64x64, scaled with the frame's area) are specks, not objects.
MIN_OBJECT_AREA = 6.0
# Area of each shape as a multiple of half**2, and how far below its centre its centroid lies (x half).
_SHAPE_AREA = {"square": 4.0, "circle": math.pi, "triangle": 2.4, "diamond": 3.125}
_SHAPE_CENTROID_DROP = {"square": 0.0, "circle": 0.0, "triangle": 1.0 / 3.0, "diamond": 0.0}
SHAPE_FRAMES = 6  # frames (evenly spaced) whose object is compared with the shape templates


@dataclass(frozen=True)
class CoherenceRule:
    """When a clip shows one coherent object: present alone in at least `min_single_fraction` of the frames,
    its area varying by at most `max_area_cv` (std / mean), no step between consecutive frames longer than
    `max_step` x the frame size (4 px at 64: training objects move 1.1-1.8 px per frame)."""

    min_single_fraction: float = 0.9
    max_area_cv: float = 0.2
    max_step: float = 1 / 16


@dataclass
class ClipAnalysis:
    """What the analytic classifier sees in one clip (see `analyse_clip`)."""

    size: int
    counts: np.ndarray  # (T,) objects per frame
    areas: np.ndarray  # (T,) pixels of the largest object, 0 where there is none
    centres: np.ndarray  # (T, 2) chroma-weighted (x, y) of the largest object, NaN where there is none
    mask: np.ndarray  # (T, H, W) bool: the salient pixels of every object
    rgb: np.ndarray  # (3,) chroma-weighted mean colour of the object pixels in [0, 1] (NaN without object)
    colour: str | None  # nearest palette colour by hue
    shape: str | None  # best-overlapping shape template
    shape_scores: dict[str, float]  # mean IoU of each shape's template with the largest object
    shape_descriptors: tuple[float, float, float]  # fill of the bounding box, centroid drop, width / height
    motion: str | None  # nearest motion kind; None when the object hardly moves
    angle: float  # degrees of (|dx|, up) of the fitted path
    speed: float  # px per frame along the fitted path
    path_rms: float  # px: RMS distance of the centres from the fitted straight path
    max_step: float  # px: the longest move between consecutive frames that both show an object

    @property
    def single_fraction(self) -> float:
        """Fraction of frames with exactly one object."""
        return float((self.counts == 1).mean())

    @property
    def area_cv(self) -> float:
        present = self.areas[self.areas > 0]
        return float(present.std() / present.mean()) if len(present) else float("inf")

    def coherent(self, rule: CoherenceRule = CoherenceRule()) -> bool:
        """One object in (nearly) every frame, of stable area, moving without jumps."""
        return (self.single_fraction >= rule.min_single_fraction and self.area_cv <= rule.max_area_cv
                and self.max_step <= rule.max_step * self.size)

    def attributes(self) -> tuple[str | None, str | None, str | None]:
        return self.colour, self.shape, self.motion


def _as_numpy_video(video: torch.Tensor | np.ndarray) -> np.ndarray:
    x = (video.detach().float().cpu().numpy() if isinstance(video, torch.Tensor)
         else np.asarray(video, np.float32))
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"expected a float video (3, T, H, W) in [0, 1], got shape {x.shape}")
    return x


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue angle (radians) of RGB vectors in an opponent-colour plane; grey has no direction."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.arctan2(math.sqrt(3) / 2 * (g - b), r - (g + b) / 2)


def nearest_colour(rgb: np.ndarray, colours: Sequence[str] = tuple(COLOURS)) -> str:
    """The palette colour (among `colours`) whose hue is nearest to that of `rgb`."""
    hue = float(_hue(np.asarray(rgb, np.float32)))

    def gap(name: str) -> float:
        d = abs(hue - float(_hue(np.array(COLOURS[name], np.float32)))) % (2 * math.pi)
        return min(d, 2 * math.pi - d)

    return min(colours, key=gap)


def _chroma(x: np.ndarray) -> np.ndarray:
    """(T, H, W) chroma (max - min of R, G, B), smoothed by a Gaussian of CHROMA_SMOOTHING px per frame."""
    return ndimage.gaussian_filter(x.max(axis=0) - x.min(axis=0), (0, CHROMA_SMOOTHING, CHROMA_SMOOTHING))


def salient_mask(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """(T, H, W) bool: pixels of (smoothed) chroma >= SALIENT_CHROMA in a float video (3, T, H, W) in [0, 1]."""
    return _chroma(_as_numpy_video(video)) >= SALIENT_CHROMA


def _iou_with(crop: np.ndarray, outside: int, shape: str, cx: float, cy: float, half: float) -> float:
    drawn = _shape_mask(shape, cx, cy, half, crop.shape[0], ss=2) > 0.5
    return float((crop & drawn).sum() / ((crop | drawn).sum() + outside))


def _template_iou(component: np.ndarray, shape: str) -> float:
    """How well a binary object (H, W) matches `shape`: the mean IoU of two drawings of the shape, one of
    the object's area at its centroid, one filling its bounding box.

    The area fit tells a diamond from a circle; the box fit keeps corners that a blur or the video codec's
    chroma subsampling has rounded (a rounded square still fills its box far better than a circle)."""
    ys, xs = np.nonzero(component)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = y1 - y0, x1 - x0
    side = int(max(bh, bw)) + 8
    oy, ox = (y0 + y1) // 2 - side // 2, (x0 + x1) // 2 - side // 2
    crop = np.zeros((side, side), bool)
    inside = (ys >= oy) & (ys < oy + side) & (xs >= ox) & (xs < ox + side)
    crop[ys[inside] - oy, xs[inside] - ox] = True
    outside = int((~inside).sum())
    half_area = math.sqrt(len(ys) / _SHAPE_AREA[shape])
    by_area = _iou_with(crop, outside, shape, xs.mean() + 0.5 - ox,
                        ys.mean() + 0.5 - oy - _SHAPE_CENTROID_DROP[shape] * half_area, half_area)
    half_box = {"square": (bh + bw) / 4, "circle": (bh + bw) / 4, "diamond": (bh + bw) / 5,
                "triangle": (bh / 2 + bw / 2.4) / 2}[shape]
    by_box = _iou_with(crop, outside, shape, (x0 + x1) / 2 - ox, (y0 + y1) / 2 - oy, half_box)
    return (by_area + by_box) / 2


def analyse_clip(video: torch.Tensor | np.ndarray, min_speed: float = 0.4) -> ClipAnalysis:
    """Find the salient objects of a float clip (3, T, H, W) in [0, 1] and read its class attributes.

    Per frame, the objects are the 8-connected regions of `salient_mask` of at least MIN_OBJECT_AREA pixels
    (scaled to the frame). The largest one is tracked: its chroma-weighted centroid per frame, a straight-line
    fit of those over time (motion kind, speed, path RMS), the longest step between consecutive frames. Its
    shape is the template (square, circle, triangle, diamond; see `_template_iou`)
    that overlaps it best on average over SHAPE_FRAMES evenly spaced frames; its colour the palette hue nearest to its mean colour.
    An object slower than `min_speed` px per frame (x size / 64) has no motion kind."""
    x = _as_numpy_video(video)
    _, t_len, h, w = x.shape
    chroma = _chroma(x)
    min_area = MIN_OBJECT_AREA * h * w / 64 ** 2
    eight = np.ones((3, 3), bool)
    counts = np.zeros(t_len, np.int64)
    areas = np.zeros(t_len)
    centres = np.full((t_len, 2), np.nan)
    mask = np.zeros((t_len, h, w), bool)
    scores = {s: [] for s in SHAPES}
    shape_frames = set(np.linspace(0, t_len - 1, min(t_len, SHAPE_FRAMES)).round().astype(int).tolist())
    fills, drops, aspects = [], [], []
    weights_sum, rgb_sum = 0.0, np.zeros(3)
    for t in range(t_len):
        labels, n = ndimage.label(chroma[t] >= SALIENT_CHROMA, structure=eight)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        keep = np.nonzero(sizes >= min_area)[0] + 1
        counts[t] = len(keep)
        if not len(keep):
            continue
        mask[t] = np.isin(labels, keep)
        main = labels == keep[np.argmax(sizes[keep - 1])]
        ys, xs = np.nonzero(main)
        wgt = chroma[t][ys, xs] - SALIENT_CHROMA * 0.5
        cx, cy = float((xs * wgt).sum() / wgt.sum()), float((ys * wgt).sum() / wgt.sum())
        areas[t], centres[t] = len(ys), (cx, cy)
        weights_sum += float(wgt.sum())
        rgb_sum += (x[:, t][:, ys, xs] * wgt).sum(axis=1)
        if t in shape_frames:
            for shape in SHAPES:
                scores[shape].append(_template_iou(main, shape))
        bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fills.append(len(ys) / (bh * bw))
        drops.append((ys.mean() - (ys.max() + ys.min()) / 2) / bh)
        aspects.append(bw / bh)
    present = ~np.isnan(centres[:, 0])
    rgb = rgb_sum / weights_sum if weights_sum > 0 else np.full(3, np.nan)
    mean_scores = {s: float(np.mean(v)) if v else 0.0 for s, v in scores.items()}
    angle = speed = path_rms = max_step = 0.0
    if present.sum() >= 2:
        t = np.nonzero(present)[0].astype(np.float64)
        c = centres[present]
        tc = t - t.mean()
        vel = (tc[:, None] * (c - c.mean(axis=0))).sum(axis=0) / (tc * tc).sum()
        fit = c.mean(axis=0) + tc[:, None] * vel
        path_rms = float(np.sqrt(((c - fit) ** 2).sum(axis=1).mean()))
        angle, speed = math.degrees(math.atan2(-vel[1], abs(vel[0]))), float(np.hypot(*vel))
        both = present[1:] & present[:-1]
        if both.any():
            max_step = float(np.hypot(*(centres[1:] - centres[:-1])[both].T).max())
    motion = (min(MOTIONS, key=lambda m: abs(angle - MOTIONS[m]))
              if present.sum() >= 2 and speed >= min_speed * w / 64 else None)
    return ClipAnalysis(
        size=w, counts=counts, areas=areas, centres=centres, mask=mask, rgb=rgb,
        colour=nearest_colour(rgb) if weights_sum > 0 else None,
        shape=max(mean_scores, key=mean_scores.get) if fills else None, shape_scores=mean_scores,
        shape_descriptors=(float(np.median(fills)), float(np.median(drops)), float(np.median(aspects)))
        if fills else (0.0, 0.0, 0.0),
        motion=motion, angle=angle, speed=speed, path_rms=path_rms, max_step=max_step)


# ------------------------------------------------------------------------------------------ classifier


def clip_features(video: torch.Tensor | np.ndarray) -> tuple[float, float, float]:
    """(hue in radians, motion angle in degrees of (|dx|, up), speed in px/frame) of the largest object."""
    a = analyse_clip(video)
    hue = 0.0 if np.isnan(a.rgb).any() else float(_hue(a.rgb))
    return hue, a.angle, a.speed


def classify_clip(video: torch.Tensor | np.ndarray, num_classes: int = 10) -> int:
    """The class (0..num_classes-1) of a synthetic clip, float (3, T, H, W) in [0, 1], from its pixels.

    Nearest palette hue among the colours in use, then, among the classes of that colour, the motion
    whose angle is nearest to the fitted path of the object's centroid. Shape is not used: this is the
    lenient class (see `clip_attributes` and `strict_correct` for the strict one)."""
    return lenient_class(analyse_clip(video), num_classes)


def lenient_class(analysis: ClipAnalysis, num_classes: int = 10) -> int:
    """`classify_clip` from an analysis already made."""
    specs = synthetic_classes(num_classes)
    rgb = np.full(3, 0.5) if np.isnan(analysis.rgb).any() else analysis.rgb
    colour = nearest_colour(rgb, sorted({s.colour for s in specs}, key=list(COLOURS).index))
    candidates = [s for s in specs if s.colour == colour]
    return min(candidates, key=lambda s: abs(analysis.angle - MOTIONS[s.motion])).index


def classify_clips(videos: torch.Tensor | np.ndarray, num_classes: int = 10) -> np.ndarray:
    """`classify_clip` over a batch (B, 3, T, H, W) -> int64 (B,)."""
    return np.array([classify_clip(v, num_classes) for v in videos], np.int64)


def clip_attributes(video: torch.Tensor | np.ndarray) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, motion) read from the pixels; None where the clip shows no object (or no motion)."""
    return analyse_clip(video).attributes()


def strict_correct(analysis: ClipAnalysis, class_id: int) -> bool:
    """Colour, shape and motion all those of class `class_id`."""
    cls = synthetic_class(class_id)
    return analysis.attributes() == (cls.colour, cls.shape, cls.motion)
