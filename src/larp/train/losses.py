"""Losses of the tokenizer training (docs/method.md, training recipes).

- `pixel_loss`: L1 or L2 reconstruction loss, optionally weighted per pixel (`motion_weights`).
- `PerceptualLoss`: LPIPS-VGG (the `lpips` package, version 0.1) on every frame.
- `VideoDiscriminator`: the transformer discriminator over 3-D patches, and its losses: the non-saturating
  loss with one-sided label smoothing (`d_loss_smoothed_bce`, `g_loss_non_saturating`), the hinge loss
  (`d_loss_hinge`, `g_loss_hinge`), LeCam regularisation (`LeCam`) and the R1 penalty (`r1_penalty`).

The VQ loss and the prior cross-entropy come from the tokenizer's forward pass (`TokenizerOutput`).
Every loss returns a float32 scalar, whatever the dtype of its inputs (mixed precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from larp.eval.metrics import VGG_FILENAME, VGG_SIZE, VGG_URL, build_lpips, resolve_vgg_weights
from larp.models.layers import PatchEmbed3D, block_rows, init_vit_weights_, sincos_3d, vit_block

# ---------------------------------------------------------------------------------------------------------
# Pixel loss
# ---------------------------------------------------------------------------------------------------------


def pixel_loss(recon: Tensor, target: Tensor, kind: Literal["l1", "l2"] = "l1",
               weights: Tensor | None = None) -> Tensor:
    """Mean absolute ("l1") or squared ("l2") error over all elements.

    weights: per-pixel weights broadcastable to the videos (e.g. `motion_weights`); the loss is then the
    weighted mean, sum(w * err) / sum(w), so its scale stays that of the unweighted loss."""
    if recon.shape != target.shape:
        raise ValueError(f"pixel_loss: recon has shape {tuple(recon.shape)} but target has "
                         f"{tuple(target.shape)}; expected equal shapes")
    if kind not in ("l1", "l2"):
        raise ValueError(f"pixel_loss: kind must be 'l1' or 'l2', got {kind!r}")
    if weights is None:
        return (F.l1_loss if kind == "l1" else F.mse_loss)(recon.float(), target.float())
    diff = recon.float() - target.float()
    err = diff.abs() if kind == "l1" else diff.square()
    w = weights.float().expand_as(err)
    return (w * err).sum() / w.sum()


def motion_weights(video: Tensor, weight: float, threshold: float = 0.1) -> Tensor:
    """(B, 1, T, H, W) pixel weights 1 + weight * m for videos (B, C, T, H, W) in [0, 1].

    m in [0, 1] is how far a pixel is from its own median over the clip's frames (the largest channel
    difference over `threshold`, capped at 1): what moves, or is covered or uncovered by what moves, against
    the static rest. Under a plain mean a small moving object is a few percent of the pixels and its
    errors hardly count next to the background's (docs/studies/demo.md measured the effect on the synthetic
    clips). A clip where everything changes (camera motion, cuts) gets nearly uniform weights."""
    if video.dim() != 5:
        raise ValueError(f"motion_weights: expected videos (B, C, T, H, W), got shape {tuple(video.shape)}")
    if weight < 0 or threshold <= 0:
        raise ValueError(f"motion_weights: expected weight >= 0 and threshold > 0, got {weight} and {threshold}")
    with torch.no_grad():
        v = video.float()
        distance = (v - v.median(dim=2, keepdim=True).values).abs().amax(dim=1, keepdim=True)
        return 1 + weight * (distance / threshold).clamp(max=1)


# ---------------------------------------------------------------------------------------------------------
# Perceptual loss (LPIPS-VGG)
# ---------------------------------------------------------------------------------------------------------

# The one LPIPS of larp is built by larp.eval.metrics.build_lpips (files checked, nothing unpickled);
# training never downloads the VGG-16 file, so that a run fails at once instead of fetching 553 MB.
VGG16_FILE, VGG16_URL, VGG16_BYTES = VGG_FILENAME, VGG_URL, VGG_SIZE
_HINT = ", or train with perceptual_weight=0, which runs without it"


def require_vgg_weights() -> Path:
    """Path of the verified VGG-16 weights (see `larp.eval.metrics.resolve_vgg_weights`); never downloads.

    Raises FileNotFoundError (naming the file, the folder and the URL) when the file is absent, and
    ValueError when it is not the expected file (wrong size or SHA-256, e.g. an interrupted download)."""
    return resolve_vgg_weights(download=False, hint=_HINT)


class PerceptualLoss(nn.Module):
    """Mean LPIPS-VGG (v0.1) over all frames of (B, 3, T, H, W) videos in [0, 1]; frozen, always eval.

    The network is `larp.eval.metrics.build_lpips`'s (the same as evaluation's); the VGG-16 file must
    already be present. `pretrained_trunk=False` keeps a random trunk (tests only)."""

    def __init__(self, pretrained_trunk: bool = True):
        super().__init__()
        self.lpips = build_lpips(pretrained_trunk, download=False, hint=_HINT)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        # LPIPS has dropout in its linear heads; it must never switch to training behaviour.
        return super().train(False)

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        if recon.shape != target.shape or recon.dim() != 5 or recon.shape[1] != 3:
            raise ValueError(f"PerceptualLoss expects two (B, 3, T, H, W) videos of the same shape, got "
                             f"{tuple(recon.shape)} and {tuple(target.shape)}")
        frames_recon = rearrange(recon, "b c t h w -> (b t) c h w")
        frames_target = rearrange(target, "b c t h w -> (b t) c h w")
        return self.lpips(frames_recon, frames_target, normalize=True).float().mean()


# ---------------------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DiscriminatorConfig:
    """The video discriminator; the defaults are the released recipe's (width 512, 8 heads, 12 layers)."""

    width: int = 512
    heads: int = 8
    depth: int = 12
    temporal_patch: int = 4
    patch: int = 8
    frames: int = 16
    size: int = 128
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"discriminator width {self.width} is not divisible by its {self.heads} heads")
        if self.width % 4:
            raise ValueError(f"discriminator width must be divisible by 4 (3-D sin-cos PE), got {self.width}")
        if self.frames % self.temporal_patch:
            raise ValueError(f"discriminator frames {self.frames} are not divisible by its temporal patch "
                             f"{self.temporal_patch}")
        if self.size % self.patch:
            raise ValueError(f"discriminator size {self.size} is not divisible by its patch {self.patch}")
        if min(self.depth, self.in_channels) < 1:
            raise ValueError(f"discriminator depth and in_channels must be >= 1, got {self.depth} and "
                             f"{self.in_channels}")

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames // self.temporal_patch, self.size // self.patch, self.size // self.patch)


class VideoDiscriminator(nn.Module):
    """Transformer over 3-D patches with a learned CLS token; (B, C, T, H, W) in [0, 1] -> (B,) logits.

    The videos go in as they are, in [0, 1] (real clips and the raw, unclamped reconstructions), as in the
    reference training. Patches get the fixed 3-D sin-cos embedding of the tokenizer; the CLS token (first
    position) gets none. Pre-norm ViT blocks (qkv without bias), then LayerNorm and Linear -> 1 on the CLS
    token. `load_reference_state_dict` reads a discriminator saved by the reference implementation."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        self.patch_embed = PatchEmbed3D(config.in_channels, config.width, config.temporal_patch, config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        # Fixed, so not saved: it is rebuilt from the config.
        self.register_buffer("pos_embed", sincos_3d(config.width, *config.grid), persistent=False)
        self.blocks = nn.ModuleList([vit_block(config.width, config.heads) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        self.head = nn.Linear(config.width, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        init_vit_weights_(self, self.patch_embed)  # the tokenizer's initialisation
        nn.init.xavier_uniform_(self.cls_token)  # as the reference

    def forward(self, video: Tensor) -> Tensor:
        c = self.config
        expected = (c.in_channels, c.frames, c.size, c.size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"VideoDiscriminator expects (B, {c.in_channels}, {c.frames}, {c.size}, {c.size}) "
                             f"videos in [0, 1], got {tuple(video.shape)}")
        x = self.patch_embed(video) + self.pos_embed  # (B, Np, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks[:-1]:
            x = block(x)
        cls = block_rows(self.blocks[-1], x, slice(0, 1))[:, 0]  # only the CLS position is read
        return self.head(self.norm(cls)).squeeze(-1)

    def load_reference_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load weights named as the reference's `TransformerDiscriminator` (`x_embedder.proj`,
        `transformer_encoder.blocks.{i}`, `norm_final`, `fc`, `cls_token`, and the fixed `encoder_pos_embed`,
        which must equal this model's own table)."""
        renamed: dict[str, Tensor] = {}
        for name, value in state.items():
            if name == "encoder_pos_embed":
                if tuple(value.shape) != tuple(self.pos_embed.shape) or not torch.allclose(
                        value.float(), self.pos_embed.float().cpu().to(value.device), atol=1e-6):
                    raise ValueError("encoder_pos_embed of the reference discriminator is not the 3-D sin-cos "
                                     f"table of a {self.config.grid} grid of width {self.config.width}")
                continue
            renamed[from_reference_disc_name(name)] = value
        missing, unexpected = self.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise ValueError(f"not a reference discriminator of this shape: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")


# The reference's module names -> larp's (the blocks' inner names are the same: timm's).
_REFERENCE_DISC_NAMES = (("x_embedder.", "patch_embed."), ("transformer_encoder.blocks.", "blocks."),
                         ("norm_final.", "norm."), ("fc.", "head."))


def from_reference_disc_name(name: str) -> str:
    """The name in `VideoDiscriminator` of a tensor of the reference's `TransformerDiscriminator`."""
    for old, new in _REFERENCE_DISC_NAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


# ---------------------------------------------------------------------------------------------------------
# Adversarial losses
# ---------------------------------------------------------------------------------------------------------

LABEL_NOISE_STD = 0.15


def _normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normals of like's shape, drawn on the generator's device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)


def smoothed_targets(real_logits: Tensor, fake_logits: Tensor, generator: torch.Generator | None = None,
                     noise: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Noisy targets: real 1 - 0.15 |n_r| clamped >= 0.7, fake 0.15 |n_f| clamped <= 0.3.

    The standard normals n_r, n_f are `noise` when given (replayed draws), else drawn from `generator` (the
    global RNG if None), the real ones first."""
    if noise is None:
        noise = (_normal(real_logits, generator), _normal(fake_logits, generator))
    real_n, fake_n = ((n.float().reshape(x.shape) * LABEL_NOISE_STD).abs().to(x.device)
                      for n, x in zip(noise, (real_logits, fake_logits), strict=True))
    return (1.0 - real_n).clamp(min=0.7), fake_n.clamp(max=0.3)


def d_loss_smoothed_bce(real_logits: Tensor, fake_logits: Tensor, generator: torch.Generator | None = None,
                        noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Discriminator loss, non-saturating with noisy one-sided label smoothing (`smoothed_targets`):
    mean BCE-with-logits on the real logits + mean BCE-with-logits on the fake ones (summed, as the
    reference; no 0.5)."""
    real_t, fake_t = smoothed_targets(real_logits, fake_logits, generator, noise)
    real = F.binary_cross_entropy_with_logits(real_logits.float(), real_t)
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), fake_t)
    return real + fake


def d_loss_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake)), as the reference's hinge loss."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def g_loss_non_saturating(fake_logits: Tensor) -> Tensor:
    """-mean(log sigmoid(fake)), computed stably as mean(softplus(-fake))."""
    return F.softplus(-fake_logits.float()).mean()


def g_loss_hinge(fake_logits: Tensor) -> Tensor:
    """-mean(fake)."""
    return -fake_logits.float().mean()


def discriminator_loss(kind: Literal["bce", "hinge"], real_logits: Tensor, fake_logits: Tensor,
                       generator: torch.Generator | None = None,
                       noise: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """`d_loss_smoothed_bce` ("bce", which uses `generator` or the given label `noise`) or `d_loss_hinge`
    ("hinge")."""
    if kind == "bce":
        return d_loss_smoothed_bce(real_logits, fake_logits, generator, noise)
    if kind == "hinge":
        return d_loss_hinge(real_logits, fake_logits)
    raise ValueError(f"discriminator loss kind must be 'bce' or 'hinge', got {kind!r}")


def generator_adversarial_loss(kind: Literal["bce", "hinge"], fake_logits: Tensor) -> Tensor:
    """`g_loss_non_saturating` ("bce") or `g_loss_hinge` ("hinge")."""
    if kind == "bce":
        return g_loss_non_saturating(fake_logits)
    if kind == "hinge":
        return g_loss_hinge(fake_logits)
    raise ValueError(f"generator adversarial loss kind must be 'bce' or 'hinge', got {kind!r}")


class LeCam(nn.Module):
    """LeCam regularisation (Tseng et al., 2021) as the reference computes it: EMAs of the mean real and
    mean fake logits, and the penalty of the batch means against them.

    penalty = relu(mean(real) - ema_fake)^2 + relu(ema_real - mean(fake))^2, with the EMAs as they were
    before this step; `update` then moves them: ema = decay * ema + (1 - decay) * mean. Both start at 0.
    The EMAs live in buffers so they are checkpointed; the caller applies the weight."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, real_mean: Tensor, fake_mean: Tensor) -> None:
        """Move the EMAs towards the batch means of the real and fake logits (scalars or logits)."""
        self.ema_real.mul_(self.decay).add_(real_mean.detach().float().mean(), alpha=1.0 - self.decay)
        self.ema_fake.mul_(self.decay).add_(fake_mean.detach().float().mean(), alpha=1.0 - self.decay)
        self.num_updates.add_(1)

    def penalty(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return (F.relu(real_logits.float().mean() - self.ema_fake).pow(2)
                + F.relu(self.ema_real - fake_logits.float().mean()).pow(2))


def r1_penalty(real_logits: Tensor, real_inputs: Tensor) -> Tensor:
    """Mean over the batch of ||d D(x) / d x||^2 (summed over all input elements of a sample).

    No 1/2 or gamma here: the caller multiplies by gamma / 2. `real_inputs` must require grad and be the
    tensor that produced `real_logits`; the result keeps the graph (create_graph) so it can be trained."""
    if not real_inputs.requires_grad:
        raise ValueError("r1_penalty needs real_inputs with requires_grad=True (call "
                         "real.requires_grad_(True) before the discriminator's forward pass)")
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()
