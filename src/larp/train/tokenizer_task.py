"""One step of LARP tokenizer training (spec section 2), and its evaluation.

Generator loss = pixel + perceptual + GAN + VQ + prior CE; the discriminator is updated every k-th step on
the same reconstruction (no second forward pass of the tokenizer)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from larp.data.datasets import VideoClipDataset, VideoCSVDataset, read_video_csv
from larp.data.video_io import write_gif, write_png_grid
from larp.eval.metrics import psnr, ssim
from larp.models.tokenizer import LARPTokenizer
from larp.train.codebook import AntiCollapse, CodebookMonitor
from larp.train.config import DataConfig, OptimConfig, TokenizerTrainConfig
from larp.train.engine import TrainContext
from larp.train.losses import (
    DiscriminatorConfig,
    LeCam,
    PerceptualLoss,
    VideoDiscriminator,
    discriminator_loss,
    generator_adversarial_loss,
    pixel_loss,
    r1_penalty,
    require_vgg_weights,
)


class WarmupCosine:
    """Learning-rate factor: linear warm-up, then cosine from 1 to `min_ratio` at `total` steps."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(opt: torch.optim.Optimizer, optim: OptimConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(optim.warmup_steps, total, optim.min_lr_ratio))


def make_ema(model: nn.Module, decay: float) -> nn.Module | None:
    """An exponential moving average of the weights (timm's ModelEmaV3), or None when decay is 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def training_videos(data: DataConfig, seed: int) -> VideoClipDataset:
    """Random training clips from one or several metadata CSVs (concatenated)."""
    csvs = [data.train_csv] if isinstance(data.train_csv, str) else list(data.train_csv)
    rows = [row for csv in csvs for row in read_video_csv(csv)]
    return VideoClipDataset(rows, data.num_frames, data.size, train=True, seed=seed,
                            max_bad_fraction=data.max_bad_fraction, cache_mb=data.cache_mb)


def init_clips(dataset: VideoClipDataset, n: int, seed: int) -> torch.Tensor:
    """(n, 3, T, H, W) training clips for the data-dependent initialisations, drawn without replacement from
    the whole dataset: metadata CSVs are often sorted by class, and their first rows would be one class."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return torch.stack([dataset.load(int(i), rng)["video"] for i in picks])


class TokenizerTask:
    def __init__(self, recipe: TokenizerTrainConfig, ctx: TrainContext):
        self.recipe, self.ctx = recipe, ctx
        run, data, loss = recipe.run, recipe.data, recipe.loss
        device = ctx.device
        torch.manual_seed(run.seed)  # identical initial weights on every rank
        self.model = LARPTokenizer(recipe.model_config()).to(device)
        mc = self.model.config
        if (data.num_frames, data.size) != (mc.frame_num, mc.input_size):
            raise ValueError(f"data gives {data.num_frames}x{data.size}x{data.size} clips but the tokenizer takes "
                             f"{mc.frame_num}x{mc.input_size}x{mc.input_size}")
        if not data.train_csv:
            raise ValueError("data.train_csv is required (a metadata CSV id,path,action,label)")
        self.train_set = training_videos(data, run.seed)
        if not data.flip:
            self.train_set.transform.flip_p = 0.0
        self.val_set = (VideoCSVDataset(data.val_csv, data.num_frames, data.size, train=False, seed=run.seed,
                                        cache_mb=data.cache_mb) if data.val_csv else None)

        # Losses that need weights are built first, so a missing file fails before any work.
        self.perceptual = PerceptualLoss().to(device) if loss.perceptual_weight > 0 else None
        self.eval_lpips = self.perceptual  # evaluation reports LPIPS whenever the VGG weights are present
        if self.eval_lpips is None and data.val_csv:
            try:
                require_vgg_weights()
                self.eval_lpips = PerceptualLoss().to(device)
            except (FileNotFoundError, ValueError):
                pass
        self.disc: nn.Module | None = None
        if loss.gan_weight > 0:
            d = recipe.discriminator
            self.disc = VideoDiscriminator(DiscriminatorConfig(
                width=d.width, heads=d.heads, depth=d.depth, temporal_patch=mc.temporal_patch_size,
                patch=mc.patch_size, frames=mc.frame_num, size=mc.input_size)).to(device)
            self.lecam = LeCam(loss.lecam_decay).to(device)

        self.anti = AntiCollapse(self.model, recipe.codebook)
        first = None
        if recipe.codebook.init_from_encoder or recipe.codebook.local_linear_init:
            first = init_clips(self.train_set, max(data.batch_size, 64), run.seed).to(device)
        self.anti.setup(first)
        self.ema = make_ema(self.model, run.ema_decay)

        o = recipe.optim
        mults = {"prior_model.": o.prior_lr_mult, "x_embedder.": o.embed_lr_mult, "": 1.0}  # "" = the rest
        parts: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in mults}
        for name, param in self.model.named_parameters():
            parts[next(prefix for prefix in parts if name.startswith(prefix))].append(param)
        groups = [{"params": ps, "lr": o.lr * mults[prefix]} for prefix, ps in parts.items() if ps]
        fused = ctx.device.type == "cuda"  # one kernel per step for all parameters
        self.opt_g = torch.optim.Adam(groups, betas=o.betas, weight_decay=o.weight_decay, fused=fused)
        self.sched_g = make_scheduler(self.opt_g, o, run.max_steps)
        if self.disc is not None:
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=recipe.discriminator.lr,
                                          betas=recipe.discriminator.betas, fused=fused)
            self.sched_d = make_scheduler(self.opt_d, o, run.max_steps)
        self.scaler = ctx.grad_scaler()
        self.train_model = ctx.maybe_compile(ctx.wrap(self.model))
        self.train_disc = ctx.wrap(self.disc) if self.disc is not None else None
        torch.manual_seed(run.seed + 7919 * ctx.rank)  # ranks draw different codes and dropout masks

    # -------------------------------------------------------------------------------------- engine API
    def train_dataset(self) -> VideoClipDataset:
        return self.train_set

    def _clip(self, params: Any, opt: torch.optim.Optimizer) -> float:
        clip = self.recipe.optim.grad_clip
        self.scaler.unscale_(opt)
        if clip <= 0:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(params, clip))

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        loss_cfg, ctx = self.recipe.loss, self.ctx
        video = batch["video"].to(ctx.device, non_blocking=True)
        total_steps = self.recipe.run.max_steps
        self.model.train()
        self.anti.before_step(step)
        gan_on = self.disc is not None and step >= loss_cfg.gan_start_step
        with ctx.autocast():
            out = self.train_model(video, step, total_steps)
            recon = out.recon.float()
            terms = {"pixel": pixel_loss(recon, video, loss_cfg.pixel)}
            total = loss_cfg.pixel_weight * terms["pixel"]
            if loss_cfg.l2_weight > 0 and (loss_cfg.l2_steps == 0 or step < loss_cfg.l2_steps):
                terms["l2"] = pixel_loss(recon, video, "l2")
                total = total + loss_cfg.l2_weight * terms["l2"]
            if self.perceptual is not None:
                terms["lpips"] = self.perceptual(recon, video)
                total = total + loss_cfg.perceptual_weight * terms["lpips"]
            if gan_on:
                self.disc.requires_grad_(False)
                # The plain module: no discriminator gradient here, so no DDP synchronisation either.
                terms["g_adv"] = generator_adversarial_loss(loss_cfg.gan_loss, self.disc(recon))
                total = total + loss_cfg.gan_weight * terms["g_adv"]
            terms["vq"] = out.vq_loss
            total = total + loss_cfg.vq_weight * out.vq_loss
            if out.prior is not None:
                terms["prior_ce"] = out.prior.loss
                total = total + loss_cfg.prior_weight_at(step) * out.prior.loss
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        metrics["loss"] = float(total.detach())
        if not math.isfinite(metrics["loss"]):
            return metrics  # the engine stops before any weight is touched
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        metrics["grad_norm"] = self._clip(self.model.parameters(), self.opt_g)
        self.scaler.step(self.opt_g)
        self.sched_g.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if out.prior is not None:
            metrics["prior_top1"] = float(out.prior.top1)
        indices = out.indices
        if ctx.distributed:  # every rank counts every rank's codes, so they agree on usage and dead codes
            gathered = [torch.empty_like(indices) for _ in range(ctx.world_size)]
            dist.all_gather(gathered, indices.contiguous())  # (gloo has no all_gather_into_tensor)
            indices = torch.stack(gathered)
        metrics.update(self.anti.after_step(step, indices, self.opt_g))
        if ctx.distributed and self.recipe.codebook.dead_code_steps > 0:
            # Re-initialised rows come from each rank's own latents: take rank 0's everywhere.
            dist.broadcast(self.model.bottleneck.regularizer.embedding.weight.data, src=0)
        if gan_on and step % loss_cfg.disc_every == 0:
            metrics.update(self._disc_step(video, recon.detach()))
        self.scaler.update()
        metrics["lr"] = self.sched_g.get_last_lr()[0]
        return metrics

    def _disc_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One discriminator update on the step's own reconstruction (shared, detached)."""
        loss_cfg, ctx = self.recipe.loss, self.ctx
        self.disc.requires_grad_(True)
        real = real.detach().requires_grad_(loss_cfg.r1_weight > 0)
        with ctx.autocast():
            real_logits = self.train_disc(real)
            fake_logits = self.train_disc(fake)
            d_loss = discriminator_loss(loss_cfg.gan_loss, real_logits, fake_logits)
            self.lecam.update(real_logits, fake_logits)
            lecam = self.lecam.penalty(real_logits, fake_logits)
            total = d_loss + loss_cfg.lecam_weight * lecam
            if loss_cfg.r1_weight > 0:
                total = total + loss_cfg.r1_weight / 2 * r1_penalty(real_logits, real)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._clip(self.disc.parameters(), self.opt_d)
        self.scaler.step(self.opt_d)
        self.sched_d.step()
        return {"d_loss": float(d_loss.detach()), "lecam": float(lecam.detach()),
                "d_real": float(real_logits.detach().float().mean()),
                "d_fake": float(fake_logits.detach().float().mean())}

    @torch.no_grad()
    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        """PSNR, SSIM, codebook usage/perplexity and prior accuracy on fixed validation clips, plus pictures."""
        if self.val_set is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        n = min(self.recipe.data.val_clips, len(self.val_set))
        bs = self.recipe.data.batch_size
        monitor = CodebookMonitor(model.codebook_size, window=math.ceil(n / bs))  # usage over all clips
        sums = {"val/psnr": 0.0, "val/ssim": 0.0, "val/prior_top1": 0.0, "val/prior_top5": 0.0}
        shown = None
        for start in range(0, n, bs):
            video = torch.stack([self.val_set[i]["video"] for i in range(start, min(start + bs, n))])
            video = video.to(self.ctx.device)
            with self.ctx.autocast():
                out = model(video, step, self.recipe.run.max_steps, deterministic=True)
            recon = out.recon.float().clamp(0, 1)
            monitor.update(out.indices)
            sums["val/psnr"] += float(psnr(recon, video).sum())
            sums["val/ssim"] += float(ssim(recon, video).sum())
            if self.eval_lpips is not None:
                sums["val/lpips"] = sums.get("val/lpips", 0.0) + float(self.eval_lpips(recon, video)) * video.shape[0]
            if out.prior is not None:
                sums["val/prior_top1"] += float(out.prior.top1) * video.shape[0]
                sums["val/prior_top5"] += float(out.prior.top5) * video.shape[0]
            if shown is None:
                shown = torch.cat([video[:4], recon[:4]]).cpu()  # rows: real clips, then reconstructions
        model.train(was_training)
        metrics = {k: v / n for k, v in sums.items()}
        if model.prior_model is None:
            metrics.pop("val/prior_top1"), metrics.pop("val/prior_top5")
        stats = monitor.stats()
        metrics["val/codebook_usage"] = stats["codebook_usage"]
        metrics["val/codebook_perplexity"] = stats["codebook_perplexity"]
        pictures = out_dir / "samples"
        write_png_grid(pictures / f"recon_step{step:08d}.png", shown)
        write_gif(pictures / f"recon_step{step:08d}.gif", shown)
        return metrics

    def export(self, folder: Path) -> None:
        model = self.ema.module if self.ema is not None else self.model
        model.save_pretrained(folder)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(), "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(), "scaler": self.scaler.state_dict(),
            "codebook": self.anti.state_dict(),
            "temperature": float(self.model.bottleneck.regularizer.temperature),
        }
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict(),
                         sched_d=self.sched_d.state_dict(), lecam=self.lecam.state_dict())
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.scaler.load_state_dict(state["scaler"])
        self.anti.load_state_dict(state["codebook"])
        self.model.bottleneck.regularizer.temperature = state["temperature"]
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])
            self.lecam.load_state_dict(state["lecam"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
