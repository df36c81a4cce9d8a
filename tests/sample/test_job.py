"""`larp sample`: options, sharding == one run, merge once under a lock, bad input, frame prediction."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import resize

from larp import LARPAR, ARConfig, LARPTokenizer
from larp.cli import build_parser, main
from larp.data.synthetic import write_synthetic_dataset
from larp.data.transforms import ClipTransform
from larp.data.video_io import read_clip, read_video
from larp.eval import fvd
from larp.eval.protocols import ucf_gfvd_chunks
from larp.sample.shards import MergeLock, batch_seed, grid_batches
from larp.utils import outputs
from tests.conftest import official
from tests.eval.conftest import trust

REFERENCE_OPTIONS = ("ar_model", "tokenizer", "output_dir", "num_samples", "sample_batch_size", "cfg_scale",
                     "cfg_interval", "temperature", "top_k", "top_p", "dtype", "dataset_csv",
                     "dataset_split_seed", "fp", "num_cond_frames", "num_samples_total", "starting_index")


@pytest.fixture(scope="module")
def dataset_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 synthetic 16-frame 32x32 videos of 5 classes: 40 non-overlapping 8-frame chunks."""
    out = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_dataset(out, classes=5, clips_per_class=4, frames=16, size=32, val_fraction=0)["train"]


class SmallStandIn(nn.Module):
    """The detector's call signature with 16 features instead of 400: the FVD's 400x400 matrix square root
    takes seconds on this machine, 16x16 takes nothing, and the sampling job is the same."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(24, 16)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            self.proj.weight.copy_(torch.randn(16, 24, generator=generator))
            self.proj.bias.copy_(torch.randn(16, generator=generator))

    def forward(self, x: torch.Tensor, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        return self.proj(F.adaptive_avg_pool3d(x, (2, 2, 2)).flatten(1))


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("i3d") / fvd.I3D_FILENAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        torch.jit.save(torch.jit.script(SmallStandIn().eval()), str(path))
    return path


@pytest.fixture
def detector(standin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in detector, trusted for this test; no cache, no environment, no network."""
    trust(monkeypatch, standin)
    monkeypatch.setenv(fvd.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(fvd.ENV_I3D_PATH, raising=False)

    def offline(dest: Path) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(fvd, "_download_dropbox", offline)
    monkeypatch.setattr(fvd, "_download_hf", offline)
    monkeypatch.setattr(fvd, "host_resolves", lambda url: True)
    return standin


def sample_args(out: Path, csv_path: Path, det: Path, *extra: str, ar: str = "ar_tiny") -> list[str]:
    return ["sample", "--ar_model", str(official(ar)), "--tokenizer", str(official("tokenizer_tiny")),
            "--dataset_csv", str(csv_path), "--output_dir", str(out), "--i3d_path", str(det),
            "--device", "cpu", "--sample_batch_size", "4", *extra]


def report_rows(out: Path) -> list[dict[str, str]]:
    with (out / "fvd_report.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def load_tokens(out: Path) -> dict[str, np.ndarray]:
    parts = [dict(np.load(p)) for p in sorted((out / "tokens").glob("*.npz"))]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["index"])
    return {k: v[order] for k, v in merged.items()}


# ------------------------------------------------------------------------------------------ options
def test_every_reference_option_parses_with_underscores_and_hyphens():
    parser = build_parser()
    values = {"ar_model": "A", "tokenizer": "T", "output_dir": "O", "num_samples": "7", "sample_batch_size": "3",
              "cfg_scale": "1.25", "cfg_interval": "5", "temperature": "0.9", "top_k": "50", "top_p": "0.8",
              "dtype": "bfloat16", "dataset_csv": "D.csv", "dataset_split_seed": "11", "num_cond_frames": "5",
              "num_samples_total": "70", "starting_index": "14"}
    parsed = []
    for spell in (lambda k: k, lambda k: k.replace("_", "-")):
        argv = ["sample", f"--{spell('fp')}"]
        for key, value in values.items():
            argv += [f"--{spell(key)}", value]
        parsed.append(vars(parser.parse_args(argv)))
    assert parsed[0] == parsed[1]
    got = parsed[0]
    assert set(REFERENCE_OPTIONS) <= set(got)
    assert (got["num_samples"], got["sample_batch_size"], got["cfg_interval"], got["top_k"]) == (7, 3, 5, 50)
    assert (got["cfg_scale"], got["temperature"], got["top_p"]) == (1.25, 0.9, 0.8)
    assert (got["num_samples_total"], got["starting_index"], got["dataset_split_seed"]) == (70, 14, 11)
    assert (got["fp"], got["num_cond_frames"], got["dtype"]) == (True, 5, "bfloat16")
    # the reference's own short aliases
    short = vars(parser.parse_args(["sample", "--ar_model", "A", "--tokenizer", "T", "--output_dir", "O",
                                    "--dataset_csv", "D", "--ns", "9", "--cs", "2", "--frame_prediction"]))
    assert (short["num_samples"], short["cfg_scale"], short["fp"]) == (9, 2.0, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["sample", "--ar_model", "A", "--tokenizer", "T", "--output_dir", "O",
                           "--dataset_csv", "D", "--dtype", "float16"])


def test_grid_batches_and_seeds():
    assert grid_batches(3, 6, 6, 4) == [(0, 4), (4, 6)]
    assert grid_batches(0, 3, 6, 4) == [(0, 4)]
    assert grid_batches(8, 10, 10, 4) == [(8, 10)]
    assert batch_seed(0, 4) == batch_seed(0, 4) != batch_seed(0, 8) != batch_seed(1, 4)
    assert 0 <= batch_seed(2**31, 10**9) < 2**63


# ------------------------------------------------------------------------------------------ sharding
def test_sharded_run_equals_one_run_and_reports_fvd_once(dataset_csv: Path, detector: Path, tmp_path: Path,
                                                         capsys):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    guided = ("--cfg_scale", "1.5")
    assert main(sample_args(one, dataset_csv, detector, "--num_samples", "6", *guided)) == 0
    # second half first: batch [0, 4) straddles the shard boundary at 3
    assert main(sample_args(sharded, dataset_csv, detector, "--num_samples", "3", "--starting_index", "3",
                            "--num_samples_total", "6", *guided)) == 0
    assert "waiting for other shards: 3 of 6 samples finished" in capsys.readouterr().out
    assert not (sharded / "fvd.json").exists() and not (sharded / "fvd_report.csv").exists()
    assert main(sample_args(sharded, dataset_csv, detector, "--num_samples", "3", "--starting_index", "0",
                            "--num_samples_total", "6", *guided)) == 0
    assert "merged 2 shard(s)" in capsys.readouterr().out

    # samples: the same tokens and the same video files, sample by sample
    a, b = load_tokens(one), load_tokens(sharded)
    assert a["index"].tolist() == b["index"].tolist() == list(range(6))
    for key in ("label", "cond", "tokens"):
        np.testing.assert_array_equal(a[key], b[key])
    names = sorted(p.name for p in (one / "samples").glob("*.mp4"))
    assert names == sorted(p.name for p in (sharded / "samples").glob("*.mp4"))
    assert names == [f"{i:06d}_class{label}.mp4" for i, label in enumerate(a["label"])]
    # the same pixels: what sharding promises is the same decoded frames (compared exactly); the bytes of an
    # mp4 also hold encoder and container details that are not part of the sample
    for name in names:
        frames_one, fps_one = read_video(one / "samples" / name)
        frames_sharded, fps_sharded = read_video(sharded / "samples" / name)
        assert fps_one == fps_sharded
        np.testing.assert_array_equal(frames_one, frames_sharded)
    # the labels follow the protocol's real clips
    clips = ucf_gfvd_chunks(dataset_csv, 6, seed=42, chunk_frames=8)
    assert a["label"].tolist() == [c.label for c in clips]

    # statistics: merged sums equal the single run's (up to the detector's float32 rounding, which depends
    # on the batch), and the FVD is computed from them once
    merged = {}
    for name in ("real", "fake"):
        single = fvd.FeatureStats.load(one / "stats" / f"shard_0_6_{name}.npz")
        merged[name] = fvd.FeatureStats.load(sharded / "stats" / f"{name}.npz")
        parts = fvd.FeatureStats.load(sharded / "stats" / f"shard_0_3_{name}.npz").merge(
            fvd.FeatureStats.load(sharded / "stats" / f"shard_3_6_{name}.npz"))
        assert merged[name].count == single.count == parts.count == 6
        np.testing.assert_allclose(merged[name].feature_sum, single.feature_sum, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(merged[name].outer_sum, single.outer_sum, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(merged[name].outer_sum, parts.outer_sum)
    record = json.loads((sharded / "fvd.json").read_text())
    assert record["fvd"] == fvd.fvd(merged["real"], merged["fake"])
    assert record["fvd"] == pytest.approx(json.loads((one / "fvd.json").read_text())["fvd"], rel=1e-6)
    assert record["shards"] == [[0, 3], [3, 6]]
    # nll_sampled: the model's mean NLL of its own samples
    model = LARPAR.from_pretrained(official("ar_tiny"))
    logits = model.logits(torch.from_numpy(b["tokens"]), torch.from_numpy(b["label"]))
    nll = F.cross_entropy(logits.transpose(1, 2), torch.from_numpy(b["tokens"]))
    assert record["nll_sampled"] == pytest.approx(nll.item(), rel=1e-5)

    rows = report_rows(sharded)
    assert len(rows) == 1
    assert float(rows[0]["fvd"]) == record["fvd"]
    assert (rows[0]["num_samples"], rows[0]["cfg_scale"], rows[0]["fp"]) == ("6", "1.5", "False")

    # a re-run of a finished shard does nothing and reports nothing
    stamp = (sharded / "samples" / names[0]).stat().st_mtime_ns
    assert main(sample_args(sharded, dataset_csv, detector, "--num_samples", "3", "--starting_index", "0",
                            "--num_samples_total", "6", *guided)) == 0
    out = capsys.readouterr().out
    assert "shard [0, 3) finished in an earlier run; skipped" in out and "already merged" in out
    assert (sharded / "samples" / names[0]).stat().st_mtime_ns == stamp
    assert len(report_rows(sharded)) == 1

    # another setting in the same folder cannot join the job
    assert main(sample_args(sharded, dataset_csv, detector, "--num_samples", "3", "--starting_index", "3",
                            "--num_samples_total", "6", "--cfg_scale", "2")) == 1
    assert "holds a sampling job with other settings (cfg_scale: 1.5 there, 2.0 here)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ lock
def _write_lock(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "time": time.time()}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_prevents_the_merge_and_a_stale_one_is_taken(dataset_csv: Path, detector: Path,
                                                                 tmp_path: Path, capsys):
    out = tmp_path / "job"
    lock = out / "fvd.lock"
    _write_lock(lock, os.getpid())  # a live process is merging
    held = lock.read_text()
    args = sample_args(out, dataset_csv, detector, "--num_samples", "2")
    assert main(args) == 0
    assert "another process is merging" in capsys.readouterr().out
    assert (out / "stats" / "shard_0_2.done.json").is_file()
    assert not (out / "fvd.json").exists() and not (out / "fvd_report.csv").exists()
    assert lock.read_text() == held

    _write_lock(lock, _dead_pid())  # its owner died: the lock is stale
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "merged 1 shard(s)" in printed
    assert not lock.exists()
    assert len(report_rows(out)) == 1
    assert float(report_rows(out)[0]["fvd"]) == json.loads((out / "fvd.json").read_text())["fvd"]


def test_merge_lock_is_exclusive_until_stale(tmp_path: Path):
    path = tmp_path / "fvd.lock"
    first = MergeLock(path, stale_after=60)
    assert first.acquire()
    assert not MergeLock(path, stale_after=60).acquire()  # held by this (live) process, fresh
    old = time.time() - 120
    os.utime(path, (old, old))
    late = MergeLock(path, stale_after=60)
    assert late.acquire() and late.held  # too old: taken over
    late.release()
    assert not path.exists()


def test_an_unreadable_lock_is_an_error_not_a_silent_end(dataset_csv: Path, detector: Path, tmp_path: Path,
                                                        capsys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(outputs, "OWNER_WAIT_SECONDS", 0.2)  # the shared lock's (larp.utils.outputs)
    out = tmp_path / "job"
    lock = out / "fvd.lock"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"\x00\xff not a lock record")  # fresh, so not stale by age
    args = sample_args(out, dataset_csv, detector, "--num_samples", "2")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "fvd.lock exists but holds no readable owner record" in err and "delete the file" in err
    assert (out / "stats" / "shard_0_2.done.json").is_file()  # the shard's samples are kept
    assert not (out / "fvd.json").exists()
    lock.unlink()  # as the message says: then the re-run merges
    assert main(args) == 0
    assert "merged 1 shard(s)" in capsys.readouterr().out
    assert (out / "fvd.json").is_file()


# ------------------------------------------------------------------------------------------ bad input
def _ar_variant(folder: Path, **overrides) -> Path:
    cfg = dict(dim=32, n_layer=1, n_head=2, vocab_size=128, max_seq_len=32, num_classes=5)
    cfg.update(overrides)
    LARPAR(ARConfig(**cfg)).save_pretrained(folder)
    return folder


def test_sample_defaults_are_those_of_generate():
    from larp.sample.generate_cli import GenerateConfig
    from larp.sample.job import SampleConfig

    names = {"ar_model": "A", "tokenizer": "T", "output_dir": "O", "dataset_csv": "D"}
    generate = GenerateConfig.__dataclass_fields__
    classes = SampleConfig(**names)
    assert classes.cfg_scale == generate["cfg_scale"].default == 1.25 and classes.num_cond_frames is None
    fp = SampleConfig(**names, fp=True)
    assert (fp.cfg_scale, fp.num_cond_frames) == (1.0, generate["num_cond_frames"].default) == (1.0, 5)
    args = build_parser().parse_args(["sample", *[f"--{k}={v}" for k, v in names.items()], "--fp"])
    assert (args.cfg_scale, args.num_cond_frames) == (None, None)  # resolved by SampleConfig, as above
    assert SampleConfig(**names, fp=True, num_cond_frames=3, cfg_scale=1.0).num_cond_frames == 3


@pytest.mark.parametrize("extra, ar, expected", [
    (["--num_samples", "4", "--starting_index", "4", "--num_samples_total", "6"], "ar_tiny",
     "this shard [4, 8) (--starting_index 4 + --num_samples 4) is not covered by --num_samples_total 6"),
    (["--num_samples", "41"], "ar_tiny",
     "asked for 41 clips but the 20 videos hold only 40 non-overlapping 8-frame chunks"),
    (["--num_samples", "2", "--fp", "--num_cond_frames", "3"], "ar_tiny",
     "--fp needs a frame-prediction AR model, but"),
    (["--num_samples", "2"], "ar_fp_tiny", "is a frame-prediction model; pass --fp"),
    (["--num_samples", "2", "--fp", "--num_cond_frames", "8"], "ar_fp_tiny",
     "--num_cond_frames must be in [1, 7] for this 8-frame tokenizer, got 8"),
    (["--num_samples", "2", "--fp", "--num_cond_frames", "3", "--cfg_scale", "1.5"], "ar_fp_tiny",
     "frame prediction has no classifier-free guidance"),
    (["--num_samples", "2", "--num_cond_frames", "3"], "ar_tiny", "--num_cond_frames is for frame prediction"),
    (["--num_samples", "1"], "ar_tiny", "FVD needs at least 2 samples"),
])
def test_bad_options_fail_before_any_work(extra, ar, expected, dataset_csv: Path, detector: Path,
                                          tmp_path: Path, capsys):
    out = tmp_path / "job"
    assert main(sample_args(out, dataset_csv, detector, *extra, ar=ar)) == 1
    assert expected in capsys.readouterr().err
    assert not (out / "samples").exists() and not (out / "job.json").exists()


@pytest.mark.parametrize("overrides, expected", [
    ({"vocab_size": 64}, "vocab_size is 64 but the tokenizer's codebook has 128 codes; they do not fit"),
    ({"max_seq_len": 16}, "makes max_seq_len=16 tokens but the tokenizer uses 32 tokens per clip"),
    ({"num_classes": 3}, "gives class labels [3, 4] but"),
    ({"class_dropout_prob": 0.0}, "--cfg_scale 1.5 needs a model trained with a null class"),
])
def test_models_that_do_not_fit_are_refused(overrides, expected, dataset_csv: Path, detector: Path,
                                            tmp_path: Path, capsys):
    ar = _ar_variant(tmp_path / "ar", **overrides)
    out = tmp_path / "job"
    argv = sample_args(out, dataset_csv, detector, "--num_samples", "2", "--cfg_scale", "1.5")
    argv[argv.index("--ar_model") + 1] = str(ar)
    assert main(argv) == 1
    assert expected in capsys.readouterr().err
    assert not (out / "samples").exists()


def test_missing_detector_and_overlapping_shards_are_refused(dataset_csv: Path, detector: Path,
                                                             tmp_path: Path, capsys):
    out = tmp_path / "job"
    argv = sample_args(out, dataset_csv, detector, "--num_samples", "2")
    argv[argv.index("--i3d_path") + 1] = str(tmp_path / "nowhere.pt")
    assert main(argv) == 1
    assert f"--i3d_path {tmp_path / 'nowhere.pt'} does not exist" in capsys.readouterr().err
    without = [a for a in argv if a not in ("--i3d_path", str(tmp_path / "nowhere.pt"))]
    assert main(without) == 1  # no path, no cache, no network
    assert "was not found and could not be downloaded" in capsys.readouterr().err
    assert not (out / "samples").exists()
    # --no_fvd needs no detector: samples and tokens, no statistics, no report
    no_fvd = tmp_path / "no_fvd"
    assert main([a if a != str(out) else str(no_fvd) for a in without] + ["--no_fvd"]) == 0
    assert "all shards finished (no FVD: --no_fvd)" in capsys.readouterr().out
    assert len(list((no_fvd / "samples").glob("*.mp4"))) == 2 and (no_fvd / "tokens" / "shard_0_2.npz").is_file()
    assert not list((no_fvd / "stats").glob("*.npz")) and not (no_fvd / "fvd.json").exists()

    # a finished shard [0, 4) on disk: [2, 6) overlaps it
    marker = out / "stats" / "shard_0_4.done.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"start": 0, "end": 4, "nll_sum": 0.0}))
    assert main(sample_args(out, dataset_csv, detector, "--num_samples", "4", "--starting_index", "2",
                            "--num_samples_total", "8")) == 1
    assert "this shard [2, 6) overlaps the finished shard [0, 4)" in capsys.readouterr().err
    assert not (out / "samples").exists()


# ------------------------------------------------------------------------------------------ frame prediction
def test_frame_prediction_conditions_on_the_context_tokens(dataset_csv: Path, detector: Path, tmp_path: Path):
    out = tmp_path / "fp"
    assert main(sample_args(out, dataset_csv, detector, "--num_samples", "5", "--fp", "--num_cond_frames", "3",
                            "--dtype", "bfloat16", ar="ar_fp_tiny")) == 0
    saved = load_tokens(out)
    tokenizer = LARPTokenizer.from_pretrained(official("tokenizer_tiny"))
    clips = json.loads((out / "clips.json").read_text())["clips"]
    transform = ClipTransform(32, train=False)
    real = torch.stack([transform(read_clip(c["path"], 8, start=c["start"])) for c in clips])  # (5, 3, 8, 32, 32)
    # the condition: tokens of the 3 context frames, the third repeated to 8 frames, then the separator
    padded = torch.cat([real[:, :, :3], real[:, :, 2:3].repeat(1, 1, 5, 1, 1)], dim=2)
    np.testing.assert_array_equal(saved["cond"][:, :32], tokenizer.encode(padded, deterministic=True).numpy())
    assert (saved["cond"][:, 32] == 128).all()
    assert saved["tokens"].shape == (5, 32)

    # FVD statistics: the decoded samples and the real clips, both at 64x64 (the K600 protocol)
    detector_module = fvd.load_detector(detector)

    def features(video: torch.Tensor) -> np.ndarray:
        frames = video.permute(0, 2, 1, 3, 4).reshape(-1, 3, 32, 32)
        small = resize(frames, [64, 64], antialias=True).reshape(video.shape[0], 8, 3, 64, 64)
        return fvd.extract_features(detector_module, small.permute(0, 2, 1, 3, 4).clamp(0, 1))

    with torch.no_grad():
        generated = tokenizer.decode(torch.from_numpy(saved["tokens"])).clamp(0, 1)
    for name, video in (("fake", generated), ("real", real)):
        stats = fvd.FeatureStats.load(out / "stats" / f"shard_0_5_{name}.npz")
        expected = fvd.FeatureStats(dim=16).add(features(video))
        assert stats.count == 5
        np.testing.assert_allclose(stats.feature_sum, expected.feature_sum, rtol=1e-4, atol=1e-3)
    rows = report_rows(out)
    assert len(rows) == 1 and (rows[0]["fp"], rows[0]["num_cond_frames"], rows[0]["dtype"]) == (
        "True", "3", "bfloat16")
    assert sorted(p.name for p in (out / "overview").iterdir()) == ["shard_0_5.gif", "shard_0_5.png"]


def test_overwrite_replaces_a_job_with_other_settings_and_keeps_other_files(dataset_csv: Path, detector: Path,
                                                                            tmp_path: Path, capsys):
    out = tmp_path / "job"
    first = ("--num_samples", "2", "--no_fvd", "--cfg_scale", "1.5")
    assert main(sample_args(out, dataset_csv, detector, *first)) == 0
    (out / "notes.txt").write_text("mine")
    (out / "samples" / "keep.txt").write_text("mine too")
    (out / "samples" / "mine.mp4").write_bytes(b"my own video")
    other = ("--num_samples", "2", "--no_fvd", "--cfg_scale", "2")
    assert main(sample_args(out, dataset_csv, detector, *other)) == 1
    assert "--overwrite to replace it" in capsys.readouterr().err
    # the same settings with --overwrite resume: the finished shard is kept, not redone
    stamp = (out / "stats" / "shard_0_2.done.json").stat().st_mtime_ns
    assert main(sample_args(out, dataset_csv, detector, *first, "--overwrite")) == 0
    assert "finished in an earlier run; skipped" in capsys.readouterr().out
    assert (out / "stats" / "shard_0_2.done.json").stat().st_mtime_ns == stamp
    # other settings with --overwrite: the old job's files go, the user's stay
    assert main(sample_args(out, dataset_csv, detector, *other, "--overwrite")) == 0
    assert json.loads((out / "job.json").read_text())["cfg_scale"] == 2.0
    assert (out / "notes.txt").read_text() == "mine" and (out / "samples" / "keep.txt").read_text() == "mine too"
    assert (out / "samples" / "mine.mp4").read_bytes() == b"my own video"
    assert len(list((out / "samples").glob("*.mp4"))) == 3


def test_exclusive_files_have_the_umask_mode_not_mkstemps(tmp_path):
    from larp.sample.shards import create_exclusive

    old = os.umask(0o022)
    try:
        assert create_exclusive(tmp_path / "job.json", {"a": 1})
        assert not create_exclusive(tmp_path / "job.json", {"a": 2})
    finally:
        os.umask(old)
    assert (tmp_path / "job.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "job.json").read_text()) == {"a": 1}
