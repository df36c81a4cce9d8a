"""The training and validation videos of a recipe, and the clips of the data-dependent initialisations."""

from __future__ import annotations

import numpy as np
import torch

from larp.data.datasets import VideoClipDataset, VideoCSVDataset, read_video_csv
from larp.train.config import DataConfig


def training_videos(data: DataConfig, seed: int) -> VideoClipDataset:
    """Random training clips from one or several metadata CSVs (concatenated); flipped at random unless
    `data.flip` is off."""
    csvs = [data.train_csv] if isinstance(data.train_csv, str) else list(data.train_csv)
    rows = [row for csv in csvs for row in read_video_csv(csv)]
    dataset = VideoClipDataset(rows, data.num_frames, data.size, train=True, seed=seed,
                               max_bad_fraction=data.max_bad_fraction, cache_mb=data.cache_mb)
    if not data.flip:
        dataset.transform.flip_p = 0.0
    return dataset


def validation_videos(data: DataConfig, seed: int) -> VideoCSVDataset | None:
    """The fixed validation clips of `data.val_csv`, or None without one."""
    if not data.val_csv:
        return None
    return VideoCSVDataset(data.val_csv, data.num_frames, data.size, train=False, seed=seed, cache_mb=data.cache_mb)


def init_clips(dataset: VideoClipDataset, n: int, seed: int) -> torch.Tensor:
    """(n, 3, T, H, W) training clips for the data-dependent initialisations, drawn without replacement from
    the whole dataset: metadata CSVs are often sorted by class, and their first rows would be one class.
    An unreadable video is skipped and counted as in training (`VideoClipDataset.sample`)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return torch.stack([dataset.sample(int(i), rng)["video"] for i in picks])
