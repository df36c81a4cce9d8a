"""CSV and folder datasets: items, determinism, randomness across workers, bad rows and bad videos."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from larp.data.datasets import (
    TooManyBadVideosError,
    VideoCSVDataset,
    VideoFolderDataset,
    read_video_csv,
)
from larp.data.video_io import VideoReadError


def write_csv(path: Path, lines: list[str], header: str = "id,path,action,label") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


@pytest.fixture
def flat_csv(videos, tmp_path):
    """A CSV of 4 flat-grey videos (40 frames) with relative paths, in a sub-folder of the CSV's folder."""
    for i in range(4):
        videos.write(f"clips/v{i}.mp4", videos.flat_frames(40))
    lines = [f"v{i},clips/v{i}.mp4,class{i % 2},{i % 2}" for i in range(4)]
    return write_csv(tmp_path / "meta.csv", lines)


def test_csv_items_and_relative_paths(flat_csv, tmp_path, videos):
    ds = VideoCSVDataset(flat_csv, num_frames=6, size=16)
    assert len(ds) == 4 and ds.labels == [0, 1, 0, 1]
    item = ds[3]
    assert set(item) == {"video", "label", "path"}
    assert item["video"].shape == (3, 6, 16, 16) and item["video"].dtype == torch.float32
    assert item["label"] == 1 and item["path"] == str(tmp_path / "clips" / "v3.mp4")
    ids = videos.flat_ids(item["video"])
    assert ids == list(range(ids[0], ids[0] + 6))
    # The same CSV from another folder, paths resolved against an explicit root.
    moved = write_csv(tmp_path / "elsewhere.csv", ["a,v1.mp4,x,5"])
    assert VideoCSVDataset(moved, num_frames=2, size=8, root=tmp_path / "clips")[0]["label"] == 5


def test_eval_mode_is_deterministic_per_seed_and_index(flat_csv, videos):
    a = VideoCSVDataset(flat_csv, num_frames=4, size=8, seed=7)
    b = VideoCSVDataset(flat_csv, num_frames=4, size=8, seed=7)
    starts = []
    for i in range(4):
        assert torch.equal(a[i]["video"], a[i]["video"])
        assert torch.equal(a[i]["video"], b[i]["video"])
        starts.append(videos.flat_ids(a[i]["video"])[0])
    other = [
        videos.flat_ids(VideoCSVDataset(flat_csv, num_frames=4, size=8, seed=s)[0]["video"])[0]
        for s in range(8)
    ]
    assert len(set(other)) > 1  # the seed chooses the start
    assert len(set(starts)) > 1  # every item draws its own start


def test_train_mode_random_but_reproducible_under_torch_seed(flat_csv, videos):
    def draw() -> list[int]:
        ds = VideoCSVDataset(flat_csv, num_frames=4, size=8, train=True)
        return [videos.flat_ids(ds[0]["video"])[0] for _ in range(12)]

    torch.manual_seed(3)
    first = draw()
    torch.manual_seed(3)
    assert draw() == first
    assert len(set(first)) > 3


def test_train_mode_differs_between_dataloader_workers(videos, tmp_path):
    videos.write("long.mp4", videos.flat_frames(40))
    csv_path = write_csv(tmp_path / "same.csv", ["a,long.mp4,x,0"] * 8)
    ds = VideoCSVDataset(csv_path, num_frames=2, size=8, train=True)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    starts = [videos.flat_ids(batch["video"][0])[0] for batch in loader]
    # Worker 0 serves items 0, 2, 4, 6 and worker 1 items 1, 3, 5, 7: equal streams would pair up.
    assert starts[0::2] != starts[1::2]


def test_stride_and_padding_of_short_videos(videos, tmp_path):
    videos.write("short.mp4", videos.flat_frames(3))
    videos.write("long.mp4", videos.flat_frames(30))
    csv_path = write_csv(tmp_path / "m.csv", ["s,short.mp4,x,0", "l,long.mp4,x,0"])
    short = VideoCSVDataset(csv_path, num_frames=5, size=8)[0]["video"]
    assert videos.flat_ids(short) == [0, 1, 2, 2, 2]
    strided = videos.flat_ids(VideoCSVDataset(csv_path, num_frames=4, size=8, stride=3)[1]["video"])
    assert strided == list(range(strided[0], strided[0] + 12, 3))


def test_decoded_cache_gives_the_same_clips_and_respects_its_budget(videos, tmp_path):
    videos.write("a.mp4", videos.flat_frames(40))
    videos.write("b.mp4", videos.flat_frames(3))
    csv_path = write_csv(tmp_path / "m.csv", ["a,a.mp4,x,0", "b,b.mp4,x,1"])
    plain = VideoCSVDataset(csv_path, num_frames=5, size=8, train=True, seed=4)
    cached = VideoCSVDataset(csv_path, num_frames=5, size=8, train=True, seed=4, cache_mb=1)
    for ds in (plain, cached):
        rng = np.random.default_rng(9)
        ds.drawn = [ds.sample(i % 2, rng)["video"] for i in range(10)]
    assert all(torch.equal(x, y) for x, y in zip(plain.drawn, cached.drawn, strict=True))
    assert len({videos.flat_ids(v)[0] for v in cached.drawn[0::2]}) > 1  # random starts, not one window
    assert sorted(cached._cache) == sorted(r.path for r in cached.rows)
    # A budget smaller than one decoded video caches nothing and still reads every clip.
    tiny = VideoCSVDataset(csv_path, num_frames=5, size=8, seed=4, cache_mb=1e-4)
    assert torch.equal(tiny[0]["video"], plain.load(0, np.random.default_rng([4, 0]))["video"])
    assert tiny._cache == {} and tiny._cached_bytes == 0 and tiny._cache_full
    assert torch.equal(tiny[1]["video"], plain.load(1, np.random.default_rng([4, 1]))["video"])


# -------------------------------------------------------------------------------------- bad CSV files


def test_csv_missing_columns_names_file_and_columns(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["a,b.mp4"], header="id,path")
    with pytest.raises(
        ValueError, match=r"bad\.csv: missing column\(s\) action, label; expected id,path,action,label"
    ):
        VideoCSVDataset(path)


def test_csv_unknown_paths_name_the_rows(videos, tmp_path):
    videos.write("ok.mp4", videos.flat_frames(4))
    path = write_csv(tmp_path / "m.csv", ["a,ok.mp4,x,0", "b,gone.mp4,x,0", "c,/nowhere/c.mp4,x,1"])
    with pytest.raises(FileNotFoundError, match=r"m\.csv: 2 of 3 videos do not exist") as err:
        VideoCSVDataset(path)
    assert (
        "line 3: " in str(err.value)
        and "gone.mp4" in str(err.value)
        and "line 4: /nowhere/c.mp4" in str(err.value)
    )


def test_csv_binary_bom_and_folder(videos, tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"id,path\n\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match=r"bin\.csv is not a text CSV \(byte 8 is not UTF-8\); expected a "
                                         r"metadata CSV with the columns id,path,action,label"):
        read_video_csv(tmp_path / "bin.csv")
    (tmp_path / "nul.csv").write_bytes(b"id,path,action,label\na,\x00,x,0\n")
    with pytest.raises(ValueError, match=r"nul\.csv holds NUL bytes"):
        read_video_csv(tmp_path / "nul.csv")
    with pytest.raises(IsADirectoryError, match="is a folder; expected a metadata CSV file"):
        read_video_csv(tmp_path)
    videos.write("v.mp4", videos.flat_frames(4))
    (tmp_path / "bom.csv").write_bytes("\ufeffid,path,action,label\nv,v.mp4,x,3\n".encode())
    assert [(r.id, r.label) for r in read_video_csv(tmp_path / "bom.csv")] == [("v", 3)]


def test_csv_bad_label_empty_and_absent(videos, tmp_path):
    videos.write("ok.mp4", videos.flat_frames(4))
    with pytest.raises(ValueError, match=r"line 2: label must be an integer, found 'walk'"):
        read_video_csv(write_csv(tmp_path / "l.csv", ["a,ok.mp4,x,walk"]))
    with pytest.raises(ValueError, match=r"e\.csv: no rows"):
        read_video_csv(write_csv(tmp_path / "e.csv", []))
    with pytest.raises(FileNotFoundError, match="metadata CSV not found"):
        VideoCSVDataset(tmp_path / "none.csv")


# ------------------------------------------------------------------------------------ unreadable videos


def corrupt_dataset(videos, tmp_path, n_good: int, n_bad: int, **kwargs) -> VideoCSVDataset:
    lines = []
    for i in range(n_good):
        videos.write(f"g{i}.mp4", videos.flat_frames(8, 8, 8))
        lines.append(f"g{i},g{i}.mp4,x,0")
    for i in range(n_bad):
        (tmp_path / f"bad{i}.mp4").write_bytes(b"\x00garbage" * 50)
        lines.append(f"b{i},bad{i}.mp4,x,1")
    return VideoCSVDataset(write_csv(tmp_path / "c.csv", lines), num_frames=2, size=8, **kwargs)


def test_training_skips_unreadable_item_logs_once_and_counts(videos, tmp_path, caplog):
    ds = corrupt_dataset(videos, tmp_path, n_good=19, n_bad=1, train=True)  # 1 bad of 20 = 0.05 allowed
    caplog.set_level(logging.WARNING, logger="larp.data.datasets")
    first = ds[19]
    assert first["label"] == 0 and "g" in Path(first["path"]).name
    second = ds[19]
    assert second["label"] == 0
    assert ds.num_skipped == 2 and list(ds.bad) == [19]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "bad0.mp4" in messages[0] and "truncated, corrupt" in messages[0]


def test_too_many_unreadable_items_raise(videos, tmp_path):
    ds = corrupt_dataset(videos, tmp_path, n_good=18, n_bad=2, train=True)
    ds[18]
    with pytest.raises(
        TooManyBadVideosError, match=r"2 of 20 videos are unreadable.*max_bad_fraction=0\.05"
    ) as err:
        ds[19]
    assert "bad0.mp4" in str(err.value) and "bad1.mp4" in str(err.value)
    tolerant = corrupt_dataset(videos, tmp_path, n_good=18, n_bad=2, train=True, max_bad_fraction=0.2)
    assert tolerant[18]["label"] == 0 and tolerant[19]["label"] == 0


def test_evaluation_raises_on_unreadable_item(videos, tmp_path):
    ds = corrupt_dataset(videos, tmp_path, n_good=1, n_bad=1)
    with pytest.raises(VideoReadError, match=r"bad0\.mp4"):
        ds[1]
    with pytest.raises(IndexError):
        ds[2]


# -------------------------------------------------------------------------------------- folder dataset


def test_folder_dataset_labels_are_sorted_folder_indices(videos, tmp_path):
    root = tmp_path / "folders"
    videos.write("folders/walk/a.mp4", videos.flat_frames(6))
    videos.write("folders/jump/b.avi", videos.flat_frames(6), codec="mpeg4")
    videos.write("folders/jump/more/c.mp4", videos.flat_frames(6))
    (root / "jump" / "notes.txt").write_text("not a video")
    ds = VideoFolderDataset(root, num_frames=3, size=8)
    assert ds.classes == ["jump", "walk"]
    assert [(Path(r.path).name, r.label) for r in ds.rows] == [("b.avi", 0), ("c.mp4", 0), ("a.mp4", 1)]
    item = ds[2]
    assert item["label"] == 1 and item["video"].shape == (3, 3, 8, 8)
    # The decoded-video cache of the CSV dataset works here too: the same clip, decoded once.
    cached = VideoFolderDataset(root, num_frames=3, size=8, cache_mb=1)
    first = cached[2]["video"]
    assert list(cached._cache) == [ds.rows[2].path]
    assert torch.equal(first, item["video"]) and torch.equal(cached[2]["video"], item["video"])


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        VideoFolderDataset(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no class sub-folders"):
        VideoFolderDataset(tmp_path / "empty")
    (tmp_path / "novideo" / "a").mkdir(parents=True)
    (tmp_path / "novideo" / "a" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no video files"):
        VideoFolderDataset(tmp_path / "novideo")


def test_random_crop_option_and_validation(flat_csv):
    with pytest.raises(ValueError, match=r"max_bad_fraction must lie in \[0, 1\)"):
        VideoCSVDataset(flat_csv, max_bad_fraction=1.5)
    ds = VideoCSVDataset(flat_csv, num_frames=2, size=8, train=True, random_crop=True)
    assert ds.transform.random_crop and ds[0]["video"].shape == (3, 2, 8, 8)
    assert np.isclose(float(ds[0]["video"].std()), 0.0, atol=0.02)  # flat frames stay flat
