"""The synthetic dataset: class design, clip generator, written dataset and the analytic classifier."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from larp.data.datasets import VideoCSVDataset
from larp.data.synthetic import (
    MAX_CLASSES,
    MOTIONS,
    classify_clip,
    classify_clips,
    clip_features,
    solid_color_clips,
    synthetic_class,
    synthetic_classes,
    synthetic_clip,
    write_synthetic_dataset,
)
from larp.data.video_io import read_video, to_tensor


def test_classes_are_distinct_colour_motion_pairs():
    specs = synthetic_classes(MAX_CLASSES)
    assert len({(s.colour, s.motion) for s in specs}) == MAX_CLASSES
    assert len({s.name for s in specs}) == MAX_CLASSES
    assert synthetic_class(0).name == "red_square_horizontal"
    # In the default 10 classes, classes sharing a colour move at least 90 degrees apart.
    ten = synthetic_classes(10)
    for a in ten:
        for b in ten:
            if a.index < b.index and a.colour == b.colour:
                assert abs(MOTIONS[a.motion] - MOTIONS[b.motion]) >= 90
    with pytest.raises(ValueError, match=f"at most {MAX_CLASSES} classes"):
        synthetic_class(MAX_CLASSES)
    with pytest.raises(ValueError, match="classes must lie in"):
        synthetic_classes(0)


def test_clip_generator_is_deterministic_and_varied():
    a = synthetic_clip(3, np.random.default_rng(5), frames=8, size=32)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert np.array_equal(a, synthetic_clip(3, np.random.default_rng(5), frames=8, size=32))
    b = synthetic_clip(3, np.random.default_rng(6), frames=8, size=32)
    assert not np.array_equal(a[0], b[0])  # start, size and background differ per clip
    assert not np.array_equal(a[0], a[-1])  # the object moves


def test_object_stays_in_frame_and_moves_as_its_class_says():
    for k in range(10):
        for seed in range(3):
            clip = synthetic_clip(k, np.random.default_rng(seed), frames=16, size=64)
            sat = clip.max(-1).astype(int) - clip.min(-1)
            assert (sat > 120).reshape(16, -1).sum(1).min() > 60  # a whole object in every frame
            assert (sat[:, [0, -1], :] < 100).all() and (
                sat[:, :, [0, -1]] < 100
            ).all()  # never at the border
            _, angle, speed = clip_features(to_tensor(clip))
            assert abs(angle - MOTIONS[synthetic_class(k).motion]) < 5 and speed > 0.8


def decoded_synthetic(tmp_path, size: int, clips: int) -> tuple[list[torch.Tensor], list[int], dict]:
    paths = write_synthetic_dataset(tmp_path, classes=10, clips_per_class=clips, frames=16, size=size, seed=1)
    videos, labels = [], []
    for split in ("train", "val"):
        with paths[split].open() as f:
            for row in csv.DictReader(f):
                frames, _ = read_video(tmp_path / row["path"])
                videos.append(to_tensor(frames))
                labels.append(int(row["label"]))
    return videos, labels, paths


def blur(video: torch.Tensor) -> torch.Tensor:
    """A stand-in for a poor reconstruction: 4x area down/up-sampling, lower contrast, noise."""
    size = video.shape[-1]
    x = F.interpolate(video.transpose(0, 1), scale_factor=0.25, mode="area")
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).transpose(0, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return (0.15 + 0.7 * x + 0.03 * noise).clamp(0, 1)


def test_written_dataset_and_classifier_accuracy_on_decoded_h264(tmp_path):
    videos, labels, paths = decoded_synthetic(tmp_path, size=64, clips=4)
    assert len(videos) == 40 and videos[0].shape == (3, 16, 64, 64)
    train = VideoCSVDataset(paths["train"], num_frames=16, size=64)
    val = VideoCSVDataset(paths["val"], num_frames=16, size=64)
    assert (len(train), len(val)) == (30, 10)  # val_fraction 0.25 of 4 clips per class
    assert sorted(val.labels) == list(range(10))
    assert (
        train.rows[0].id == "red_square_horizontal_0000" and train.rows[0].action == "red_square_horizontal"
    )
    predictions = classify_clips(torch.stack(videos))
    assert (predictions == np.array(labels)).mean() >= 0.95
    blurred = np.mean([classify_clip(blur(v)) == y for v, y in zip(videos, labels, strict=True)])
    assert blurred >= 0.95
    flipped = np.mean([classify_clip(v.flip(-1)) == y for v, y in zip(videos, labels, strict=True)])
    assert flipped >= 0.95  # horizontal flips (the training augmentation) keep the class


def test_classifier_at_32_pixels(tmp_path):
    videos, labels, _ = decoded_synthetic(tmp_path, size=32, clips=2)
    assert (classify_clips(torch.stack(videos)) == np.array(labels)).mean() >= 0.95


def test_classifier_respects_num_classes_and_rejects_bad_input():
    clip = to_tensor(synthetic_clip(6, np.random.default_rng(0), 16, 48))  # red, second kind of motion
    assert classify_clip(clip, num_classes=10) == 6
    assert classify_clip(clip, num_classes=6) == 0  # only one red class exists among 6
    assert classify_clip(torch.full((3, 4, 16, 16), 0.5)) in range(10)  # no object: still a valid class
    with pytest.raises(ValueError, match=r"expected a float video \(3, T, H, W\)"):
        classify_clip(torch.zeros(4, 16, 16, 3))


def test_solid_color_clips():
    clips = solid_color_clips(5, frames=3, size=4, seed=2)
    assert clips.shape == (5, 3, 4, 4, 3) and clips.dtype == np.uint8
    assert all((c == c[0, 0, 0]).all() for c in clips)
    assert len({tuple(c[0, 0, 0]) for c in clips}) == 5
    assert np.array_equal(clips, solid_color_clips(5, frames=3, size=4, seed=2))
    assert not np.array_equal(clips, solid_color_clips(5, frames=3, size=4, seed=3))


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        write_synthetic_dataset(tmp_path, classes=2, clips_per_class=2, val_fraction=1.0)
    with pytest.raises(ValueError, match="clips_per_class"):
        write_synthetic_dataset(tmp_path, classes=2, clips_per_class=0)
