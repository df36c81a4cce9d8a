"""Clip datasets over video files: a metadata CSV (`id,path,action,label`) or a folder of class folders.

Each item is `{"video": float (3, T, size, size) in [0, 1], "label": int, "path": str}`.

Evaluation (train=False) is deterministic: item i always gives the same clip, its start drawn from a
generator seeded with (seed, i). Training draws starts and flips from a generator seeded with
(seed, torch.initial_seed()), which differs in every DataLoader worker and every epoch's workers, and
follows torch.manual_seed in the main process.

Training skips unreadable videos: each is logged once, counted, and replaced by another random item;
when the distinct unreadable items exceed `max_bad_fraction` of the dataset, it raises. Evaluation
raises on the first unreadable video, since skipping would change the evaluated set.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from larp.data.prepare import CSV_COLUMNS, VideoRow, scan_video_folder
from larp.data.transforms import ClipTransform, pad_frames
from larp.data.video_io import VideoReadError, clip_indices, probe_video, read_clip, read_video
from larp.utils.errors import LarpError

log = logging.getLogger(__name__)


class TooManyBadVideosError(LarpError):
    """More than the allowed fraction of a dataset's videos could not be read."""


def read_video_csv(
    csv_path: str | os.PathLike, root: str | os.PathLike | None = None, *, allow_missing: bool = False
) -> list[VideoRow]:
    """Rows of a metadata CSV with paths resolved (against `root`, else the CSV's folder) and checked.

    Listed videos that do not exist raise FileNotFoundError, unless `allow_missing` (`larp data check`
    reports them instead)."""
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        raise IsADirectoryError(f"{csv_path} is a folder; expected a metadata CSV file (id,path,action,label)")
    if not csv_path.is_file():
        raise FileNotFoundError(f"metadata CSV not found: {csv_path}")
    base = Path(root) if root is not None else csv_path.parent
    try:
        # utf-8-sig: spreadsheets often start their CSVs with a byte-order mark
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path} is not a text CSV (byte {exc.start} is not UTF-8); expected a metadata "
                         f"CSV with the columns {','.join(CSV_COLUMNS)}") from None
    if "\0" in text:
        raise ValueError(f"{csv_path} holds NUL bytes (a binary file?); expected a metadata CSV with the "
                         f"columns {','.join(CSV_COLUMNS)}")
    try:
        return _parse_video_csv(csv_path, text, base, allow_missing)
    except csv.Error as exc:  # e.g. a field over the csv module's size limit: not a metadata CSV
        raise ValueError(f"{csv_path} is not a readable CSV ({exc}); expected the columns "
                         f"{','.join(CSV_COLUMNS)}") from None


def _parse_video_csv(csv_path: Path, text: str, base: Path, allow_missing: bool = False) -> list[VideoRow]:
    rows: list[VideoRow] = []
    missing: list[str] = []
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        absent = [c for c in CSV_COLUMNS if c not in columns]
        if absent:
            raise ValueError(
                f"{csv_path}: missing column(s) {', '.join(absent)}; expected {','.join(CSV_COLUMNS)}, "
                f"found {','.join(columns) or 'an empty header'}"
            )
        for line, raw in enumerate(reader, 2):
            r = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            try:
                label = int(r["label"])
            except ValueError:
                raise ValueError(
                    f"{csv_path}, line {line}: label must be an integer, found {r['label']!r}"
                ) from None
            if not r["path"]:
                raise ValueError(f"{csv_path}, line {line}: empty path")
            path = Path(r["path"])
            if not path.is_absolute():
                path = base / path
            if not allow_missing and not path.is_file():
                missing.append(f"line {line}: {path}")
            rows.append(VideoRow(id=r["id"], path=str(path), action=r["action"], label=label))
    if missing:
        shown = "\n  ".join(missing[:5]) + (
            f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise FileNotFoundError(
            f"{csv_path}: {len(missing)} of {len(rows)} videos do not exist (relative paths are resolved "
            f"against {base}):\n  {shown}"
        )
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    return rows


class VideoClipDataset(Dataset):
    """Clips from a list of `VideoRow`s; the shared logic of the CSV and folder datasets."""

    def __init__(
        self,
        rows: list[VideoRow],
        num_frames: int = 16,
        size: int = 128,
        train: bool = False,
        seed: int = 0,
        stride: int = 1,
        max_bad_fraction: float = 0.05,
        random_crop: bool = False,
        *,
        cache_mb: float = 0.0,
    ) -> None:
        if not rows:
            raise ValueError("a video dataset needs at least one video")
        if not 0.0 <= max_bad_fraction < 1.0:
            raise ValueError(f"max_bad_fraction must lie in [0, 1), got {max_bad_fraction}")
        self.rows = rows
        self.num_frames = num_frames
        self.size = size
        self.train = train
        self.seed = seed
        self.stride = stride
        self.max_bad_fraction = max_bad_fraction
        self.transform = ClipTransform(size, train, random_crop=random_crop)
        # Decoded videos kept in memory (per process) up to `cache_mb` MiB: a small dataset is decoded once
        # instead of at every visit. Clips come out identical to uncached reads (same draws from `rng`).
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[str, tuple[np.ndarray, int]] = {}
        self._cached_bytes = 0
        self._cache_full = False  # once a video did not fit, the others are read window by window again
        self.bad: dict[int, str] = {}  # index -> cause, per process (each worker has its own copy)
        self.num_skipped = 0
        self._rng: np.random.Generator | None = None
        self._rng_key: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.rows]

    def _train_rng(self) -> np.random.Generator:
        key = torch.initial_seed()
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, key])
            self._rng_key = key
        return self._rng

    def _read(self, path: str, rng: np.random.Generator) -> np.ndarray:
        entry = self._cache.get(path)
        if entry is None:
            if self.cache_bytes <= 0 or self._cache_full:
                # Decoding a whole uncached video at every visit would cost more than reading its window.
                return read_clip(path, self.num_frames, stride=self.stride, rng=rng)
            frames, _ = read_video(path)
            entry = (frames, probe_video(path).num_frames)  # the declared count, as read_clip draws with it
            if self._cached_bytes + frames.nbytes <= self.cache_bytes:
                self._cache[path] = entry
                self._cached_bytes += frames.nbytes
            else:
                self._cache_full = True
        frames, declared = entry
        idx = clip_indices(declared, self.num_frames, None, self.stride, "consecutive", rng)
        # A file a frame or two short of its header repeats its last frame, as read_clip does.
        return pad_frames(frames[np.minimum(idx, len(frames) - 1)], self.num_frames)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, object]:
        row = self.rows[index]
        frames = self._read(row.path, rng)
        return {"video": self.transform(frames, rng), "label": row.label, "path": row.path}

    def __getitem__(self, index: int) -> dict[str, object]:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} videos")
        if not self.train:
            return self.load(index, np.random.default_rng([self.seed, index]))
        return self.sample(index, self._train_rng())

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, object]:
        """A training item drawn with `rng`; an unreadable video is logged, counted and replaced by a random
        other one (the trainer calls this with a seed per data position, for exact resumption)."""
        for _ in range(len(self.rows)):
            if index not in self.bad:
                try:
                    return self.load(index, rng)
                except VideoReadError as e:
                    self._mark_bad(index, e)
            self.num_skipped += 1
            index = int(rng.integers(len(self.rows)))
        raise TooManyBadVideosError(f"no readable video found after {len(self.rows)} tries")

    def _mark_bad(self, index: int, error: VideoReadError) -> None:
        self.bad[index] = error.cause
        log.warning("skipping unreadable video (item %d): %s", index, error)
        allowed = self.max_bad_fraction * len(self.rows)
        if len(self.bad) > allowed:
            examples = "\n  ".join(f"{self.rows[i].path}: {c}" for i, c in list(self.bad.items())[:5])
            raise TooManyBadVideosError(
                f"{len(self.bad)} of {len(self.rows)} videos are unreadable, more than max_bad_fraction="
                f"{self.max_bad_fraction} allows ({allowed:g}):\n  {examples}"
            )


class VideoCSVDataset(VideoClipDataset):
    """Clips of the videos listed in a metadata CSV `id,path,action,label`."""

    def __init__(
        self,
        csv_path: str | os.PathLike,
        num_frames: int = 16,
        size: int = 128,
        train: bool = False,
        seed: int = 0,
        stride: int = 1,
        max_bad_fraction: float = 0.05,
        root: str | os.PathLike | None = None,
        random_crop: bool = False,
        *,
        cache_mb: float = 0.0,
    ) -> None:
        self.csv_path = Path(csv_path)
        super().__init__(
            read_video_csv(csv_path, root),
            num_frames,
            size,
            train,
            seed,
            stride,
            max_bad_fraction,
            random_crop,
            cache_mb=cache_mb,
        )


class VideoFolderDataset(VideoClipDataset):
    """Clips of the videos under `root/<class>/`; labels are the sorted class-folder indices."""

    def __init__(
        self,
        root: str | os.PathLike,
        num_frames: int = 16,
        size: int = 128,
        train: bool = False,
        seed: int = 0,
        stride: int = 1,
        max_bad_fraction: float = 0.05,
        random_crop: bool = False,
        *,
        cache_mb: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.classes, rows = scan_video_folder(root)
        super().__init__(rows, num_frames, size, train, seed, stride, max_bad_fraction, random_crop,
                         cache_mb=cache_mb)
