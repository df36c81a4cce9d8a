"""Reconstruction metrics on videos (B, C, T, H, W) in [0, 1]: PSNR, SSIM and LPIPS, each per video.

Both inputs are clamped to [0, 1] first, as pixels written to a file would be (the decoder's output is not
clamped). Callers average the per-video values over a dataset."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG_FILENAME = "vgg16-397923af.pth"
VGG_SIZE = 553_433_881
VGG_HASH_PREFIX = "397923af"  # torchvision's file names carry the first SHA-256 digits


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"expected two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape or x.ndim != 5:
        raise ValueError(f"expected two videos of the same shape (B, C, T, H, W), got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"expected float videos in [0, 1], got {x.dtype} and {y.dtype}")


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), clamped to [0, 1], float32."""
    b, c, t, h, w = video.shape
    return video.float().clamp(0, 1).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def psnr(x: torch.Tensor, y: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """Per-video PSNR (B,) in dB: −10·log10(MSE over the whole video), data range 1.

    Identical videos would give +inf; the value is capped at `max_db` so that a dataset mean stays finite."""
    _check_pair(x, y)
    mse = (x.float().clamp(0, 1) - y.float().clamp(0, 1)).pow(2).flatten(1).mean(dim=1)
    return (-10 * torch.log10(mse.clamp_min(10 ** (-max_db / 10))))


def gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> torch.Tensor:
    """The normalised 1-D Gaussian (size,) centred on the middle sample."""
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size // 2)
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of (N, C, H, W), each channel on its own."""
    c, k = x.shape[1], window.numel()
    x = F.conv2d(x, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-video SSIM (B,): Gaussian window 11, σ 1.5, data range 1, K1 0.01, K2 0.03, no padding,
    averaged over pixels, channels and frames (the definition of pytorch-msssim's `ssim`)."""
    _check_pair(x, y)
    b, _, t, h, w = x.shape
    if min(h, w) < window_size:
        raise ValueError(f"SSIM needs frames of at least {window_size}x{window_size}, got {h}x{w}")
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    window = gaussian_window(window_size, sigma, x.device)
    fx, fy = _frames(x), _frames(y)
    mu_x, mu_y = _blur(fx, window), _blur(fy, window)
    var_x = _blur(fx * fx, window) - mu_x ** 2
    var_y = _blur(fy * fy, window) - mu_y ** 2
    cov = _blur(fx * fy, window) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    per_frame = (luminance * contrast_structure).flatten(1).mean(dim=1)  # mean over channels and pixels
    return per_frame.view(b, t).mean(dim=1)


# ------------------------------------------------------------------------------------------ LPIPS
class LPIPSWeightsError(RuntimeError):
    """The VGG-16 ImageNet weights that LPIPS needs are missing and cannot be downloaded."""


def vgg_weights_path() -> Path:
    """Where torchvision looks for the VGG-16 weights: `$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILENAME


def ensure_vgg_weights() -> Path:
    """Make sure the VGG-16 weights are in torchvision's cache before lpips asks for them.

    A missing file is fetched (hash-checked by torch.hub); offline, one error names the file and folder."""
    path = vgg_weights_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(VGG_URL, str(path), hash_prefix=VGG_HASH_PREFIX, progress=False)
        except Exception as exc:  # offline, blocked or a bad download: one explanation for all
            raise LPIPSWeightsError(
                f"LPIPS (VGG) needs torchvision's ImageNet weights {VGG_FILENAME} ({VGG_SIZE:,} bytes) in "
                f"{path.parent}, and downloading them from {VGG_URL} failed ({type(exc).__name__}: {exc}). "
                f"Copy the file there (the folder follows $TORCH_HOME), or evaluate without LPIPS") from exc
    size = path.stat().st_size
    if size != VGG_SIZE:
        raise LPIPSWeightsError(f"{path} has {size:,} bytes, expected {VGG_SIZE:,}: the file is damaged; "
                                f"delete it and download {VGG_URL} again")
    return path


class LPIPSMetric:
    """LPIPS (the `lpips` package, VGG, version 0.1) per frame with inputs in [0, 1], averaged per video.

    `pretrained_trunk=False` builds a random VGG trunk that needs no download: for tests only, its
    numbers mean nothing."""

    def __init__(self, device: str | torch.device = "cpu", pretrained_trunk: bool = True,
                 frame_batch: int = 64):
        import lpips

        if pretrained_trunk:
            ensure_vgg_weights()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notes about lpips's `pretrained=`
            self.model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=not pretrained_trunk, verbose=False)
        self.model.eval().requires_grad_(False).to(device)
        self.frame_batch = frame_batch

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> LPIPSMetric:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-video LPIPS (B,) on the metric's device."""
        _check_pair(x, y)
        b, t = x.shape[0], x.shape[2]
        fx, fy = _frames(x.to(self.device)), _frames(y.to(self.device))
        scores = [self.model(fx[i:i + self.frame_batch], fy[i:i + self.frame_batch], normalize=True).flatten()
                  for i in range(0, fx.shape[0], self.frame_batch)]
        return torch.cat(scores).view(b, t).mean(dim=1)

