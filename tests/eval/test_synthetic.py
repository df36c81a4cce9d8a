"""Object-level metrics on synthetic clips: object fidelity, sample scores and sFVD."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from larp.data.synthetic import COLOURS, MovingShape, Scene, synthetic_scene
from larp.data.video_io import to_tensor
from larp.eval.synthetic import (
    SFVD_FEATURES,
    SyntheticReference,
    analyse_clips,
    clip_sfvd_features,
    object_fidelity,
    path_spread,
    reconstruction_object_metrics,
    sample_metrics,
)

GREY = np.full((64, 64, 3), 128.0, np.float32)


def path(x0: float, y0: float, dx: float, dy: float, frames: int = 16) -> np.ndarray:
    f = np.arange(frames) / (frames - 1)
    return np.stack([x0 + f * dx, y0 + f * dy], axis=1)


def clip(*objects: MovingShape, background: np.ndarray = GREY) -> torch.Tensor:
    return to_tensor(Scene(background, tuple(objects)).render())


def scenes(seed: int, n: int) -> list[Scene]:
    return [synthetic_scene(k % 10, np.random.default_rng([seed, k]), 16, 64) for k in range(n)]


def render(items: list[Scene]) -> torch.Tensor:
    return torch.stack([to_tensor(s.render()) for s in items])


@pytest.fixture(scope="module")
def real_set():
    """The reference (80 real clips), and a second real draw (40): its scenes and clips."""
    reference = SyntheticReference.from_videos(render(scenes(1, 80)))
    other = scenes(2, 40)
    return reference, other, render(other)


def test_object_fidelity_of_exact_and_shifted_reconstructions():
    square = MovingShape("square", COLOURS["blue"], 8.0, path(20, 30, 15, 0))
    real = clip(square)
    iou, obj, bg = object_fidelity(real, real)
    assert (iou, obj, bg) == (1.0, 100.0, 100.0)
    # Shifted 4 px to the right: 16x16 squares overlapping on 12 columns, IoU 12*16 / (20*16) = 0.6.
    shifted = clip(replace(square, centres=square.centres + [4, 0]))
    iou, obj, bg = object_fidelity(real, shifted)
    assert iou == pytest.approx(0.6, abs=0.03)
    assert obj < 16 and bg > 20  # the error sits on the object's pixels, not the background's
    # A uniform error of 0.1 on every pixel: 20 dB inside and outside the object.
    assert real.min() >= 0.1
    iou, obj, bg = object_fidelity(real, real - 0.1)
    assert iou == 1.0
    assert obj == pytest.approx(20.0, abs=0.3) and bg == pytest.approx(20.0, abs=0.01)
    empty = torch.full((3, 16, 64, 64), 0.5)
    assert object_fidelity(empty, empty)[0] == 1.0 and np.isnan(object_fidelity(empty, empty)[1])
    with pytest.raises(ValueError, match="of one shape"):
        object_fidelity(real, real[:, :8])


def test_blurred_and_faint_reconstructions_lose_object_fidelity(real_set):
    _, items, real = real_set
    real = real[:20]
    mild = torch.tensor(ndimage.gaussian_filter(real.numpy(), (0, 0, 0, 0.7, 0.7)))
    strong = torch.tensor(ndimage.gaussian_filter(real.numpy(), (0, 0, 0, 3.0, 3.0)))
    labels = [k % 10 for k in range(20)]
    good = reconstruction_object_metrics(real, mild, labels)
    bad = reconstruction_object_metrics(real, strong, labels)
    assert good["object_iou"] > 0.9 and good["strict_accuracy"] >= 0.95 and good["coherent_fraction"] == 1.0
    # The mask's edge sits near half coverage, so a blur moves it little: IoU drops some, object PSNR a lot.
    assert bad["object_iou"] < good["object_iou"] - 0.05 and bad["strict_accuracy"] < 0.7
    assert bad["object_psnr"] < good["object_psnr"] - 5 and bad["sfvd"] > 3 * good["sfvd"]
    # Background kept, object gone (painted over by the background): the headline PSNR would hide it.
    gone = render([Scene(s.background, ()) for s in items[:20]])  # one frame each, repeated below
    lost = reconstruction_object_metrics(real, gone.expand_as(real).contiguous(), labels)
    assert lost["object_iou"] == 0.0 and lost["strict_accuracy"] == 0.0 and lost["background_psnr"] > 40


def test_sample_metrics_on_real_and_broken_sets(real_set):
    reference, items, real = real_set
    labels = [k % 10 for k in range(len(items))]
    ok = sample_metrics(real, labels, reference)
    assert ok["strict_accuracy"] >= 0.95 and ok["coherent_fraction"] == 1.0 and ok["count"] == 40
    assert ok["colour_accuracy"] == 1.0 and ok["motion_accuracy"] == 1.0
    assert set(ok["per_class_strict"]) == set(range(10))
    wrong_labels = [(y + 1) % 10 for y in labels]
    assert sample_metrics(real, wrong_labels, reference)["strict_accuracy"] == 0.0
    assert ok["empty_fraction"] == 0.0
    # Backgrounds only (the object moved out of the frame) in every other clip; an object in 6 of 16 frames in
    # one more.
    def away(s: Scene, frames: int = 16) -> Scene:
        o = s.objects[0]
        return replace(s, objects=(replace(o, centres=np.where(np.arange(16)[:, None] < frames, -100.0, o.centres)),))

    blank = [away(s) if k % 2 else s for k, s in enumerate(items)]
    blank[2] = away(blank[2], frames=10)
    empty = sample_metrics(render(blank), labels, reference)
    assert empty["empty_fraction"] == pytest.approx(21 / 40)
    assert empty["coherent_fraction"] <= 0.5 and empty["strict_accuracy"] <= 0.5
    # Two objects per clip: incoherent, far from the real distribution.
    doubled = render([replace(s, objects=s.objects + (replace(s.objects[0], centres=64 - s.objects[0].centres),))
                      for s in items])
    two = sample_metrics(doubled, labels, reference)
    assert two["coherent_fraction"] < 0.3 and two["sfvd"] > 10 * ok["sfvd"]
    # Jumping objects: shifted by a third of the frame at frame 8.
    def jump(s: Scene) -> Scene:
        c = s.objects[0].centres.copy()
        c[8:] = 64 - c[8:]
        return replace(s, objects=(replace(s.objects[0], centres=c),))

    jumped = sample_metrics(render([jump(s) for s in items]), labels, reference)
    assert jumped["coherent_fraction"] < 0.2 and jumped["sfvd"] > 5 * ok["sfvd"]
    # Wrong shapes: colour and motion right, strict wrong; sFVD sees the shape descriptors move.
    swap = {"square": "diamond", "circle": "triangle", "triangle": "square", "diamond": "circle"}
    reshaped = render([replace(s, objects=(replace(s.objects[0], shape=swap[s.objects[0].shape]),)) for s in items])
    wrong = sample_metrics(reshaped, labels, reference)
    assert wrong["shape_accuracy"] == 0.0 and wrong["strict_accuracy"] == 0.0 and wrong["colour_accuracy"] == 1.0
    assert wrong["coherent_fraction"] == 1.0 and wrong["sfvd"] > 2 * ok["sfvd"]
    with pytest.raises(ValueError, match="one label per clip"):
        sample_metrics(real, labels[:-1], reference)


def test_path_spread_of_hand_made_paths():
    a = clip(MovingShape("square", COLOURS["red"], 6.0, path(10, 10, 30, 0)))
    b = clip(MovingShape("square", COLOURS["red"], 6.0, path(20, 30, 30, 0)))
    alone = clip(MovingShape("circle", COLOURS["blue"], 6.0, path(40, 40, 0, -20)))
    # (10, 10) -> (40, 10) against (20, 30) -> (50, 30): 10 and 20 px apart at both ends.
    expected = np.sqrt(2 * (10**2 + 20**2)) / 64
    assert path_spread(analyse_clips([a, b, alone]), [0, 0, 1]) == pytest.approx(expected, rel=0.02)
    assert path_spread(analyse_clips([a, a]), [0, 0]) == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(path_spread(analyse_clips([a, alone]), [0, 1]))  # no class with two clips
    assert np.isnan(path_spread(analyse_clips([a, torch.full((3, 16, 64, 64), 0.5)]), [0, 0]))  # no object
    with pytest.raises(ValueError, match="one label per clip"):
        path_spread(analyse_clips([a]), [0, 0])


def test_samples_that_all_take_one_path_keep_their_scores_but_lose_path_spread(real_set):
    reference, items, real = real_set
    labels = [k % 10 for k in range(len(items))]
    first = {}
    for s, y in zip(items, labels, strict=True):
        first.setdefault(y, s.objects[0].centres)
    same_path = render([replace(s, objects=(replace(s.objects[0], centres=first[y]),))
                        for s, y in zip(items, labels, strict=True)])
    ok, collapsed = sample_metrics(real, labels, reference), sample_metrics(same_path, labels, reference)
    assert ok["path_spread"] > 0.2  # real paths of one class start and end far apart
    assert collapsed["path_spread"] < 0.02
    assert collapsed["coherent_fraction"] == ok["coherent_fraction"] == 1.0
    assert collapsed["strict_accuracy"] >= ok["strict_accuracy"] - 0.05


def test_sfvd_features_of_a_hand_made_clip_and_the_reference():
    square = MovingShape("square", COLOURS["red"], 8.0, path(20.0, 32.0, 15.0, 0.0))
    f = dict(zip([s.name for s in SFVD_FEATURES], clip_sfvd_features(clip(square)), strict=True))
    assert f["objects_per_frame"] == 1.0 and f["single_fraction"] == 1.0
    assert f["area"] == pytest.approx(256 / 64 ** 2) and f["fill"] == pytest.approx(1.0)
    assert f["direction_x"] == pytest.approx(1.0) and f["direction_up"] == pytest.approx(0.0, abs=0.01)
    assert f["speed"] == pytest.approx(1 / 64, abs=0.001) and f["max_step"] == pytest.approx(1 / 64, abs=0.002)
    assert f["background_red"] == pytest.approx(128 / 255, abs=0.002) and f["background_contrast"] < 1e-3
    assert f["background_flicker"] == 0.0
    assert (f["object_red"], f["object_green"]) == (pytest.approx(225 / 255, abs=0.05), pytest.approx(35 / 255, abs=0.05))
    empty = dict(zip([s.name for s in SFVD_FEATURES], clip_sfvd_features(torch.full((3, 16, 64, 64), 0.5)),
                     strict=True))
    assert empty["objects_per_frame"] == 0.0 and empty["area"] == 0.0 and empty["object_red"] == 0.5
    # The Fréchet distance of a set to itself is 0, and the reference refuses malformed features.
    feats = np.random.default_rng(0).normal(size=(50, len(SFVD_FEATURES)))
    assert SyntheticReference(feats).sfvd(feats) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 real feature vectors"):
        SyntheticReference(feats[:1])
    with pytest.raises(ValueError, match="sFVD features"):
        SyntheticReference(feats).sfvd(feats[:, :3])


def test_sfvd_of_two_real_draws_is_small_and_of_the_same_clips_zero(real_set):
    reference, _, real = real_set
    floor = reference.sfvd(real)
    assert 0 < floor < 2.0  # finite-sample spread of two independent real sets
    assert reference.sfvd(reference.features) == pytest.approx(0.0, abs=1e-6)
