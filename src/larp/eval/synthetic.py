"""Metrics on synthetic clips that look at the object, not only at the pixels on average.

Three families, all computed by the analytic classifier of `larp.data.synthetic` (no learned network):

- **class attributes**: colour, shape and motion read from the pixels; a clip is *strictly* right when all
  three are those of its intended class (`strict_accuracy`), and each attribute has its own accuracy;
- **object fidelity** of a reconstruction: IoU of the salient-object masks of the real clip and of its
  reconstruction over all frames, and the PSNR inside the real object's pixels (`object_fidelity`);
- **coherence**: one object in (nearly) every frame, of stable area, moving without jumps
  (`ClipAnalysis.coherent`); and **sFVD**, a Fréchet distance between Gaussians fitted to per-clip analytic
  features of a set of clips and of the real validation clips: the synthetic analogue of FVD.

`sample_metrics` scores generated clips (strict accuracy, per-attribute accuracies, coherent fraction,
sFVD); `reconstruction_object_metrics` scores reconstructions of real clips. Both take the real clips'
features as a `SyntheticReference` (built once from the validation clips, reusable)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.distance import pdist

from larp.data.synthetic import (
    SALIENT_CHROMA,
    ClipAnalysis,
    CoherenceRule,
    analyse_clip,
    lenient_class,
    strict_correct,
    synthetic_class,
)
from larp.eval.fvd import frechet_distance

DEFAULT_RULE = CoherenceRule()


@dataclass(frozen=True)
class SFVDFeature:
    """One per-clip feature of sFVD: its name, the smallest difference that counts as one unit when the
    real clips barely vary (the scale is max(real std, floor)), and why it is there."""

    name: str
    floor: float
    reason: str


SFVD_FEATURES: tuple[SFVDFeature, ...] = (
    SFVDFeature("object_red", 0.02, "object colour (mean RGB of its pixels): the class colour, and how faint"),
    SFVDFeature("object_green", 0.02, "object colour"),
    SFVDFeature("object_blue", 0.02, "object colour"),
    SFVDFeature("fill", 0.02, "shape: area over bounding box (square 1, circle 0.79, triangle, diamond 0.5)"),
    SFVDFeature("centroid_drop", 0.01, "shape: centroid below the box centre over its height (triangle 1/6)"),
    SFVDFeature("aspect", 0.02, "shape: box width over height (triangle 1.2, the others 1)"),
    SFVDFeature("objects_per_frame", 0.05, "object count: patchworks of several blobs raise it"),
    SFVDFeature("single_fraction", 0.02, "frames showing exactly one object: flicker and splits lower it"),
    SFVDFeature("area", 0.002, "object area over frame area: objects that shrink, fade or smear"),
    SFVDFeature("area_cv", 0.02, "area stability over time (std / mean): objects that pulse or break up"),
    SFVDFeature("direction_x", 0.02, "motion direction: |cos| of the fitted path's angle"),
    SFVDFeature("direction_up", 0.02, "motion direction: sin of the angle (up positive)"),
    SFVDFeature("speed", 0.002, "speed over frame size per frame: objects that stall or race"),
    SFVDFeature("path_rms", 0.002, "path linearity: RMS distance from the fitted straight path over size"),
    SFVDFeature("max_step", 0.005, "the longest move between consecutive frames over size: jumps"),
    SFVDFeature("background_red", 0.01, "background mean colour: grey level and tint"),
    SFVDFeature("background_green", 0.01, "background mean colour"),
    SFVDFeature("background_blue", 0.01, "background mean colour"),
    SFVDFeature("background_contrast", 0.005, "background texture contrast (std of its grey level)"),
    SFVDFeature("background_gradient", 0.002, "background texture detail (mean spatial gradient): blur"),
    SFVDFeature("background_flicker", 0.002, "background change over time (the real one is static)"),
)


def _numpy_video(video: torch.Tensor | np.ndarray) -> np.ndarray:
    x = video.detach().float().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video, np.float32)
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"expected a float video (3, T, H, W) in [0, 1], got shape {x.shape}")
    return np.clip(x, 0.0, 1.0)


def clip_sfvd_features(video: torch.Tensor | np.ndarray, analysis: ClipAnalysis | None = None) -> np.ndarray:
    """The SFVD_FEATURES of one clip (3, T, H, W) in [0, 1] as float64 (D,); see SFVD_FEATURES for each."""
    x = _numpy_video(video)
    a = analysis if analysis is not None else analyse_clip(x)
    _, t_len, h, w = x.shape
    present = a.areas > 0
    rgb = a.rgb if present.any() else np.full(3, 0.5)  # no object: grey, the colour of no colour
    rad = math.radians(a.angle)
    # The background: pixels at least 2 px away from every salient pixel of every frame.
    ever = ndimage.binary_dilation(a.mask.any(axis=0), iterations=2)
    mean_frame = x.mean(axis=1)  # (3, H, W)
    bg = ~ever
    if bg.sum() < 16:  # the object covers the clip: describe the whole frame instead
        bg = np.ones((h, w), bool)
    grey = mean_frame.mean(axis=0)
    gy, gx = np.abs(np.diff(grey, axis=0)), np.abs(np.diff(grey, axis=1))
    grad = np.concatenate([gy[bg[1:] & bg[:-1]], gx[bg[:, 1:] & bg[:, :-1]]])
    flicker = x.mean(axis=0).std(axis=0)[bg].mean() if t_len > 1 else 0.0
    values = [
        *rgb, *a.shape_descriptors, a.counts.mean(), a.single_fraction,
        a.areas[present].mean() / (h * w) if present.any() else 0.0, min(a.area_cv, 1.0),
        abs(math.cos(rad)), math.sin(rad), a.speed / w, a.path_rms / w, min(a.max_step / w, 1.0),
        *mean_frame[:, bg].mean(axis=1), grey[bg].std(), grad.mean() if grad.size else 0.0, flicker,
    ]
    return np.asarray(values, np.float64)


def analyse_clips(videos: torch.Tensor | Iterable[torch.Tensor]) -> list[ClipAnalysis]:
    """`analyse_clip` of every clip of a batch (B, 3, T, H, W) or of an iterable of clips."""
    return [analyse_clip(_numpy_video(v)) for v in videos]


def _as_features(videos: torch.Tensor | Iterable[torch.Tensor] | np.ndarray,
                 analyses: Sequence[ClipAnalysis] | None = None) -> np.ndarray:
    if isinstance(videos, np.ndarray) and videos.ndim == 2:
        if videos.shape[1] != len(SFVD_FEATURES):
            raise ValueError(f"expected sFVD features (N, {len(SFVD_FEATURES)}), got shape {videos.shape}")
        return videos.astype(np.float64)
    clips = [_numpy_video(v) for v in videos]
    if analyses is None:
        analyses = [analyse_clip(c) for c in clips]
    return np.stack([clip_sfvd_features(c, a) for c, a in zip(clips, analyses, strict=True)])


class SyntheticReference:
    """The real clips' sFVD features (typically the validation clips): what sFVD compares against."""

    def __init__(self, features: np.ndarray):
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != len(SFVD_FEATURES) or len(features) < 2:
            raise ValueError(f"expected at least 2 real feature vectors (N, {len(SFVD_FEATURES)}), got shape "
                             f"{features.shape}")
        self.features = features
        self.mean = features.mean(axis=0)
        floors = np.array([f.floor for f in SFVD_FEATURES])
        self.scale = np.maximum(features.std(axis=0), floors)

    @classmethod
    def from_videos(cls, videos: torch.Tensor | Iterable[torch.Tensor]) -> SyntheticReference:
        return cls(_as_features(videos))

    def sfvd(self, videos_or_features: torch.Tensor | Iterable[torch.Tensor] | np.ndarray) -> float:
        """Fréchet distance between Gaussians of the standardised features of the given clips and the real
        ones (each feature divided by max(real std, its floor), so every feature counts in units of the
        real clips' own spread). Needs at least 2 clips."""
        f = _as_features(videos_or_features)
        if len(f) < 2:
            raise ValueError(f"sFVD needs at least 2 clips, got {len(f)}")
        z_real = (self.features - self.mean) / self.scale
        z = (f - self.mean) / self.scale
        return frechet_distance(z_real.mean(axis=0), np.cov(z_real, rowvar=False), z.mean(axis=0),
                                np.cov(z, rowvar=False))


def attribute_scores(analyses: Sequence[ClipAnalysis], labels: Sequence[int],
                     num_classes: int = 10) -> dict[str, float]:
    """Strict accuracy (colour, shape and motion all right), the accuracy of each attribute, and the lenient
    class accuracy among `num_classes` classes (colour and motion: `larp.data.synthetic.classify_clip`)."""
    if len(analyses) != len(labels) or not len(labels):
        raise ValueError(f"expected one label per clip (and at least one clip), got {len(labels)} labels for "
                         f"{len(analyses)} clips")
    truth = [synthetic_class(int(y)) for y in labels]
    out = {"strict_accuracy": float(np.mean([strict_correct(a, int(y)) for a, y in zip(analyses, labels,
                                                                                        strict=True)]))}
    for i, name in enumerate(("colour", "shape", "motion")):
        out[f"{name}_accuracy"] = float(np.mean([a.attributes()[i] == (c.colour, c.shape, c.motion)[i]
                                                 for a, c in zip(analyses, truth, strict=True)]))
    out["class_accuracy"] = float(np.mean([lenient_class(a, num_classes) == int(y)
                                           for a, y in zip(analyses, labels, strict=True)]))
    return out


def path_spread(analyses: Sequence[ClipAnalysis], labels: Sequence[int]) -> float:
    """How varied the objects' paths are within each class: the mean distance between two clips of one class
    in (start centre, end centre), over the frame size, averaged over the classes. Samples that all take the
    same path score low while every per-clip figure (and sFVD, which has no position feature) stays the same;
    compare with the real clips' figure. Clips whose object shows in fewer than two frames are left out;
    NaN when no class keeps two clips."""
    if len(analyses) != len(labels):
        raise ValueError(f"expected one label per clip, got {len(labels)} labels for {len(analyses)} clips")
    ends: dict[int, list[np.ndarray]] = {}
    for a, y in zip(analyses, labels, strict=True):
        seen = a.centres[~np.isnan(a.centres[:, 0])]
        if len(seen) >= 2:
            ends.setdefault(int(y), []).append(np.concatenate([seen[0], seen[-1]]) / a.size)
    per_class = [pdist(np.stack(points)).mean() for points in ends.values() if len(points) >= 2]
    return float(np.mean(per_class)) if per_class else float("nan")


def sample_metrics(videos: torch.Tensor | Sequence[torch.Tensor], labels: Sequence[int] | torch.Tensor,
                   reference: SyntheticReference, rule: CoherenceRule = DEFAULT_RULE,
                   num_classes: int = 10) -> dict[str, object]:
    """Score generated clips (B, 3, T, H, W) in [0, 1] against their intended class labels.

    Returns strict_accuracy, colour/shape/motion_accuracy, class_accuracy (lenient: colour and motion),
    coherent_fraction (see `CoherenceRule`), empty_fraction (clips with no object in at least half of their
    frames), sfvd (against `reference`), path_spread (see `path_spread`), per_class_strict (class -> strict
    accuracy), per_class_coherent and the count of clips."""
    labels = [int(y) for y in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    clips = [_numpy_video(v) for v in videos]
    analyses = [analyse_clip(c) for c in clips]
    out: dict[str, object] = dict(attribute_scores(analyses, labels, num_classes))
    out["coherent_fraction"] = float(np.mean([a.coherent(rule) for a in analyses]))
    out["empty_fraction"] = float(np.mean([(a.counts == 0).mean() >= 0.5 for a in analyses]))
    out["sfvd"] = reference.sfvd(_as_features(clips, analyses)) if len(clips) >= 2 else float("nan")
    out["path_spread"] = path_spread(analyses, labels)
    pairs = list(zip(analyses, labels, strict=True))
    out["per_class_strict"] = {k: float(np.mean([strict_correct(a, y) for a, y in pairs if y == k]))
                               for k in sorted(set(labels))}
    out["per_class_coherent"] = {k: float(np.mean([a.coherent(rule) for a, y in pairs if y == k]))
                                 for k in sorted(set(labels))}
    out["count"] = len(clips)
    return out


def object_fidelity(real: torch.Tensor | np.ndarray, recon: torch.Tensor | np.ndarray,
                    real_analysis: ClipAnalysis | None = None,
                    recon_analysis: ClipAnalysis | None = None) -> tuple[float, float, float]:
    """(object IoU, object PSNR dB, background PSNR dB) of one reconstruction (3, T, H, W) in [0, 1].

    IoU: salient-object masks of the two clips over all frames (1 when neither shows an object). Object
    PSNR: over the real object's pixels (all channels); background PSNR: over the others; NaN when the
    region is empty. Errors below 1e-10 count as 100 dB."""
    x, y = _numpy_video(real), _numpy_video(recon)
    if x.shape != y.shape:
        raise ValueError(f"expected a real clip and its reconstruction of one shape, got {x.shape} and {y.shape}")
    a = real_analysis if real_analysis is not None else analyse_clip(x)
    b = recon_analysis if recon_analysis is not None else analyse_clip(y)
    union = (a.mask | b.mask).sum()
    iou = float((a.mask & b.mask).sum() / union) if union else 1.0
    err = ((x - y) ** 2).mean(axis=0)  # (T, H, W)

    def region_psnr(region: np.ndarray) -> float:
        if not region.any():
            return float("nan")
        return float(-10 * math.log10(max(float(err[region].mean()), 1e-10)))

    return iou, region_psnr(a.mask), region_psnr(~a.mask)


@dataclass
class ObjectScores:
    """Per-clip object metrics of a set of reconstructions, accumulated batch by batch."""

    iou: list[float]
    object_psnr: list[float]
    background_psnr: list[float]
    real_features: list[np.ndarray]
    recon_features: list[np.ndarray]
    real_analyses: list[ClipAnalysis]
    recon_analyses: list[ClipAnalysis]

    @classmethod
    def empty(cls) -> ObjectScores:
        return cls([], [], [], [], [], [], [])

    def add(self, real: torch.Tensor, recon: torch.Tensor) -> None:
        """Add a batch of real clips (B, 3, T, H, W) and their reconstructions."""
        for x, y in zip(real, recon, strict=True):
            x, y = _numpy_video(x), _numpy_video(y)
            a, b = analyse_clip(x), analyse_clip(y)
            iou, obj, bg = object_fidelity(x, y, a, b)
            self.iou.append(iou)
            self.object_psnr.append(obj)
            self.background_psnr.append(bg)
            self.real_features.append(clip_sfvd_features(x, a))
            self.recon_features.append(clip_sfvd_features(y, b))
            self.real_analyses.append(a)
            self.recon_analyses.append(b)

    def summary(self, labels: Sequence[int] | None = None, rule: CoherenceRule = DEFAULT_RULE,
                reference: SyntheticReference | None = None, num_classes: int = 10) -> dict[str, float]:
        """Means over clips: object IoU (and its median), object and background PSNR, the coherent fraction,
        sFVD of the reconstructions against `reference` (default: the real clips they reconstruct) and,
        with `labels`, the strict and per-attribute accuracies of the reconstructions."""
        out = {"object_iou": float(np.mean(self.iou)), "object_iou_median": float(np.median(self.iou)),
               "object_psnr": float(np.nanmean(self.object_psnr)),
               "background_psnr": float(np.nanmean(self.background_psnr)),
               "coherent_fraction": float(np.mean([a.coherent(rule) for a in self.recon_analyses]))}
        if len(self.iou) >= 2:
            ref = reference or SyntheticReference(np.stack(self.real_features))
            out["sfvd"] = ref.sfvd(np.stack(self.recon_features))
        if labels is not None:
            out.update(attribute_scores(self.recon_analyses, list(labels), num_classes))
        return out


def reconstruction_object_metrics(real: torch.Tensor, recon: torch.Tensor, labels: Sequence[int] | None = None,
                                  reference: SyntheticReference | None = None) -> dict[str, float]:
    """Object IoU, object / background PSNR, coherent fraction, sFVD and (with labels) strict accuracy of
    reconstructions (B, 3, T, H, W) of the real clips `real`; see `ObjectScores.summary`."""
    scores = ObjectScores.empty()
    scores.add(real, recon)
    return scores.summary(labels, reference=reference)


__all__ = ["SALIENT_CHROMA", "SFVD_FEATURES", "ObjectScores", "SyntheticReference", "analyse_clips",
           "attribute_scores", "clip_sfvd_features", "object_fidelity", "reconstruction_object_metrics",
           "sample_metrics"]
