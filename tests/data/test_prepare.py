"""CSV builders: UCF-101 (official split files), Kinetics-600 (annotation CSVs), class folders."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest

from larp.data.datasets import VideoCSVDataset
from larp.data.prepare import build_folder_csv, build_k600_csvs, build_ucf101_csvs, k600_filename


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["id", "path", "action", "label"]
        return list(reader)


def test_ucf101_split_csvs(ucf_tree, tmp_path):
    root, splits, ucf_name = ucf_tree.root, ucf_tree.splits, ucf_tree.name
    train_csv, test_csv = build_ucf101_csvs(root, splits, tmp_path / "out")
    assert (train_csv.name, test_csv.name) == ("ucf101_train1.csv", "ucf101_test1.csv")
    train, test = rows(train_csv), rows(test_csv)
    assert len(train) == 12 and len(test) == 12
    first = train[0]
    assert (
        first["id"] == "v_ApplyEyeMakeup_g08_c01"
        and first["action"] == "ApplyEyeMakeup"
        and first["label"] == "0"
    )
    assert Path(first["path"]) == (root / ucf_name("ApplyEyeMakeup", 8, 1)).resolve()
    by_action = {r["action"]: int(r["label"]) for r in train + test}
    assert by_action == {name: i for i, name in enumerate(ucf_tree.classes)}  # classInd order, 0-based
    assert {r["id"] for r in test} >= {"v_HandStandPushups_g01_c02", "v_YoYo_g02_c01"}
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "out").iterdir())
    # The written CSV feeds the dataset directly (real MPEG-4 AVI files).
    item = VideoCSVDataset(test_csv, num_frames=4, size=8)[11]
    assert item["label"] == 2 and item["video"].shape == (3, 4, 8, 8)


def test_ucf101_missing_videos(ucf_tree, tmp_path, caplog):
    root, splits, ucf_name = ucf_tree.root, ucf_tree.splits, ucf_tree.name
    (root / ucf_name("YoYo", 9, 2)).unlink()
    with pytest.raises(
        FileNotFoundError, match=r"trainlist01\.txt: 1 of 12 listed videos do not exist"
    ) as err:
        build_ucf101_csvs(root, splits, tmp_path / "out")
    assert "v_YoYo_g09_c02.avi" in str(err.value)
    caplog.set_level(logging.WARNING)
    train_csv, _ = build_ucf101_csvs(root, splits, tmp_path / "out", allow_missing=True)
    assert len(rows(train_csv)) == 11
    assert "UCF-101 train split 1: 1 listed videos missing" in caplog.text


def test_ucf101_inconsistent_split_files(ucf_tree, tmp_path):
    root, splits, ucf_name = ucf_tree.root, ucf_tree.splits, ucf_tree.name
    train_list = splits / "trainlist01.txt"
    original = train_list.read_text()
    train_list.write_text(original.replace(f"{ucf_name('YoYo', 8, 1)} 3", f"{ucf_name('YoYo', 8, 1)} 2"))
    with pytest.raises(
        ValueError, match=r"trainlist01\.txt, line 9: label 2 disagrees with classInd\.txt \(YoYo = 3\)"
    ):
        build_ucf101_csvs(root, splits, tmp_path / "out")
    train_list.write_text(original + "Surfing/v_Surfing_g08_c01.avi 4\n")
    with pytest.raises(ValueError, match="class folder 'Surfing' is not in classInd.txt"):
        build_ucf101_csvs(root, splits, tmp_path / "out")
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\nHandstandPushups\n")
    with pytest.raises(ValueError, match=r"classInd\.txt, line 2: expected '<index> <ClassName>'"):
        build_ucf101_csvs(root, splits, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*trainlist02\.txt"):
        (splits / "classInd.txt").write_text("".join(f"{i} {a}\n" for i, a in enumerate(ucf_tree.classes, 1)))
        build_ucf101_csvs(root, splits, tmp_path / "out", split=2)
    with pytest.raises(ValueError, match="splits 1, 2 and 3"):
        build_ucf101_csvs(root, splits, tmp_path / "out", split=4)


@pytest.fixture
def k600_tree(videos, tmp_path):
    """Clips in three layouts (<split>/<class>/, <split>/, flat) plus annotation CSVs; one clip missing."""
    template = videos.write("template.mp4", videos.flat_frames(6))
    root, ann = tmp_path / "k600", tmp_path / "annotations"
    ann.mkdir()
    placed = {
        ("abc", 10, 20): "train/playing guitar",
        ("def", 0, 10): "train/abseiling",
        ("ghi", 5, 15): "val",
        ("jkl", 30, 40): "",
    }
    for (yid, s, e), folder in placed.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(template, root / folder / k600_filename(yid, s, e))
    (ann / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "playing guitar,abc,10,20,train\nabseiling,def,0,10,train\nzumba,gone,3,13,train\n"
    )
    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,ghi,5,15,validate\nzumba,jkl,30,40,validate\n"
    )
    (ann / "test.csv").write_text("youtube_id,time_start,time_end,split\njkl,30,40,test\n")
    return root, ann


def test_k600_csvs(k600_tree, tmp_path, caplog):
    root, ann = k600_tree
    caplog.set_level(logging.INFO)
    out = build_k600_csvs(root, ann, tmp_path / "out")
    assert sorted(out) == ["test", "train", "validate"]
    train = rows(out["train"])
    # Labels: alphabetical over every annotation file (abseiling, playing guitar, zumba).
    assert [(r["id"], r["action"], r["label"]) for r in train] == [
        ("abc_000010_000020", "playing guitar", "1"),
        ("def_000000_000010", "abseiling", "0"),
    ]
    assert Path(train[0]["path"]) == (root / "train" / "playing guitar" / "abc_000010_000020.mp4").resolve()
    assert [(r["id"], r["label"]) for r in rows(out["validate"])] == [
        ("ghi_000005_000015", "0"),
        ("jkl_000030_000040", "2"),
    ]
    assert [(r["action"], r["label"]) for r in rows(out["test"])] == [("", "-1")]  # test file without labels
    missing = tmp_path / "out" / "k600_train_missing.txt"
    assert missing.read_text() == "gone_000003_000013.mp4\n"
    assert "Kinetics-600 train: 1 of 3 clips missing" in caplog.text
    assert not (tmp_path / "out" / "k600_validate_missing.txt").exists()
    assert VideoCSVDataset(out["train"], num_frames=2, size=8)[1]["label"] == 0


def test_k600_bad_annotations(k600_tree, tmp_path):
    root, ann = k600_tree
    (ann / "extra.csv").write_text("label,youtube_id\nx,y\n")
    with pytest.raises(ValueError, match=r"extra\.csv: missing column\(s\) time_start, time_end"):
        build_k600_csvs(root, ann, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no annotation CSV"):
        build_k600_csvs(root, tmp_path / "out", tmp_path / "out2")
    assert k600_filename("a-b_c", 7, 1234567) == "a-b_c_000007_1234567.mp4"


def test_folder_csv(videos, tmp_path):
    videos.write("root/b_class/x.mp4", videos.flat_frames(4))
    videos.write("root/a_class/y.mp4", videos.flat_frames(4))
    out = build_folder_csv(tmp_path / "root", tmp_path / "meta" / "folder.csv")
    assert [(r["id"], r["action"], r["label"]) for r in rows(out)] == [
        ("y", "a_class", "0"),
        ("x", "b_class", "1"),
    ]
    assert VideoCSVDataset(out, num_frames=2, size=8)[1]["label"] == 1


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_k600_infinite_time_is_a_one_line_error(k600_tree, tmp_path, value):
    root, ann = k600_tree
    (ann / "extra.csv").write_text(f"label,youtube_id,time_start,time_end,split\nx,y,{value},10,extra\n")
    with pytest.raises(ValueError, match=rf"extra\.csv, line 2: bad time value .*found time_start='{value}'"):
        build_k600_csvs(root, ann, tmp_path / "out")
