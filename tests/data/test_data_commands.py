"""`larp synth-data` and `larp prepare-data ucf101|k600|folder` through the real command line."""

from __future__ import annotations

import csv

import pytest

from larp.cli import main


def count_rows(path) -> int:
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def test_synth_data_command(tmp_path, capsys):
    out = tmp_path / "synth"
    args = [
        "synth-data",
        str(out),
        "--classes",
        "3",
        "--clips-per-class",
        "4",
        "--frames",
        "8",
        "--size",
        "32",
    ]
    assert main([*args, "--seed", "2", "--val-fraction", "0.5", "--fps", "4"]) == 0
    assert (count_rows(out / "train.csv"), count_rows(out / "val.csv")) == (6, 6)
    assert len(list((out / "videos").rglob("*.mp4"))) == 12
    assert f"wrote train: {out / 'train.csv'}" in capsys.readouterr().out
    assert main(args) == 1  # not empty any more
    assert capsys.readouterr().err == (
        f"larp synth-data: error: {out} is not empty; pass --overwrite to write the dataset into it anyway\n")
    assert main(["synth-data", "-o", str(out), *args[2:], "--overwrite", "--clips_per_class", "2"]) == 0
    assert (count_rows(out / "train.csv"), count_rows(out / "val.csv")) == (6, 0)  # round(2 * 0.25) = 0


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--classes", "0", "expected an integer >= 1, got '0'"),
    ("--size", "-64", "expected an integer >= 1, got '-64'"),
    ("--fps", "nan", "expected a finite number, got 'nan'"),
    ("--val-fraction", "1", "expected a number in [0, 1), got '1'"),
])
def test_synth_data_checks_numbers(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exc:
        main(["synth-data", str(tmp_path / "s"), option, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_synth_data_needs_one_output(tmp_path, capsys):
    assert main(["synth-data"]) == 1
    assert "no output folder" in capsys.readouterr().err
    assert main(["synth-data", str(tmp_path / "a"), "-o", str(tmp_path / "b")]) == 1
    assert "two output folders" in capsys.readouterr().err


def test_prepare_data_ucf101_command(ucf_tree, tmp_path, capsys):
    assert (
        main(["prepare-data", "ucf101", str(ucf_tree.root), str(ucf_tree.splits), str(tmp_path / "o")]) == 0
    )
    assert count_rows(tmp_path / "o" / "ucf101_train1.csv") == 12
    assert "ucf101_test1.csv" in capsys.readouterr().out
    (ucf_tree.root / ucf_tree.name("YoYo", 1, 1)).unlink()
    cmd = ["prepare-data", "ucf101", str(ucf_tree.root), str(ucf_tree.splits), str(tmp_path / "o")]
    assert main(cmd) == 1  # the CSVs exist
    err = capsys.readouterr().err
    assert "ucf101_train1.csv" in err and "pass --overwrite" in err
    assert main([*cmd, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("larp prepare-data ucf101: error: ") and "1 of 12 listed videos do not exist" in err
    assert "\n" not in err.rstrip("\n")
    assert main([*cmd, "--allow-missing", "--overwrite"]) == 0
    assert count_rows(tmp_path / "o" / "ucf101_test1.csv") == 11


def test_prepare_data_k600_and_folder_commands(videos, tmp_path, capsys):
    videos.write("k/train/jump/aaa_000001_000011.mp4", videos.flat_frames(4))
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\njump,aaa,1,11,train\nrun,bbb,2,12,train\n"
    )
    assert (
        main(["prepare-data", "k600", str(tmp_path / "k"), str(tmp_path / "ann"), str(tmp_path / "o")]) == 0
    )
    assert count_rows(tmp_path / "o" / "k600_train.csv") == 1
    assert (tmp_path / "o" / "k600_train_missing.txt").read_text() == "bbb_000002_000012.mp4\n"
    assert main(["prepare-data", "folder", str(tmp_path / "k" / "train"), str(tmp_path / "f.csv")]) == 0
    assert count_rows(tmp_path / "f.csv") == 1
    assert f"wrote {tmp_path / 'f.csv'}" in capsys.readouterr().out


def test_prepare_data_needs_a_dataset_kind(capsys):
    with pytest.raises(SystemExit):
        main(["prepare-data"])
    assert "ucf101" in capsys.readouterr().err
