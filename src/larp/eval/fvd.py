"""Fréchet Video Distance: the I3D detector (found, verified, loaded), feature statistics and the distance.

The detector is the TorchScript port of the TF-Hub I3D used by StyleGAN-V and LARP.
Loading TorchScript runs code from the file, so every file is checked against the pinned size and SHA-256
before `torch.jit.load` sees it; a file that does not match is refused. Statistics files are plain .npz
arrays, never unpickled, read within size limits."""

from __future__ import annotations

import os
import shutil
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from larp.utils.errors import LarpError
from larp.utils.files import (
    NpzArchive,
    atomic_write_bytes,
    hf_endpoint,
    host_resolves,
    offline_mode,
    sha256_of,
)

I3D_FILENAME = "i3d_torchscript.pt"
I3D_SIZE = 51_235_320
I3D_SHA256 = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"
I3D_DROPBOX_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
I3D_HF_REPO = "flateon/FVD-I3D-torchscript"
I3D_FEATURE_DIM = 400
ENV_I3D_PATH = "LARP_I3D_PATH"
ENV_CACHE = "LARP_CACHE"
MAX_STATS_DIM = 8192  # feature statistics of up to 8,192 dimensions (I3D: 400); Σxᵀx is then 512 MiB

# SHA-256 -> size of the detector files this module agrees to load. Only the official file is listed;
# tests add the hash of a stand-in they build (monkeypatch.setitem), which no user input can do.
TRUSTED_DETECTORS: dict[str, int] = {I3D_SHA256: I3D_SIZE}


class DetectorError(LarpError):
    """The I3D detector file is missing, cannot be fetched, or is not the expected file."""


# ------------------------------------------------------------------------------------------ detector file
def cache_dir() -> Path:
    """`$LARP_CACHE`, else `~/.cache/larp`."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "larp"


def verify_detector_file(path: str | os.PathLike) -> Path:
    """Return `path` if its size and SHA-256 are those of a trusted detector; raise DetectorError if not."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"I3D detector file {path} does not exist")
    size = path.stat().st_size
    if size not in TRUSTED_DETECTORS.values():
        raise DetectorError(
            f"refusing to load {path}: expected {I3D_FILENAME} of {I3D_SIZE:,} bytes (SHA-256 {I3D_SHA256}), "
            f"found {size:,} bytes. TorchScript files run code when loaded, so only the pinned file is used; "
            "delete it and fetch the file again")
    digest = sha256_of(path)
    if TRUSTED_DETECTORS.get(digest) != size:
        raise DetectorError(
            f"refusing to load {path}: expected SHA-256 {I3D_SHA256} ({I3D_SIZE:,} bytes), found SHA-256 "
            f"{digest} ({size:,} bytes). TorchScript files run code when loaded, so only the pinned file "
            "is used; delete it and fetch the file again")
    return path


def _download_dropbox(dest: Path) -> None:
    """Fetch the StyleGAN-V Dropbox mirror into `dest`."""
    with urllib.request.urlopen(I3D_DROPBOX_URL, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _download_hf(dest: Path) -> None:
    """Fetch the Hugging Face mirror (through the hub cache, so HF_HUB_OFFLINE / HF_HOME apply) into `dest`."""
    from huggingface_hub import hf_hub_download

    shutil.copyfile(hf_hub_download(I3D_HF_REPO, I3D_FILENAME), dest)


def _missing_message(target: Path, failures: list[str]) -> str:
    tried = "; ".join(failures) if failures else "nothing tried"
    return (
        f"the I3D detector {I3D_FILENAME} ({I3D_SIZE:,} bytes, SHA-256 {I3D_SHA256}) was not found and could "
        f"not be downloaded ({tried}). Download it on a connected machine from {I3D_DROPBOX_URL} or "
        f"https://huggingface.co/{I3D_HF_REPO} (file {I3D_FILENAME}), then put it at {target}, or set "
        f"{ENV_I3D_PATH}, or pass --i3d_path; or leave FVD out with --no_fvd (larp eval tokenizer, larp sample)")


def download_detector(target: Path) -> Path:
    """Fetch the detector from the mirrors into `target`: temp file, size and hash check, then rename.

    With HF_HUB_OFFLINE set nothing is tried: one error says where to put the file."""
    if offline_mode():
        raise DetectorError(_missing_message(target, ["HF_HUB_OFFLINE is set, so nothing was downloaded"]))
    failures: list[str] = []
    for name, fetch, url in (("Dropbox", _download_dropbox, I3D_DROPBOX_URL),
                             ("Hugging Face", _download_hf, hf_endpoint())):
        if not host_resolves(url):  # no network: fail now, not after the hub client's retries
            failures.append(f"{name}: {urllib.parse.urlsplit(url).hostname} cannot be resolved (no network?)")
            continue
        try:
            atomic_write_bytes(target, lambda tmp: (fetch(Path(tmp)), verify_detector_file(tmp)))  # noqa: B023
            return target
        except Exception as exc:  # any mirror failure: record it and try the next one
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    raise DetectorError(_missing_message(target, failures))


def resolve_detector_path(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Find the verified detector file: `path`, else $LARP_I3D_PATH, else the cache, else download.

    An explicit path or environment variable that names a missing file is an error (no silent fallback)."""
    if path is not None:
        if not Path(path).expanduser().is_file():
            raise DetectorError(f"--i3d_path {path} does not exist; expected the {I3D_FILENAME} file "
                                f"({I3D_SIZE:,} bytes, SHA-256 {I3D_SHA256})")
        return verify_detector_file(Path(path).expanduser())
    env = os.environ.get(ENV_I3D_PATH)
    if env:
        if not Path(env).expanduser().is_file():
            raise DetectorError(f"{ENV_I3D_PATH}={env} does not exist; expected the {I3D_FILENAME} file "
                                f"({I3D_SIZE:,} bytes, SHA-256 {I3D_SHA256})")
        return verify_detector_file(Path(env).expanduser())
    cached = cache_dir() / I3D_FILENAME
    if cached.is_file():
        return verify_detector_file(cached)
    if not download:
        raise DetectorError(_missing_message(cached, ["download disabled"]))
    return download_detector(cached)


def load_detector(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  *, download: bool = True) -> torch.jit.ScriptModule:
    """Resolve, verify and load the I3D TorchScript detector onto `device`, in eval mode."""
    file = resolve_detector_path(path, download=download)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's TorchScript deprecation note: nothing to act on
        detector = torch.jit.load(str(file), map_location=device)
    detector.eval()
    return detector


# ------------------------------------------------------------------------------------------ features
def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU when it has neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(detector: torch.nn.Module, videos: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """(B, 3, T, H, W) videos in [0, 1] -> (B, 400) float64 I3D features, computed on the detector's device."""
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[1] != 3:
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"expected videos as a float tensor (B, 3, T, H, W) in [0, 1], got {shape}")
    if not videos.is_floating_point():
        raise ValueError(f"expected float videos in [0, 1], got dtype {videos.dtype} (convert uint8 with / 255)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = module_device(detector)
    out = []
    for start in range(0, videos.shape[0], batch_size):
        x = videos[start:start + batch_size].to(device=device, dtype=torch.float32)
        # The detector takes [-1, 1] and resizes to 224 itself; this is LARP's call.
        feats = detector((x - 0.5) * 2, resize=True, return_features=True)
        if feats.ndim != 2 or feats.shape[0] != x.shape[0]:
            raise ValueError(f"the detector returned shape {tuple(feats.shape)} for {x.shape[0]} videos; "
                             "expected (B, features)")
        out.append(feats.detach().to("cpu", torch.float64).numpy())
    if not out:
        return np.zeros((0, I3D_FEATURE_DIM), dtype=np.float64)
    return np.concatenate(out, axis=0)


class I3DFeatureExtractor:
    """A loaded detector plus its batch size: `extractor(videos) -> (B, 400) float64 features`."""

    def __init__(self, detector: torch.nn.Module, batch_size: int = 32):
        self.detector = detector
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             batch_size: int = 32) -> I3DFeatureExtractor:
        return cls(load_detector(path, device), batch_size)

    @property
    def device(self) -> torch.device:
        return module_device(self.detector)

    def __call__(self, videos: torch.Tensor) -> np.ndarray:
        return extract_features(self.detector, videos, self.batch_size)


# ------------------------------------------------------------------------------------------ statistics
STATS_KEYS = ("count", "feature_sum", "outer_sum")


@dataclass(eq=False)
class FeatureStats:
    """Running float64 sums of features: N, Σx and Σxᵀx. Shards merge exactly by adding the sums."""

    dim: int = I3D_FEATURE_DIM
    count: int = 0
    feature_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    outer_sum: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.feature_sum is None:
            self.feature_sum = np.zeros(self.dim, dtype=np.float64)
        if self.outer_sum is None:
            self.outer_sum = np.zeros((self.dim, self.dim), dtype=np.float64)

    def add(self, features: np.ndarray | torch.Tensor) -> FeatureStats:
        """Add a (n, dim) batch of features."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (n, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values")
        self.count += x.shape[0]
        self.feature_sum += x.sum(axis=0)
        self.outer_sum += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another shard's sums into this one (in place)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim}-d features into {self.dim}-d ones")
        self.count += other.count
        self.feature_sum += other.feature_sum
        self.outer_sum += other.outer_sum
        return self

    def _require(self, n: int) -> None:
        if self.count < n:
            raise ValueError(f"statistics hold {self.count} feature vectors; at least {n} needed")

    @property
    def mean(self) -> np.ndarray:
        self._require(1)
        return self.feature_sum / self.count

    @property
    def cov(self) -> np.ndarray:
        """Covariance dividing by N (not N−1), as the FVD reference does."""
        self._require(1)
        mu = self.mean
        return self.outer_sum / self.count - np.outer(mu, mu)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz (plain arrays, no pickle) atomically."""
        path = Path(path)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez(f, count=np.int64(self.count), feature_sum=self.feature_sum, outer_sum=self.outer_sum)

        atomic_write_bytes(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        path = Path(path)
        expected = ("an .npz with count (), feature_sum (D,) and outer_sum (D, D) written by FeatureStats.save")
        if not path.is_file():
            raise FileNotFoundError(f"feature statistics file {path} does not exist")
        try:
            with open(path, "rb") as f:
                if f.read(6) == b"\x93NUMPY":
                    raise ValueError("a single .npy array, not an .npz archive")
            with NpzArchive(path) as data:  # never unpickled; sizes checked before reading
                missing = [k for k in STATS_KEYS if k not in data.names]
                if missing:
                    raise ValueError(f"missing keys {missing} (found {data.names})")
                count = data.read("count", 8)
                fsum = data.read("feature_sum", 8 * MAX_STATS_DIM)
                dim = fsum.shape[0] if fsum.ndim == 1 else MAX_STATS_DIM
                osum = data.read("outer_sum", 8 * dim * dim)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path} is not valid feature statistics ({exc}); expected {expected}") from exc
        problems = []
        if count.shape != () or not np.issubdtype(count.dtype, np.integer) or int(count) < 0:
            problems.append(f"count must be a non-negative integer scalar, found {count.dtype} {count.shape}")
        if fsum.ndim != 1 or osum.shape != (fsum.shape[0], fsum.shape[0]):
            problems.append(f"shapes must be (D,) and (D, D), found {fsum.shape} and {osum.shape}")
        elif not (np.issubdtype(fsum.dtype, np.floating) and np.issubdtype(osum.dtype, np.floating)):
            problems.append(f"sums must be floats, found {fsum.dtype} and {osum.dtype}")
        elif not (np.isfinite(fsum).all() and np.isfinite(osum).all()):
            problems.append("sums contain NaN or infinite values")
        if problems:
            raise ValueError(f"{path} is not valid feature statistics: {'; '.join(problems)}; expected {expected}")
        return cls(dim=fsum.shape[0], count=int(count), feature_sum=fsum.astype(np.float64),
                   outer_sum=osum.astype(np.float64))


# ------------------------------------------------------------------------------------------ distance
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) in float64, with scipy's sqrtm.

    As is usual for FID/FVD: when the square root is not finite (near-singular product), retry with eps·I
    added to both covariances; drop an imaginary part that is numerical noise, refuse a large one."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"mismatched shapes: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular products; handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the matrix square root has a large imaginary part "
                             f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are not valid")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fvd(stats_real: FeatureStats, stats_fake: FeatureStats) -> float:
    """FVD between two sets of feature statistics (each needs at least 2 vectors)."""
    for name, stats in (("real", stats_real), ("generated", stats_fake)):
        if stats.count < 2:
            raise ValueError(f"the {name} statistics hold {stats.count} feature vectors; FVD needs at least 2")
    return frechet_distance(stats_real.mean, stats_real.cov, stats_fake.mean, stats_fake.cov)
