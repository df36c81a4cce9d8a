from __future__ import annotations

import math
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from larp.eval import metrics
from larp.eval.metrics import LPIPSMetric, LPIPSWeightsError, psnr, ssim


def test_psnr_of_known_mse_per_video():
    x = torch.full((2, 3, 4, 8, 8), 0.5)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1, :, :2] += 0.2  # half the values off by 0.2: MSE 0.02 -> 16.9897 dB
    values = psnr(x, y)
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(-10 * math.log10(0.02), abs=1e-4)


def test_psnr_clamps_inputs_and_caps_identical():
    x = torch.zeros(1, 3, 2, 4, 4)
    assert psnr(x, x + 1.5).item() == pytest.approx(0.0, abs=1e-6)  # 1.5 clamps to 1: MSE 1
    assert psnr(x, x).item() == pytest.approx(100.0)


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Independent SSIM of one (H, W) image pair: scipy Gaussian filter (11 taps), interior crop."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(a):
        return gaussian_filter(a, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))))


def test_ssim_matches_an_independent_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 3, 24, 20, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(x, y)
    for b in range(2):
        ref = np.mean([reference_ssim(x[b, c, t].numpy(), y[b, c, t].numpy()) for c in range(3) for t in range(3)])
        assert ours[b].item() == pytest.approx(ref, abs=1e-5)
    assert 0.2 < ours.min().item() < 0.95


def test_ssim_identical_is_one_and_constant_images_by_hand():
    x = torch.rand(1, 3, 2, 16, 16)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    # constant images a, b: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.6, 1e-4
    value = ssim(torch.full((1, 1, 1, 12, 12), a), torch.full((1, 1, 1, 12, 12), b)).item()
    assert value == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="at least 11x11, got 8x16"):
        ssim(torch.rand(1, 3, 2, 8, 16), torch.rand(1, 3, 2, 8, 16))
    with pytest.raises(ValueError, match=r"same shape \(B, C, T, H, W\), got \(1, 3, 2, 8, 8\) and \(1, 3, 2, 8, 9\)"):
        psnr(torch.rand(1, 3, 2, 8, 8), torch.rand(1, 3, 2, 8, 9))


# ------------------------------------------------------------------------------------------ LPIPS
@pytest.fixture(scope="module")
def random_lpips() -> LPIPSMetric:
    return LPIPSMetric(pretrained_trunk=False, frame_batch=3)


def test_lpips_is_per_frame_and_averaged_per_video(random_lpips: LPIPSMetric):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 4, 32, 32, generator=g)
    y = torch.rand(2, 3, 4, 32, 32, generator=g)
    values = random_lpips(x, y)
    assert values.shape == (2,)
    per_frame = [random_lpips.model(x[1, :, t][None], y[1, :, t][None], normalize=True).item() for t in range(4)]
    assert values[1].item() == pytest.approx(float(np.mean(per_frame)), rel=1e-5)
    assert random_lpips(x, x).abs().max().item() < 1e-6


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")


def test_missing_vgg_weights_that_cannot_be_downloaded_name_file_and_folder(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(LPIPSWeightsError) as info:
        LPIPSMetric(pretrained_trunk=True)
    text = str(info.value)
    assert metrics.VGG_FILENAME in text and str(tmp_path / "torch" / "hub" / "checkpoints") in text
    assert metrics.VGG_URL in text and "553,433,881 bytes" in text and metrics.VGG_SHA256 in text
    assert "URLError" in text and "--no_lpips" in text and "LARP_VGG_PATH" in text
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []  # no partial file left


def test_offline_mode_fails_fast_without_trying_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(LPIPSWeightsError, match="is missing and HF_HUB_OFFLINE is set, so nothing is downloaded"):
        LPIPSMetric(pretrained_trunk=True)


def test_without_download_the_message_says_nothing_is_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(LPIPSWeightsError, match=r"vgg16-397923af.pth is missing \(this command does not download "
                                                r"it\)\. LPIPS needs"):
        metrics.resolve_vgg_weights(download=False)


def test_damaged_vgg_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = metrics.vgg_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="has 9 bytes, expected 553,433,881"):
        metrics.resolve_vgg_weights()


def _stand_in_vgg(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Bytes of a stand-in VGG-16 state dict (the trunk's shapes), pinned as the expected file."""
    import hashlib
    import io

    model = metrics.build_lpips(pretrained_trunk=False)
    state = {f"features.{k.split('.', 1)[1]}": v.clone() for k, v in model.net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    monkeypatch.setattr(metrics, "VGG_SIZE", len(data))
    monkeypatch.setattr(metrics, "VGG_SHA256", hashlib.sha256(data).hexdigest())
    return data


def test_download_is_verified_then_renamed_with_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import io
    import os

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = _stand_in_vgg(monkeypatch)
    served = [data[:-1] + b"x", data]  # a corrupted transfer first, then the right bytes
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served.pop(0)))
    with pytest.raises(LPIPSWeightsError, match="has SHA-256 [0-9a-f]{64}, expected"):
        metrics.resolve_vgg_weights()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert list(folder.iterdir()) == []
    old = os.umask(0o022)
    try:
        path = metrics.resolve_vgg_weights()
    finally:
        os.umask(old)
    assert path == folder / metrics.VGG_FILENAME and path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o644


def test_env_path_is_used_and_verified_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from larp.utils import files

    data = _stand_in_vgg(monkeypatch)
    file = tmp_path / "weights" / "vgg.pth"
    monkeypatch.setenv("LARP_VGG_PATH", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=r"\$LARP_VGG_PATH .*missing.pth does not exist"):
        metrics.resolve_vgg_weights()
    file.parent.mkdir()
    file.write_bytes(data)
    monkeypatch.setenv("LARP_VGG_PATH", str(file))
    hashed = []
    real = files.sha256_of
    monkeypatch.setattr(files, "sha256_of", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("torchvision download"))
    assert metrics.resolve_vgg_weights() == file
    first = LPIPSMetric(pretrained_trunk=True)
    assert hashed.count(file) == 1  # verified once per process while the file is unchanged
    assert torch.equal(first.model.net.slice1.get_submodule("0").weight,
                       torch.load(file, weights_only=True)["features.0.weight"])
