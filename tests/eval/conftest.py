"""A stand-in for the I3D TorchScript detector: same call signature, tiny, built here, trusted by hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from larp.eval import fvd


class StandInI3D(nn.Module):
    """Pools the clip to 3x2x2x2 values and maps them to 400 'features' with a fixed random linear layer."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(24, 400)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(400, 24, generator=generator))
            self.proj.bias.copy_(torch.randn(400, generator=generator))

    def forward(self, x: torch.Tensor, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool3d(x, (2, 2, 2)).flatten(1)
        return self.proj(pooled)


def build_standin(path: Path) -> Path:
    torch.jit.save(torch.jit.script(StandInI3D().eval()), str(path))
    return path


def trust(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Register the file's hash as a trusted detector, for this test only."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(fvd.TRUSTED_DETECTORS, digest, path.stat().st_size)


@pytest.fixture(scope="session")
def standin_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("i3d") / fvd.I3D_FILENAME)


@pytest.fixture
def trusted_standin(standin_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in's path, trusted, with the cache and environment cleared for this test."""
    trust(monkeypatch, standin_file)
    monkeypatch.delenv(fvd.ENV_I3D_PATH, raising=False)
    return standin_file


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's cache or hits the network for the detector."""
    monkeypatch.setenv(fvd.ENV_CACHE, str(tmp_path / "larp-cache"))
    monkeypatch.delenv(fvd.ENV_I3D_PATH, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # CI sets it; the tests that need it set it themselves

    def offline(dest: Path) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(fvd, "_download_dropbox", offline)
    monkeypatch.setattr(fvd, "_download_hf", offline)
    monkeypatch.setattr(fvd, "host_resolves", lambda url: True)  # the stand-in mirrors above are tried


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 12-frame 48x40 mp4 videos of moving coloured gradients in two class folders, plus data.csv."""
    from larp.data.prepare import VideoRow, write_csv
    from larp.data.video_io import write_mp4

    root = tmp_path_factory.mktemp("videos")
    rows = []
    ramp = torch.linspace(0, 1, 48)
    for i in range(5):
        action = ("a", "b")[i % 2]
        t = torch.arange(12, dtype=torch.float32)[:, None, None]
        wave = (ramp[None, None, :] + 0.07 * (i + 1) * t) % 1.0  # (T, 1, W), moves over time
        video = torch.stack([wave.expand(12, 40, 48), torch.full((12, 40, 48), 0.2 * i),
                             (1 - wave).expand(12, 40, 48) * 0.8], dim=0)
        path = write_mp4(root / action / f"v{i}.mp4", video)
        rows.append(VideoRow(id=f"v{i}", path=str(path), action=action, label=i % 2))
    write_csv(root / "data.csv", rows)
    return root
