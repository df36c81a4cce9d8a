from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from larp import LARPTokenizer
from larp.data.datasets import VideoCSVDataset
from larp.data.transforms import ClipTransform
from larp.data.video_io import read_video
from larp.eval import fvd, protocols
from larp.eval.metrics import LPIPSMetric, psnr, ssim
from tests.conftest import official


@pytest.fixture(scope="module")
def tokenizer() -> LARPTokenizer:
    return LARPTokenizer.from_pretrained(official("tokenizer_tiny"))


@pytest.fixture(scope="module")
def random_lpips() -> LPIPSMetric:
    return LPIPSMetric(pretrained_trunk=False)


def test_evaluate_tokenizer_matches_a_direct_computation(tokenizer, tiny_videos: Path, trusted_standin: Path,
                                                         random_lpips: LPIPSMetric):
    result = protocols.evaluate_tokenizer(tokenizer, tiny_videos / "data.csv", num_clips=4, seed=3,
                                          batch_size=3, detector=trusted_standin, lpips=random_lpips,
                                          progress=False)
    # the same clips by hand: seeded subset, seeded starts, deterministic codes, clamped reconstructions
    chosen = sorted(random.Random(3).sample(range(5), 4))
    dataset = VideoCSVDataset(tiny_videos / "data.csv", num_frames=8, size=32, train=False, seed=3)
    video = torch.stack([dataset[i]["video"] for i in chosen])
    with torch.no_grad():
        recon = tokenizer.decode(tokenizer.encode(video, deterministic=True)).clamp(0, 1)
    detector = fvd.load_detector(trusted_standin)
    real = fvd.FeatureStats().add(fvd.extract_features(detector, video))
    fake = fvd.FeatureStats().add(fvd.extract_features(detector, recon))
    m = result["metrics"]
    assert m["rfvd"] == pytest.approx(fvd.fvd(real, fake), rel=1e-6)
    assert m["psnr"] == pytest.approx(psnr(recon, video).mean().item(), rel=1e-6)
    assert m["ssim"] == pytest.approx(ssim(recon, video).mean().item(), rel=1e-6)
    assert m["lpips"] == pytest.approx(random_lpips(recon, video).mean().item(), rel=1e-5)
    p = result["protocol"]
    # Not the 9,537 videos of UCF-101 split 1: a custom protocol, labelled so, with the paper's procedure named.
    assert (p["name"], p["procedure"], p["split"], p["num_clips"], p["videos_in_csv"]) == (
        "custom", "paper", "train", 4, 5)
    assert p["expected_videos"] is None and "not comparable to the paper's figures" in p["description"]
    assert (p["num_frames"], p["size"], p["seed"], p["deterministic"]) == (8, 32, 3, True)
    assert p["detector"]["sha256"] == fvd.sha256_of(trusted_standin)
    assert "not comparable to the paper" in p["note"]


def test_runs_are_reproducible_and_seeds_change_clips(tokenizer, tiny_videos: Path, trusted_standin: Path):
    def run(seed: int) -> dict:
        return protocols.evaluate_tokenizer(tokenizer, tiny_videos / "data.csv", seed=seed, batch_size=5,
                                            detector=trusted_standin, lpips=False, progress=False)["metrics"]

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert "lpips" not in first
    assert first["psnr"] != other["psnr"]


def test_dtype_runs_the_tokenizer_under_autocast_and_is_recorded(tokenizer, tiny_videos: Path):
    def run(**kw) -> dict:
        return protocols.evaluate_tokenizer(tokenizer, tiny_videos / "data.csv", batch_size=5, lpips=False,
                                            fvd=False, progress=False, **kw)

    full, half, amp = run(), run(dtype="bfloat16"), run(use_amp=True)
    assert (full["protocol"]["dtype"], half["protocol"]["dtype"], amp["protocol"]["dtype"]) == (
        "float32", "bfloat16", "bfloat16")  # --use_amp on a CPU: bfloat16, as --dtype bfloat16
    assert half["metrics"]["psnr"] == amp["metrics"]["psnr"] != full["metrics"]["psnr"]
    assert half["metrics"]["psnr"] == pytest.approx(full["metrics"]["psnr"], abs=0.5)
    with pytest.raises(ValueError, match="either dtype .* or use_amp"):
        run(dtype="float32", use_amp=True)


def test_too_many_clips_fails_before_the_detector_is_looked_up(tokenizer, tiny_videos: Path):
    # no detector is available here (offline, empty cache): the clip count error must come first
    with pytest.raises(ValueError, match="asked for 9 clips .* lists only 5 videos"):
        protocols.evaluate_tokenizer(tokenizer, tiny_videos / "data.csv", num_clips=9, lpips=False)


def test_missing_detector_fails_before_any_clip_is_read(tokenizer, tiny_videos: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a clip was read before the detector was found")

    monkeypatch.setattr("larp.data.datasets.read_clip", no_reading)
    with pytest.raises(fvd.DetectorError, match="i3d_torchscript.pt .* was not found"):
        protocols.evaluate_tokenizer(tokenizer, tiny_videos / "data.csv", lpips=False)


def test_protocols_pick_their_split_csv(tiny_videos: Path, tmp_path: Path):
    shutil.copy(tiny_videos / "data.csv", tmp_path / "ucf101_test1.csv")
    heldout = protocols.get_protocol("heldout")
    assert protocols.resolve_protocol_csv(tmp_path, heldout) == tmp_path / "ucf101_test1.csv"
    with pytest.raises(FileNotFoundError, match="without ucf101_train1.csv, the CSV of the 'paper' protocol"):
        protocols.resolve_protocol_csv(tmp_path, protocols.get_protocol("paper"))
    with pytest.raises(ValueError, match=r"unknown protocol 'rfvd'; choose one of \['heldout', 'paper'\]"):
        protocols.get_protocol("rfvd")
    assert (protocols.PROTOCOLS["paper"].expected_videos, protocols.PROTOCOLS["heldout"].expected_videos) == (9537, 3783)


def test_select_clips_is_seeded_and_checked():
    assert protocols.select_clips(4, None, 0) == [0, 1, 2, 3]
    picked = protocols.select_clips(100, 10, 7)
    assert picked == sorted(random.Random(7).sample(range(100), 10)) == protocols.select_clips(100, 10, 7)
    with pytest.raises(ValueError, match="at least 2"):
        protocols.select_clips(100, 1, 0)
    assert protocols.select_clips(100, 1, 0, fvd=False) == sorted(random.Random(0).sample(range(100), 1))
    with pytest.raises(ValueError, match="at least 1"):
        protocols.select_clips(100, 0, 0, fvd=False)


# ------------------------------------------------------------------------------------------ gFVD chunks
def test_gfvd_chunk_index_follows_the_reference_sampling(tiny_videos: Path):
    counts = [40, 15, 16, 33, 64]  # chunks per video: 2, 0, 1, 2, 4 -> 9 in all
    chunks = protocols.ucf_gfvd_chunks(tiny_videos / "data.csv", num_samples=6, frame_counts=counts)
    index = [(v, 16 * i) for v, n in enumerate(counts) for i in range(n // 16)]
    assert len(index) == 9
    expected = [index[i] for i in random.Random(42).sample(range(9), 6)]
    assert [(c.video_index, c.start) for c in chunks] == expected
    assert [c.label for c in chunks] == [v % 2 for v, _ in expected]
    with pytest.raises(ValueError, match="asked for 10 clips but the 5 videos hold only 9 non-overlapping 16-frame"):
        protocols.ucf_gfvd_chunks(tiny_videos / "data.csv", num_samples=10, frame_counts=counts)


def test_gfvd_chunks_probe_videos_and_read_the_chunk(tiny_videos: Path):
    dataset = VideoCSVDataset(tiny_videos / "data.csv", num_frames=4, size=32)
    chunks = protocols.ucf_gfvd_chunks(dataset, num_samples=15, chunk_frames=4)  # 12 frames -> 3 chunks each
    assert sorted((c.video_index, c.start) for c in chunks) == [(v, s) for v in range(5) for s in (0, 4, 8)]
    item = protocols.ChunkDataset(chunks, num_frames=4, size=32)[0]
    frames, _ = read_video(chunks[0].path)
    expected = ClipTransform(32, train=False)(frames[chunks[0].start:chunks[0].start + 4])
    assert item["video"].shape == (3, 4, 32, 32) and item["label"] == chunks[0].label
    np.testing.assert_array_equal(item["video"].numpy(), expected.numpy())


def test_the_whole_split_one_list_is_the_papers_protocol(tokenizer, tiny_videos: Path, trusted_standin: Path,
                                                        monkeypatch):
    """With as many videos as the protocol's list and every one of them, the record keeps the protocol's name."""
    from dataclasses import replace

    paper = replace(protocols.PROTOCOLS["paper"], expected_videos=5)  # the tiny list stands in for split 1
    result = protocols.evaluate_tokenizer(tokenizer, tiny_videos / "data.csv", protocol=paper, batch_size=5,
                                          detector=trusted_standin, lpips=False, progress=False)
    p = result["protocol"]
    assert (p["name"], p["expected_videos"], p["num_clips"]) == ("paper", 5, 5) and "procedure" not in p
