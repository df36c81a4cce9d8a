"""Resize (antialiased), crops, flip, padding and the composed ClipTransform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from larp.data.transforms import (
    ClipTransform,
    center_crop,
    pad_frames,
    random_crop,
    random_hflip,
    resize_short_side,
    short_side_size,
)


def test_short_side_size():
    assert short_side_size(240, 320, 128) == (128, 170)  # 170.67 truncated, as torchvision's Resize(128)
    assert short_side_size(320, 240, 128) == (170, 128)
    assert short_side_size(50, 50, 20) == (20, 20)
    with pytest.raises(ValueError, match="size must be positive"):
        short_side_size(10, 10, 0)


def test_resize_keeps_dtype_and_antialiases():
    # One-pixel white lines every 4 columns shrunk 4x: antialiasing gives their mean (a quarter of white)
    # everywhere; plain bilinear samples between two columns and lands on half of the line instead.
    lines = np.zeros((64, 96), np.uint8)
    lines[:, 1::4] = 255
    video = torch.from_numpy(lines).expand(3, 2, 64, 96).contiguous()
    smooth = resize_short_side(video, 16)
    assert smooth.dtype == torch.uint8 and smooth.shape == (3, 2, 16, 24)
    assert (smooth[..., 1:-1].float() - 63.75).abs().max() < 3
    aliased = resize_short_side(video.float() / 255, 16, antialias=False)
    assert aliased.dtype == torch.float32 and (aliased - 0.5).abs().max() < 1e-6
    assert resize_short_side(video, 64) is video  # already the right size: untouched


def test_resize_works_on_batches_and_rejects_bad_layout():
    batch = torch.rand(2, 3, 4, 30, 20)
    assert resize_short_side(batch, 10).shape == (2, 3, 4, 15, 10)
    with pytest.raises(ValueError, match=r"expected a video \(3, T, H, W\)"):
        resize_short_side(torch.rand(4, 30, 20, 3), 10)


def test_center_crop_is_the_central_window():
    video = torch.arange(3 * 2 * 6 * 8).reshape(3, 2, 6, 8)
    crop = center_crop(video, 4)
    assert torch.equal(crop, video[..., 1:5, 2:6])
    assert center_crop(video, (2, 8)).shape == (3, 2, 2, 8)
    with pytest.raises(ValueError, match="cannot crop 7x7 from frames of 6x8"):
        center_crop(video, 7)


def test_random_crop_uses_rng_and_reaches_every_offset():
    video = torch.arange(5 * 7).reshape(1, 1, 5, 7).expand(3, 2, 5, 7)
    offsets = set()
    for seed in range(60):
        crop = random_crop(video, 3, np.random.default_rng(seed))
        again = random_crop(video, 3, np.random.default_rng(seed))
        assert torch.equal(crop, again)
        assert torch.equal(crop[:, 0], crop[:, 1])  # same window in every frame
        top, left = divmod(int(crop[0, 0, 0, 0]), 7)
        assert torch.equal(crop, video[..., top : top + 3, left : left + 3])
        offsets.add((top, left))
    assert offsets == {(t, left) for t in range(3) for left in range(5)}


def test_random_hflip():
    video = torch.arange(4.0).reshape(1, 1, 1, 4).expand(3, 2, 2, 4)
    assert torch.equal(random_hflip(video, np.random.default_rng(0), p=1.0), video.flip(-1))
    assert torch.equal(random_hflip(video, np.random.default_rng(0), p=0.0), video)
    flips = [bool(random_hflip(video, np.random.default_rng(s))[0, 0, 0, 0] == 3) for s in range(40)]
    assert 5 < sum(flips) < 35


def test_pad_frames_numpy_and_tensor():
    frames = np.arange(3)[:, None, None, None] * np.ones((3, 2, 2, 3), np.uint8)
    padded = pad_frames(frames, 5)
    assert padded[:, 0, 0, 0].tolist() == [0, 1, 2, 2, 2]
    assert pad_frames(frames, 2) is frames  # long enough: unchanged
    video = torch.arange(3.0).reshape(1, 3, 1, 1).expand(2, 3, 3, 2, 2)  # (B, 3, T, H, W)
    out = pad_frames(video, 6)
    assert out.shape == (2, 3, 6, 2, 2) and out[0, 0, :, 0, 0].tolist() == [0, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="zero frames"):
        pad_frames(np.zeros((0, 2, 2, 3), np.uint8), 4)


def test_clip_transform_eval_is_deterministic_resize_then_centre_crop():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 24, 40, 3), dtype=np.uint8)
    out = ClipTransform(12, train=False)(frames)
    assert out.shape == (3, 4, 12, 12) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    # The same as the float path (resize of the float video, centre crop), up to uint8 rounding.
    reference = center_crop(
        resize_short_side(torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255, 12), 12
    )
    assert (out - reference).abs().max() < 2.5 / 255
    assert torch.equal(out, ClipTransform(12, train=False)(torch.from_numpy(frames)))
    assert torch.allclose(ClipTransform(12, train=False)(reference), reference)


def test_clip_transform_train_flips_and_random_crops():
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[:, :, :8] = 255  # left half white
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        ClipTransform(16, train=True)(frames)
    lefts = {
        float(ClipTransform(16, train=True)(frames, np.random.default_rng(s))[0, 0, 0, 0]) for s in range(20)
    }
    assert lefts == {0.0, 1.0}  # some clips flipped, some not
    wide = np.random.default_rng(0).integers(0, 256, (2, 16, 32, 3), dtype=np.uint8)
    crops = {
        ClipTransform(16, train=True, random_crop=True, flip_p=0.0)(wide, np.random.default_rng(s))[
            0, 0, 0, 0
        ].item()
        for s in range(20)
    }
    assert len(crops) > 3  # the window moves along the longer side
    centre = ClipTransform(16, train=False)(wide)
    assert torch.equal(centre, torch.from_numpy(wide[..., 8:24, :]).permute(3, 0, 1, 2).float() / 255)
