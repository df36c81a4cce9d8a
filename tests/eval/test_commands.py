from __future__ import annotations

import json
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

from larp.cli import main
from larp.eval import fvd
from tests.conftest import official
from tests.eval.conftest import trust


@pytest.fixture
def video_folders(tiny_videos: Path, tmp_path: Path) -> tuple[Path, Path]:
    """'real' = videos 0-2, 'fake' = videos 2-4, flat folders."""
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    videos = sorted(tiny_videos.rglob("*.mp4"))
    for v in videos[:3]:
        shutil.copy(v, real / v.name)
    for v in videos[2:]:
        shutil.copy(v, fake / v.name)
    return real, fake


def test_fvd_folders_then_statistics_give_the_same_number(trusted_standin: Path, video_folders, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv(fvd.ENV_I3D_PATH, str(trusted_standin))
    real, fake = video_folders
    stats_dir, out = tmp_path / "stats", tmp_path / "fvd.json"
    assert main(["fvd", str(real), str(fake), "--num_frames", "8", "--size", "32", "--batch_size", "2",
                 "--device", "cpu", "--out", str(out), "--stats_dir", str(stats_dir)]) == 0
    result = json.loads(out.read_text())
    assert f"FVD {result['fvd']:.4f} (3 real, 3 generated)" in capsys.readouterr().out
    assert result["real"] == {"source": str(real), "kind": "videos", "count": 3}
    assert result["detector"]["sha256"] == fvd.sha256_of(trusted_standin)
    assert (result["clips"]["num_frames"], result["clips"]["size"]) == (8, 32)
    assert result["fvd"] > 0
    # the saved statistics reproduce the number without videos or detector
    monkeypatch.delenv(fvd.ENV_I3D_PATH)
    out2 = tmp_path / "fvd2.json"
    assert main(["fvd", str(stats_dir / "real.npz"), str(stats_dir / "fake.npz"), "--out", str(out2)]) == 0
    again = json.loads(out2.read_text())
    assert again["fvd"] == pytest.approx(result["fvd"], rel=1e-12)
    assert again["detector"] is None and again["fake"]["kind"] == "statistics"


def test_fvd_of_a_folder_with_itself_is_zero(trusted_standin: Path, video_folders, tmp_path: Path):
    real, _ = video_folders
    out = tmp_path / "self.json"
    assert main(["fvd", str(real), str(real), "--num_frames", "8", "--size", "32", "--device", "cpu",
                 "--i3d_path", str(trusted_standin), "--out", str(out), "--stats_dir", str(tmp_path)]) == 0
    stats = fvd.FeatureStats.load(tmp_path / "real.npz")
    # 3 clips give a rank-2 covariance: sqrtm of a singular product is accurate relative to its scale only
    assert abs(json.loads(out.read_text())["fvd"]) < 1e-6 * 2 * float(stats.cov.trace())


def test_an_untrusted_detector_is_refused_by_the_command(standin_file: Path, video_folders,
                                                         monkeypatch: pytest.MonkeyPatch, capsys):
    # the stand-in is not registered as trusted here: nothing on the command line can make it load
    real, fake = video_folders
    monkeypatch.setenv(fvd.ENV_I3D_PATH, str(standin_file))
    assert main(["fvd", str(real), str(fake), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "larp fvd: error: refusing to load" in err and fvd.I3D_SHA256 in err


def test_fvd_bad_inputs(tmp_path: Path, capsys):
    (tmp_path / "one").mkdir()
    assert main(["fvd", str(tmp_path / "one"), str(tmp_path / "nothing")]) == 1
    assert "holds 0 video files" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hi")
    assert main(["fvd", str(tmp_path / "x.txt"), str(tmp_path / "x.txt")]) == 1
    assert "x.txt is neither a folder of videos nor an .npz statistics file" in capsys.readouterr().err


def test_eval_tokenizer_writes_metrics_with_the_protocol(trusted_standin: Path, tiny_videos: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys):
    folder = official("tokenizer_tiny")
    monkeypatch.setenv(fvd.ENV_I3D_PATH, str(trusted_standin))
    out = tmp_path / "metrics.json"
    assert main(["eval", "tokenizer", "--tokenizer", str(folder), "--dataset_csv", str(tiny_videos / "data.csv"),
                 "--protocol", "heldout", "--num_clips", "3", "--seed", "5", "--no_lpips", "--det",
                 "--device", "cpu", "--out", str(out), "--stats_dir", str(tmp_path / "stats")]) == 0
    result = json.loads(out.read_text())
    # the reported rFVD is the distance between the saved real and reconstruction statistics
    real, recon = (fvd.FeatureStats.load(tmp_path / "stats" / f"{n}.npz") for n in ("real", "recon"))
    assert real.count == recon.count == 3
    assert result["metrics"]["rfvd"] == pytest.approx(fvd.fvd(real, recon), rel=1e-12)
    assert sorted(result["metrics"]) == ["psnr", "rfvd", "ssim"]
    assert result["tokenizer"] == str(folder)
    p = result["protocol"]
    assert (p["name"], p["procedure"], p["split"], p["num_clips"], p["seed"], p["lpips"]) == (
        "custom", "heldout", "test", 3, 5, None)
    assert f"rFVD {result['metrics']['rfvd']:.3f}" in capsys.readouterr().out


def test_eval_tokenizer_errors_before_work(trusted_standin: Path, tiny_videos: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys):
    folder = str(official("tokenizer_tiny"))
    csv = str(tiny_videos / "data.csv")
    monkeypatch.setenv(fvd.ENV_I3D_PATH, str(trusted_standin))
    assert main(["eval", "tokenizer", "--tokenizer", folder, "--dataset_csv", csv, "--num_clips", "50",
                 "--device", "cpu"]) == 1
    assert "asked for 50 clips (one per video) but the dataset CSV lists only 5 videos" in capsys.readouterr().err

    # LPIPS on (the default) without the VGG weights and offline: named file and folder, no clip read
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    def no_reading(*args, **kwargs):
        raise AssertionError("a clip was read before the checks")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr("larp.data.datasets.read_clip", no_reading)
    assert main(["eval", "tokenizer", "--tokenizer", folder, "--dataset_csv", csv, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "vgg16-397923af.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err


def test_trust_helper_is_scoped_to_the_test(standin_file: Path, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as m:
        trust(m, standin_file)
        assert fvd.verify_detector_file(standin_file) == standin_file
    with pytest.raises(fvd.DetectorError, match="refusing to load"):
        fvd.verify_detector_file(standin_file)


def test_eval_tokenizer_without_the_detector(tiny_videos: Path, tmp_path: Path, capsys):
    """--no_fvd: PSNR and SSIM without the I3D file (the autouse fixture makes every download fail)."""
    folder = str(official("tokenizer_tiny"))
    csv = str(tiny_videos / "data.csv")
    argv = ["eval", "tokenizer", "--tokenizer", folder, "--dataset_csv", csv, "--no_lpips", "--device", "cpu",
            "--num_clips", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("larp eval tokenizer: error: the I3D detector i3d_torchscript.pt")
    assert str(tmp_path / "larp-cache" / fvd.I3D_FILENAME) in err and "--no_fvd" in err  # where, and the way out
    out = tmp_path / "m.json"
    assert main([*argv, "--no-fvd", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(result["metrics"]) == ["psnr", "ssim"] and result["protocol"]["detector"] is None
    assert capsys.readouterr().out.startswith(f"PSNR {result['metrics']['psnr']:.3f}  SSIM")
    assert main([*argv, "--no_fvd", "-o", str(out)]) == 1  # the JSON exists
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--no_fvd", "-o", str(out), "--overwrite", "--seed", "1"]) == 0


def test_fvd_checks_numbers_and_outputs(trusted_standin: Path, video_folders, tmp_path: Path, capsys):
    real, fake = video_folders
    with pytest.raises(SystemExit) as exc:
        main(["fvd", str(real), str(fake), "--num-frames", "0"])
    assert exc.value.code == 2 and "expected an integer >= 1, got '0'" in capsys.readouterr().err
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "fake.npz").write_bytes(b"old")
    assert main(["fvd", str(real), str(fake), "--stats-dir", str(tmp_path / "stats"),
                 "--i3d-path", str(trusted_standin)]) == 1
    assert capsys.readouterr().err == (f"larp fvd: error: {tmp_path / 'stats' / 'fake.npz'} exists already (file); "
                                       "pass --overwrite to replace it\n")


def test_the_command_line_names_the_detector_variable():
    from larp.eval.commands import ENV_I3D_PATH

    assert ENV_I3D_PATH == fvd.ENV_I3D_PATH
