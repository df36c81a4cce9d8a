"""`larp data check`: what the listed files are, what repeats or leaks across lists, the cache, the manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from larp.cli import main
from larp.data import check, check_report
from larp.data.datasets import read_video_csv
from larp.data.manifest import verify_manifest
from larp.data.prepare import VideoRow, write_csv
from larp.data.video_write import write_mp4
from larp.utils.files import sha256_of
from tests.data.conftest import VideoFactory

FRAMES, SIZE, FPS = 12, 32, 8


def clip(seed: int) -> np.ndarray:
    """uint8 (FRAMES, SIZE, SIZE, 3): a random smooth texture moving right, different for every seed."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    texture = np.asarray(base.resize((2 * SIZE, 2 * SIZE), Image.Resampling.BICUBIC))
    return np.stack([np.roll(texture, 2 * t, axis=1)[:SIZE, :SIZE] for t in range(FRAMES)])


class DataSet:
    """Videos and CSVs under one folder; labels are the sorted class names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.actions = ("Jump", "Run")

    def video(self, name: str, seed: int, crf: int = 18) -> Path:
        return write_mp4(self.root / "videos" / name, clip(seed), fps=FPS, crf=crf, threads=1)

    def csv(self, name: str, entries: list[tuple[str, str]]) -> Path:
        """A CSV of (file name under videos/, class) entries."""
        rows = [VideoRow(Path(f).stem, str(self.root / "videos" / f), a, self.actions.index(a)) for f, a in entries]
        return write_csv(self.root / f"{name}.csv", rows)


@pytest.fixture
def data(tmp_path: Path) -> DataSet:
    return DataSet(tmp_path / "data")


def clean_set(data: DataSet) -> tuple[Path, Path]:
    """train: 2 clips of each class, val: 1 of each; every clip different."""
    for i, name in enumerate(("j1", "j2", "r1", "r2", "j3", "r3")):
        data.video(f"{name}.mp4", seed=i)
    train = data.csv("train", [("j1.mp4", "Jump"), ("j2.mp4", "Jump"), ("r1.mp4", "Run"), ("r2.mp4", "Run")])
    val = data.csv("val", [("j3.mp4", "Jump"), ("r3.mp4", "Run")])
    return train, val


def run(data: DataSet, *csvs: Path, **kwargs) -> dict:
    kwargs.setdefault("min_per_class", 1)
    return check.run_check(csvs, data.root.parent / "out", workers=1, progress=False, **kwargs)


def test_a_clean_set_exits_0_and_reports_nothing(data, capsys):
    train, val = clean_set(data)
    out = data.root.parent / "out"
    assert main(["data", "check", str(train), str(val), "-o", str(out), "--workers", "1",
                 "--min_per_class", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("data check: clean (2 lists, 6 videos)")
    report = json.loads((out / "check.json").read_text())
    assert not any(report["counts"].values())
    assert [(s["name"], s["rows"], s["ok"], s["frames"]) for s in report["lists"]] == \
        [("train", 4, 4, 4 * FRAMES), ("val", 2, 2, 2 * FRAMES)]
    video = report["videos"][0]
    assert (video["status"], video["frames"], video["fps"], video["width"], video["height"]) == \
        ("ok", FRAMES, FPS, SIZE, SIZE)
    assert video["duration"] == pytest.approx(FRAMES / FPS)
    assert video["sha256"] == sha256_of(data.root / "videos" / "j1.mp4")
    assert len(video["simhash"]) == 64 and len(video["content_key"]) == 64
    assert report["manifest"]["sha256"] == sha256_of(out / "manifest.json")
    assert f"sha256 {report['manifest']['sha256']}" in "\n".join(lines)


def test_missing_and_truncated_videos_are_reported_per_list_and_class(data, capsys):
    train, val = clean_set(data)
    (data.root / "videos" / "r2.mp4").unlink()
    cut = data.root / "videos" / "j3.mp4"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    avi = VideoFactory(data.root / "videos").write("r4.avi", clip(9), codec="mpeg4")
    avi.write_bytes(avi.read_bytes()[: avi.stat().st_size * 2 // 3])  # header intact, frames cut
    val = data.csv("val", [("j3.mp4", "Jump"), ("r3.mp4", "Run"), ("r4.avi", "Run")])
    out = data.root.parent / "out"
    assert main(["data", "check", str(train), str(val), "-o", str(out), "--workers", "1",
                 "--min_per_class", "1"]) == 1
    printed = capsys.readouterr().out
    report = json.loads((out / "check.json").read_text())
    assert [(m["list"], m["action"], Path(m["path"]).name) for m in report["problems"]["missing"]] == \
        [("train", "Run", "r2.mp4")]
    unreadable = {Path(u["path"]).name: u for u in report["problems"]["unreadable"]}
    assert set(unreadable) == {"j3.mp4", "r4.avi"}
    assert all("truncated" in u["error"] for u in unreadable.values())
    train_stats, val_stats = report["lists"]
    assert train_stats["classes"]["Run"] == {"listed": 2, "ok": 1, "missing": 1, "unreadable": 0}
    assert val_stats["classes"]["Jump"] == {"listed": 1, "ok": 0, "missing": 0, "unreadable": 1}
    assert (val_stats["ok"], val_stats["unreadable"]) == (1, 2)
    assert "r2.mp4" in printed and "classes with missing or unreadable videos" in printed
    # Jump has no usable clip left in val: too few for the protocol
    assert [(s["list"], s["action"], s["clips"]) for s in report["problems"]["small_class"]] == [("val", "Jump", 0)]
    last = printed.strip().splitlines()[-1]
    assert last.startswith("data check: 4 problems in 2 lists, 7 videos:") and "missing videos: 1" in last


def test_a_reencoded_clip_across_lists_is_a_near_duplicate_not_an_exact_one(data, tmp_path):
    train, _ = clean_set(data)
    data.video("dup.mp4", seed=0, crf=36)  # j1's frames, encoded again at a much lower quality
    VideoFactory(data.root / "videos").write("dup2.avi", clip(2), codec="mpeg4", options={"qscale": "8"})
    shutil.copy(data.root / "videos" / "r2.mp4", data.root / "videos" / "copy.mp4")
    val = data.csv("val", [("j3.mp4", "Jump"), ("r3.mp4", "Run"), ("dup.mp4", "Jump"), ("dup2.avi", "Run"),
                           ("copy.mp4", "Run")])
    report = run(data, train, val, write_clean=tmp_path / "clean")
    near = {(Path(p["a"]["path"]).name, Path(p["b"]["path"]).name): p["distance"]
            for p in report["problems"]["near_across"]}
    assert set(near) == {("j1.mp4", "dup.mp4"), ("r1.mp4", "dup2.avi")}
    assert all(d <= check.DEFAULT_NEAR_THRESHOLD for d in near.values())
    exact = report["problems"]["exact_across"]
    assert [sorted(Path(v["path"]).name for v in e["videos"]) for e in exact] == [["copy.mp4", "r2.mp4"]]
    videos = {Path(v["path"]).name: v for v in report["videos"]}
    assert videos["dup.mp4"]["sha256"] != videos["j1.mp4"]["sha256"]
    assert videos["dup.mp4"]["content_key"] != videos["j1.mp4"]["content_key"]
    # the cleaned val list keeps only the clips that repeat nothing of train
    assert [r.id for r in read_video_csv(tmp_path / "clean" / "val.csv")] == ["j3", "r3"]
    assert [r.id for r in read_video_csv(tmp_path / "clean" / "train.csv")] == ["j1", "j2", "r1", "r2"]
    removed = {r["id"]: r["reason"] for r in report["clean"]["lists"][1]["removed"]}
    assert set(removed) == {"dup", "dup2", "copy"} and "identical" in removed["copy"]
    assert verify_manifest(tmp_path / "clean" / "manifest.json",
                           read_video_csv(tmp_path / "clean" / "val.csv"))["list"] == "val"


def test_a_higher_threshold_is_needed_for_more_distant_clips(data):
    train, val = clean_set(data)
    report = run(data, train, val, near_threshold=0)
    assert report["problems"]["near_across"] == []  # distinct clips stay apart even at threshold 0
    data.video("dup.mp4", seed=0, crf=36)
    val = data.csv("val", [("j3.mp4", "Jump"), ("r3.mp4", "Run"), ("dup.mp4", "Jump")])
    videos = {Path(v["path"]).name: v for v in run(data, train, val)["videos"]}
    distance = check.hamming(videos["j1.mp4"]["simhash"], videos["dup.mp4"]["simhash"])
    assert 0 < distance
    assert run(data, train, val, near_threshold=distance - 1)["problems"]["near_across"] == []
    assert len(run(data, train, val, near_threshold=distance)["problems"]["near_across"]) == 1


def test_a_ucf_group_or_youtube_id_in_two_lists_is_a_leak(data, tmp_path):
    names = ["v_Run_g01_c01.mp4", "v_Run_g01_c02.mp4", "v_Run_g02_c01.mp4", "v_Run_g02_c02.mp4",
             "abcdefgh-_k_000010_000020.mp4", "abcdefgh-_k_000030_000040.mp4"]
    for i, name in enumerate(names):
        data.video(name, seed=10 + i)
    data.video("v_Run_g03_c01.mp4", seed=20)
    data.video("v_Run_g03_c02.mp4", seed=20, crf=36)  # one recording, two clips: expected within a list
    train = data.csv("train", [(names[0], "Run"), (names[2], "Run"), (names[4], "Run"),
                               ("v_Run_g03_c01.mp4", "Run"), ("v_Run_g03_c02.mp4", "Run")])
    val = data.csv("val", [(names[1], "Run"), (names[3], "Run"), (names[5], "Run")])
    report = run(data, train, val, write_clean=tmp_path / "clean")
    leaks = {item["source"]: sorted(item["lists"]) for item in report["problems"]["source_across"]}
    assert leaks == {"UCF-101 v_run_g01": ["train", "val"], "UCF-101 v_run_g02": ["train", "val"],
                     "YouTube abcdefgh-_k": ["train", "val"]}
    assert report["problems"]["near_within"] == [] and report["problems"]["near_across"] == []
    # every val clip comes from a source of train: the cleaned val list is empty, train keeps all five
    assert (tmp_path / "clean" / "val.csv").read_text().splitlines() == ["id,path,action,label"]
    assert len(read_video_csv(tmp_path / "clean" / "train.csv")) == 5


def test_a_near_duplicate_of_another_source_within_a_list_is_reported(data):
    data.video("v_Run_g01_c01.mp4", seed=3)
    data.video("v_Run_g02_c01.mp4", seed=3, crf=36)
    train = data.csv("train", [("v_Run_g01_c01.mp4", "Run"), ("v_Run_g02_c01.mp4", "Run")])
    report = run(data, train)
    assert [(Path(p["a"]["path"]).name, Path(p["b"]["path"]).name, p["lists"])
            for p in report["problems"]["near_within"]] == [("v_Run_g01_c01.mp4", "v_Run_g02_c01.mp4", ["train"])]


def test_classes_with_too_few_clips_and_conflicting_labels(data):
    train, val = clean_set(data)
    report = run(data, train, val, min_per_class=2)
    assert [(s["list"], s["action"], s["clips"]) for s in report["problems"]["small_class"]] == \
        [("val", "Jump", 1), ("val", "Run", 1)]
    assert report["lists"][0]["clips_per_class"] == {"min": 2, "median": 2, "max": 2}
    rows = read_video_csv(val)
    write_csv(val, [rows[0], VideoRow(rows[1].id, rows[1].path, rows[1].action, 0)])  # Run labelled as Jump
    conflicts = run(data, train, val)["problems"]["label_conflict"]
    assert {"action": "Run", "labels": [0, 1]} in conflicts and {"label": 0, "actions": ["Jump", "Run"]} in conflicts


def test_a_second_run_probes_only_new_or_changed_files(data, monkeypatch):
    train, val = clean_set(data)
    first = run(data, train, val)
    cache = data.root.parent / "out" / "cache.jsonl"
    assert len(cache.read_text().splitlines()) == 6
    with cache.open("a") as f:
        f.write('{"path": "cut by an interrupt')  # a line cut short is ignored
    real_probe = check.probe_file
    probed: list[str] = []

    def counting_probe(path: str) -> check.VideoResult:
        probed.append(Path(path).name)
        return real_probe(path)

    monkeypatch.setattr(check, "probe_file", counting_probe)
    assert run(data, train, val)["videos"] == first["videos"]
    assert probed == []
    data.video("r3.mp4", seed=7)  # rewritten: another size and modification time
    second = run(data, train, val)
    assert probed == ["r3.mp4"]
    changed = {Path(v["path"]).name: v for v in second["videos"]}["r3.mp4"]
    assert changed["sha256"] == sha256_of(data.root / "videos" / "r3.mp4")
    assert len(cache.read_text().splitlines()) == 6  # rewritten at the end: one line per file


def test_a_process_pool_gives_the_same_results(data):
    train, val = clean_set(data)
    one = run(data, train, val)["videos"]
    shutil.rmtree(data.root.parent / "out")
    two = check.run_check([train, val], data.root.parent / "out", workers=2, progress=False, min_per_class=1)
    assert two["videos"] == one


def test_probe_never_raises(tmp_path):
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "text.mp4").write_text("not a video")
    assert check.probe_file(str(tmp_path / "none.mp4")).status == "missing"
    folder = check.probe_file(str(tmp_path / "folder.mp4"))
    assert (folder.status, folder.error) == ("unreadable", "is a folder, expected a video file")
    text = check.probe_file(str(tmp_path / "text.mp4"))
    assert text.status == "unreadable" and "not a video container" in text.error
    assert text.sha256 == sha256_of(tmp_path / "text.mp4")


@pytest.mark.parametrize("content, message", [
    (None, "no such CSV: "),
    (b"\x00\x01\xff binary", "is not a text CSV"),
    (b"name,file\nx,y\n", "missing column(s) id, path, action, label"),
    (b"id,path,action,label\n", "no rows"),
])
def test_bad_input_is_a_one_line_error_with_status_2(tmp_path, capsys, content, message):
    csv = tmp_path / "list.csv"
    if content is not None:
        csv.write_bytes(content)
    assert main(["data", "check", str(csv), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("larp data check: error: ") and message in err and err.count("\n") == 1


def test_an_unusable_out_folder_exits_2_not_1(data, tmp_path, capsys):
    train, _ = clean_set(data)
    (tmp_path / "out").write_text("a file")
    assert main(["data", "check", str(train), "-o", str(tmp_path / "out")]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "cache.jsonl").mkdir()  # the cache cannot be written
    assert main(["data", "check", str(train), "-o", str(tmp_path / "locked"), "--workers", "1"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("larp data check: error: ") and "cache.jsonl" in last


def _die(path: str) -> check.VideoResult:
    os._exit(3)  # a decoder that takes its process down


def test_a_crashed_worker_stops_the_check_with_status_2(data, tmp_path, monkeypatch, capsys):
    train, _ = clean_set(data)
    monkeypatch.setattr(check, "probe_file", _die)
    assert main(["data", "check", str(train), "-o", str(tmp_path / "out"), "--workers", "2"]) == 2
    assert "a worker process died" in capsys.readouterr().err


def test_clean_lists_are_not_written_over_inputs_or_existing_files(data, tmp_path, capsys):
    train, val = clean_set(data)
    assert main(["data", "check", str(train), "-o", str(tmp_path / "out"), "--write_clean", str(data.root)]) == 2
    assert "would replace the input" in capsys.readouterr().err
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "val.csv").write_text("keep")
    assert main(["data", "check", str(train), str(val), "-o", str(tmp_path / "out"),
                 "--write_clean", str(tmp_path / "clean")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "clean" / "val.csv").read_text() == "keep"


def test_near_pairs_finds_every_pair_within_the_threshold():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 32), dtype=np.uint8)
    bits = np.unpackbits(base, axis=1)
    flipped = bits.copy()
    for row, n in enumerate((0, 5, 15, 20, 30, 40)):  # spread over the bands
        flipped[row, rng.choice(256, n, replace=False)] ^= 1
    hashes = [np.packbits(b).tobytes().hex() for b in np.concatenate([bits, flipped])]
    pairs, skipped = check_report.near_pairs(hashes, threshold=24)
    assert skipped == 0
    assert pairs == {(0, 6): 0, (1, 7): 5, (2, 8): 15, (3, 9): 20}  # 30 and 40 bits: too far
    assert check.hamming(hashes[4], hashes[10]) == 30
    # a bucket larger than the vectorised ones: 40 hashes sharing their first band, one near pair in it
    crowd = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    crowd[:, :2] = 7
    crowd_bits = np.unpackbits(crowd[0])
    crowd_bits[rng.choice(np.arange(16, 256), 12, replace=False)] ^= 1
    crowd[39] = np.packbits(crowd_bits)
    pairs, _ = check_report.near_pairs([c.tobytes().hex() for c in crowd], threshold=24)
    assert pairs == {(0, 39): 12}


@pytest.mark.parametrize("name, source", [
    ("/d/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c03.avi", "UCF-101 v_applyeyemakeup_g08"),
    ("/d/v_HandStandPushups_g01_c01.avi", "UCF-101 v_handstandpushups_g01"),
    ("/k/train/abseiling/-3B32lodo2M_000059_000069.mp4", "YouTube -3B32lodo2M"),
    ("/k/train/a_b_c_000001_000002.mp4", None),
    ("/x/clip_0001.mp4", None),
])
def test_source_of_reads_ucf_groups_and_youtube_ids(name, source):
    assert check_report.source_of(name) == source


def test_the_command_line_default_threshold_is_the_library_one():
    from larp.cli import build_parser

    args = build_parser(load=["data"]).parse_args(["data", "check", "a.csv"])
    assert (args.near_threshold, args.min_per_class) == (check.DEFAULT_NEAR_THRESHOLD, 10)


# ------------------------------------------------------------------------------------------ the manifest
def test_the_manifest_must_match_the_evaluated_csv(data):
    train, val = clean_set(data)
    report = run(data, train, val)
    manifest = Path(report["manifest"]["path"])
    record = verify_manifest(manifest, read_video_csv(val), val)
    assert (record["list"], record["videos"], record["sha256"]) == ("val", 2, sha256_of(manifest))
    entries = json.loads(manifest.read_text())["lists"][0]["videos"]
    assert [(e["path"], e["frames"]) for e in entries] == [(f"{n}.mp4", FRAMES) for n in ("j1", "j2", "r1", "r2")]
    rows = read_video_csv(train)
    with pytest.raises(ValueError, match="none of the lists .*'train': 4 videos, the CSV 3"):
        verify_manifest(manifest, rows[:3])
    with pytest.raises(ValueError, match="row 1 is .*r1.mp4, the manifest's j1.mp4"):
        verify_manifest(manifest, [rows[2], rows[1], rows[0], rows[3]])
    data.video("j2.mp4", seed=11)  # the file changed after the check
    with pytest.raises(ValueError, match="j2.mp4 has .* bytes, the manifest .* records"):
        verify_manifest(manifest, rows)
    (data.root / "bad.json").write_text('{"lists": []}')
    with pytest.raises(ValueError, match="is not a dataset manifest"):
        verify_manifest(data.root / "bad.json", rows)


def test_the_manifest_is_the_same_wherever_the_data_lies(data, tmp_path):
    train, val = clean_set(data)
    first = run(data, train, val)["manifest"]["sha256"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(data.root, moved)
    again = DataSet(moved)
    rows = [VideoRow(r.id, str(moved / "videos" / Path(r.path).name), r.action, r.label) for r in read_video_csv(train)]
    write_csv(moved / "train.csv", rows)
    rows = [VideoRow(r.id, str(moved / "videos" / Path(r.path).name), r.action, r.label) for r in read_video_csv(val)]
    write_csv(moved / "val.csv", rows)
    second = check.run_check([moved / "train.csv", moved / "val.csv"], tmp_path / "out2", workers=1,
                             progress=False, min_per_class=1)["manifest"]["sha256"]
    assert again.root != data.root and second == first


def test_evaluation_records_the_manifest(data):
    from larp import LARPTokenizer
    from larp.eval.protocols import evaluate_tokenizer
    from tests.conftest import official

    tokenizer = LARPTokenizer.from_pretrained(official("tokenizer_tiny"))
    train, val = clean_set(data)
    manifest = Path(run(data, train, val)["manifest"]["path"])
    result = evaluate_tokenizer(tokenizer, val, protocol="heldout", fvd=False, lpips=False, progress=False,
                                manifest=manifest)
    recorded = result["protocol"]["dataset_manifest"]
    assert (recorded["sha256"], recorded["list"]) == (sha256_of(manifest), "val")
    one = write_csv(data.root / "one.csv", read_video_csv(val)[:1])
    with pytest.raises(ValueError, match="one.csv is none of the lists of the manifest"):
        evaluate_tokenizer(tokenizer, one, protocol="heldout", fvd=False, lpips=False, progress=False,
                           manifest=manifest)


def test_a_sampling_job_records_the_manifest(data, tmp_path, capsys):
    from tests.conftest import official

    train, val = clean_set(data)
    manifest = Path(run(data, train, val)["manifest"]["path"])
    base = ["sample", "--ar_model", str(official("ar_tiny")), "--tokenizer", str(official("tokenizer_tiny")),
            "--device", "cpu", "--num_samples", "2", "--sample_batch_size", "2", "--no_fvd",
            "--manifest", str(manifest)]
    assert main([*base, "--dataset_csv", str(val), "--output_dir", str(tmp_path / "job")]) == 0
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert job["dataset_manifest_sha256"] == sha256_of(manifest)
    capsys.readouterr()
    one = write_csv(data.root / "one.csv", read_video_csv(val)[:1])
    assert main([*base, "--dataset_csv", str(one), "--output_dir", str(tmp_path / "job2")]) == 1
    assert "is none of the lists of the manifest" in capsys.readouterr().err
    assert not (tmp_path / "job2" / "job.json").exists()
