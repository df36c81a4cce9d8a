"""Reconstruction metrics on videos (B, C, T, H, W) in [0, 1]: PSNR, SSIM and LPIPS, each per video.

Both inputs are clamped to [0, 1] first, as pixels written to a file would be (the decoder's output is not
clamped). Callers average the per-video values over a dataset."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from larp.models.hub import load_state_dict_strict
from larp.utils.errors import CheckpointError
from larp.utils.files import check_file, download_checked, offline_mode

# torchvision's ImageNet VGG-16: the trunk of LPIPS. Its name carries the first SHA-256 digits; the full
# hash pins the exact file (the same value is published next to the file by many projects that verify it).
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG_FILENAME = "vgg16-397923af.pth"
VGG_SIZE = 553_433_881
VGG_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
VGG_HASH_PREFIX = VGG_SHA256[:8]
ENV_VGG_PATH = "LARP_VGG_PATH"
# LPIPS v0.1's linear heads for VGG, shipped inside the lpips wheel (lpips/weights/v0.1/vgg.pth).
LPIPS_HEADS_SIZE = 7_289
LPIPS_HEADS_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"


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
# LPIPS is `lpips.LPIPS(net="vgg", version="0.1")` built on the meta device with nothing loaded by lpips
# (`pretrained=False, pnet_rand=True`): left to itself, lpips has torchvision fetch the VGG-16 file and
# unpickle it without `weights_only`, and reads its own heads with `torch.load`'s default, which unpickles
# arbitrary objects on torch < 2.6. Here both files are checked (size, SHA-256) and read with
# `torch.load(weights_only=True)`, then become the network's tensors. Building on the meta device also
# skips VGG-16's random initialisation (about 10 CPU-seconds).


class LPIPSWeightsError(FileNotFoundError):
    """The VGG-16 ImageNet weights that LPIPS needs are missing and cannot be downloaded."""


def vgg_weights_path() -> Path:
    """Where torchvision keeps the VGG-16 weights: `$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILENAME


_VERIFIED: set[tuple[str, int, int, int]] = set()


def verify_vgg_file(path: str | os.PathLike) -> Path:
    """`path` if it is the VGG-16 file (exact size and SHA-256), else a ValueError naming what differs.

    A file already verified in this process (same path, size, inode and modification time) is not hashed
    again."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns)
    if key not in _VERIFIED:
        check_file(path, VGG_SIZE, VGG_SHA256, f"the VGG-16 weights {VGG_FILENAME} ({VGG_URL})")
        _VERIFIED.add(key)
    return path


def _instructions(target: Path, hint: str) -> str:
    return (f"LPIPS needs torchvision's ImageNet VGG-16 weights {VGG_FILENAME} ({VGG_SIZE:,} bytes, SHA-256 "
            f"{VGG_SHA256}). Download {VGG_URL} (on a connected machine if needed) and put it at {target} "
            f"(the folder follows $TORCH_HOME), or point ${ENV_VGG_PATH} at it{hint}")


def resolve_vgg_weights(path: str | os.PathLike | None = None, *, download: bool = True, hint: str = "") -> Path:
    """The verified VGG-16 file: `path`, else $LARP_VGG_PATH, else torchvision's cache, else downloaded
    into that cache (not when `download` is False or HF_HUB_OFFLINE is set).

    A named file that is missing raises FileNotFoundError; a file that is not the expected one, ValueError;
    a missing file that cannot be fetched, LPIPSWeightsError (a FileNotFoundError). `hint` ends each
    message (e.g. how to go without LPIPS)."""
    named = path if path is not None else os.environ.get(ENV_VGG_PATH) or None
    if named is not None:
        file = Path(named).expanduser()
        if not file.is_file():
            source = "the given path" if path is not None else f"${ENV_VGG_PATH}"
            raise FileNotFoundError(f"{source} {file} does not exist. " + _instructions(file, hint))
        return verify_vgg_file(file)
    target = vgg_weights_path()
    if target.is_file():
        return verify_vgg_file(target)
    if not download or offline_mode():
        why = "and HF_HUB_OFFLINE is set, so nothing is downloaded" if download else "(this command does not download it)"
        raise LPIPSWeightsError(f"{target} is missing {why}. " + _instructions(target, hint))
    try:
        return download_checked(VGG_URL, target, verify_vgg_file)
    except Exception as exc:  # offline, blocked or a bad download: one explanation for all
        raise LPIPSWeightsError(f"downloading {VGG_URL} failed ({type(exc).__name__}: {exc}). "
                                + _instructions(target, hint)) from exc


def lpips_heads_path() -> Path:
    """The lpips wheel's v0.1 VGG heads, checked against their pinned size and SHA-256."""
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    if not path.is_file():
        raise FileNotFoundError(f"the lpips package has no {path}; reinstall lpips (pip install lpips)")
    return check_file(path, LPIPS_HEADS_SIZE, LPIPS_HEADS_SHA256, "the LPIPS v0.1 VGG heads of the lpips wheel")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors; `weights_only=True` refuses any other object in the pickle."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which one
        raise ValueError(f"could not read the weights {path}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, found a {type(state).__name__}")
    return state


def vgg_trunk_state(trunk: nn.Module, vgg_state: dict[str, torch.Tensor], source: str = "VGG-16 weights"
                    ) -> dict[str, torch.Tensor]:
    """Map torchvision VGG-16 keys (`features.{i}.weight`) onto the lpips trunk (`slice{k}.{i}.weight`).

    lpips names each layer of its slices by its index in `vgg16().features`, so the mapping is by that
    index. Every trunk tensor must be found with the same shape; other keys (the classifier) are ignored."""
    mapped: dict[str, torch.Tensor] = {}
    for name, ref in trunk.state_dict().items():
        _, index, leaf = name.split(".")  # slice{k}.{i}.{weight|bias}
        key = f"features.{index}.{leaf}"
        if key not in vgg_state:
            raise ValueError(f"{source}: missing '{key}' (needed for the LPIPS trunk's '{name}')")
        value = vgg_state[key]
        if value.shape != ref.shape:
            raise ValueError(f"{source}: '{key}' has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        mapped[name] = value
    return mapped


def _random_trunk(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision's initialisation of VGG's convolutions (Kaiming normal, fan out, zero bias)."""
    state = {}
    for name, ref in trunk.state_dict().items():
        value = torch.zeros(ref.shape)
        if name.endswith("weight"):
            nn.init.kaiming_normal_(value, mode="fan_out", nonlinearity="relu")
        state[name] = value
    return state


def build_lpips(pretrained_trunk: bool = True, *, vgg_path: str | os.PathLike | None = None,
                download: bool = True, hint: str = "") -> nn.Module:
    """`lpips.LPIPS(net="vgg", version="0.1")` on the CPU, frozen and in eval mode, its weights loaded as
    described above. `pretrained_trunk=False` gives a random trunk (for tests: its numbers mean nothing)
    and needs no download. See `resolve_vgg_weights` for `vgg_path`, `download` and `hint`."""
    import lpips

    # Check and read the files first, so that a missing or bad one fails before anything is built.
    vgg = _read_tensors(resolve_vgg_weights(vgg_path, download=download, hint=hint)) if pretrained_trunk else None
    heads_file = lpips_heads_path()
    heads = _read_tensors(heads_file)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about lpips's `pretrained=`
        model = lpips.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    source = str(vgg_path or "VGG-16 weights") if vgg is not None else "random trunk"
    trunk = vgg_trunk_state(model.net, vgg, source) if vgg is not None else _random_trunk(model.net)
    # `lins` is a ModuleList of the same heads as lin0..lin4: both names get the same tensor.
    aliases = {f"lins.{k[3:]}": v for k, v in heads.items() if k.startswith("lin") and k[3:4].isdigit()}
    state = {**{f"net.{k}": v for k, v in trunk.items()}, **heads, **aliases,
             **{f"scaling_layer.{k}": v for k, v in model.scaling_layer.state_dict().items()}}
    try:
        load_state_dict_strict(model, state, f"LPIPS weights ({source}, {heads_file})")
    except CheckpointError as exc:
        raise ValueError(str(exc)) from exc
    return model.requires_grad_(False).eval()


class LPIPSMetric:
    """LPIPS (the `lpips` package, VGG, version 0.1) per frame with inputs in [0, 1], averaged per video.

    Built by `build_lpips` (which see for `pretrained_trunk`, `vgg_path` and `download`)."""

    def __init__(self, device: str | torch.device = "cpu", pretrained_trunk: bool = True,
                 frame_batch: int = 64, *, vgg_path: str | os.PathLike | None = None, download: bool = True):
        self.model = build_lpips(pretrained_trunk, vgg_path=vgg_path, download=download,
                                 hint=", or evaluate without LPIPS (--no_lpips)").to(device)
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
