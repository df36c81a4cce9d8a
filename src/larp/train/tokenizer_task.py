"""One step of LARP tokenizer training, and its evaluation.

A step, numbered from 1 as in the reference implementation (docs/method.md, training):
1. learning rates of the step (every group of an optimiser follows one schedule);
2. the tokenizer's forward pass: codes, reconstruction, VQ loss, the prior's cross-entropy;
3. on every `disc_every`-th step, the discriminator's update on this step's reconstruction (detached);
4. the generator loss = pixel + perceptual + GAN (through the discriminator just updated) + VQ + prior
   CE, and the tokenizer's update.
With gradient accumulation a step runs the k micro-batches one after the other, each loss divided by k,
and updates once: every loss term is a mean over the batch, so the update is the one of the whole batch.
On a discriminator step the micro-batches' reconstructions are computed first without gradients, with
the same random draws, so that the discriminator is updated before any generator loss. The exceptions are
batch statistics: the entropy loss (`vq.entropy_loss_weight`) and the LeCam penalty are computed per
micro-batch; LeCam's averages are updated once with the means over all micro-batches."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from larp.data.datasets import VideoClipDataset
from larp.data.video_io import write_gif, write_png_grid
from larp.eval.reconstruction import reconstruction_metrics
from larp.models.tokenizer import LARPTokenizer
from larp.train.codebook import AntiCollapse, quantizer_of
from larp.train.config import OptimConfig, TokenizerTrainConfig, resolve_epochs
from larp.train.data import init_clips, training_videos, validation_videos
from larp.train.draws import GivenDraws
from larp.train.engine import TrainContext
from larp.train.finetune import freeze, load_init_weights
from larp.train.losses import (
    DiscriminatorConfig,
    LeCam,
    PerceptualLoss,
    VideoDiscriminator,
    discriminator_loss,
    generator_adversarial_loss,
    motion_weights,
    pixel_loss,
    r1_penalty,
    require_vgg_weights,
)
from larp.train.optim import (
    fused_adam,
    make_ema,
    make_schedule,
    prefix_groups,
    remember_base_lrs,
    set_lr_factor,
)

__all__ = ["TokenizerTask", "init_clips", "training_videos"]

log = logging.getLogger("larp.train")


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return rows[0] if len(rows) == 1 else {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def lr_multipliers(optim: OptimConfig) -> dict[str, float]:
    """Learning-rate multiplier by parameter-name prefix, the first match counting ("" = the rest): the prior
    and the patch embedding have their own (the order of the optimiser's groups)."""
    return {"prior_model.": optim.prior_lr_mult, "x_embedder.": optim.embed_lr_mult, "": 1.0}


class TokenizerTask:
    """`draws` replays given random draws (`larp.train.draws.GivenDraws`); None: every draw is random."""

    def __init__(self, recipe: TokenizerTrainConfig, ctx: TrainContext, draws: GivenDraws | None = None):
        self.recipe, self.ctx = recipe, ctx
        self.draws = draws or GivenDraws()
        run, data, spec = recipe.run, recipe.data, recipe.model
        device = ctx.device
        torch.manual_seed(run.seed)  # identical initial weights on every rank
        self.model = LARPTokenizer(recipe.model_config()).to(device)
        mc = self.model.config
        if (data.num_frames, data.size) != (mc.frame_num, mc.input_size):
            raise ValueError(f"data gives {data.num_frames}x{data.size}x{data.size} clips but the tokenizer takes "
                             f"{mc.frame_num}x{mc.input_size}x{mc.input_size}")
        if not data.train_csv:
            raise ValueError("data.train_csv is required (a metadata CSV id,path,action,label)")
        if spec.init_from:
            log.info("fine-tuning from %s", load_init_weights(self.model, spec.init_from))
        self.train_set = training_videos(data, run.seed)
        self.val_set = validation_videos(data, run.seed)
        resolve_epochs(recipe, len(self.train_set), ctx.world_size)  # epochs -> steps, before the schedules

        self._build_losses()  # first: a missing weights file fails before any work
        self.anti = AntiCollapse(self.model, recipe.codebook)
        if spec.init_from:  # the initialisations are for a model trained from scratch
            log.info("codebook/initialisation options skipped: the weights come from %s", spec.init_from)
        else:
            first = None
            if recipe.codebook.init_from_encoder or recipe.codebook.local_linear_init:
                first = init_clips(self.train_set, max(data.batch_size, 64), run.seed).to(device)
            self.anti.setup(first)
        if spec.freeze:
            log.info("frozen: %s (%d tensors)", ", ".join(spec.freeze), len(freeze(self.model, spec.freeze)))
        self.ema = make_ema(self.model, run.ema_decay)
        self._build_optimisers()
        self.scaler = ctx.grad_scaler()  # the generator's; the discriminator has its own, as the reference
        self.scaler_d = ctx.grad_scaler()
        self.train_model = ctx.maybe_compile(ctx.wrap(self.model))
        self.train_disc = ctx.wrap(self.disc) if self.disc is not None else None
        torch.manual_seed(run.seed + 7919 * ctx.rank)  # ranks draw different codes and dropout masks

    def _build_losses(self) -> None:
        """The perceptual loss (and LPIPS for evaluation), the discriminator and LeCam."""
        recipe, device, mc = self.recipe, self.ctx.device, self.model.config
        loss = recipe.loss
        self.perceptual = PerceptualLoss().to(device) if loss.perceptual_weight > 0 else None
        self.eval_lpips = self.perceptual  # evaluation reports LPIPS whenever the VGG weights are present
        if self.eval_lpips is None and recipe.data.val_csv:
            try:
                require_vgg_weights()
                self.eval_lpips = PerceptualLoss().to(device)
            except (FileNotFoundError, ValueError):
                pass
        self.disc: nn.Module | None = None
        if loss.gan_weight > 0:
            d = recipe.discriminator
            self.disc = VideoDiscriminator(DiscriminatorConfig(
                width=d.width, heads=d.heads, depth=d.depth, temporal_patch=d.temporal_patch or mc.temporal_patch_size,
                patch=d.patch or mc.patch_size, frames=mc.frame_num, size=mc.input_size)).to(device)
            self.lecam = LeCam(loss.lecam_decay).to(device)

    def _build_optimisers(self) -> None:
        """Adam for the tokenizer (learning-rate multipliers for the prior and the patch embedding; frozen
        parts left out) and for the discriminator, each with its warm-up and cosine schedule over the run's
        steps (the discriminator's follows the step number, whether or not it updates at that step)."""
        o, run = self.recipe.optim, self.recipe.run
        groups = prefix_groups(self.model, o.lr, lr_multipliers(o))
        fused = fused_adam(self.ctx.device)
        self.opt_g = torch.optim.Adam(groups, betas=o.betas, weight_decay=o.weight_decay, fused=fused)
        remember_base_lrs(self.opt_g)
        self.schedule_g = make_schedule(o, run.max_steps)
        if self.disc is not None:
            d = self.recipe.discriminator
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=d.lr, betas=d.betas, fused=fused)
            remember_base_lrs(self.opt_d)
            self.schedule_d = make_schedule(o, run.max_steps, d.warmup_steps)

    # -------------------------------------------------------------------------------------- engine API
    def train_dataset(self) -> VideoClipDataset:
        return self.train_set

    def close(self) -> None:
        self.anti.close()

    def _clip(self, params: Any, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> float:
        clip = self.recipe.optim.grad_clip
        if clip <= 0:
            return 0.0
        scaler.unscale_(opt)
        return float(torch.nn.utils.clip_grad_norm_(params, clip))

    def _forward(self, video: torch.Tensor, number: int) -> Any:
        """The tokenizer's forward pass at step `number` (from 1), with any given draws."""
        d = self.draws
        return self.train_model(video, number, self.recipe.run.max_steps,
                                deterministic=True if d.argmax_codes else None, ss_mask=d.ss_mask(number),
                                argmax_picks=d.argmax_picks, prior_codebook_grad=self.recipe.loss.prior_codebook_grad)

    def _generator_loss(self, video: torch.Tensor, out: Any, step: int, gan_on: bool
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss_cfg = self.recipe.loss
        recon = out.recon.float()
        weights = motion_weights(video, loss_cfg.motion_weight) if loss_cfg.motion_weight > 0 else None
        terms = {"pixel": pixel_loss(recon, video, loss_cfg.pixel, weights)}
        total = loss_cfg.pixel_weight * terms["pixel"]
        if loss_cfg.l2_weight > 0 and (loss_cfg.l2_steps == 0 or step < loss_cfg.l2_steps):
            terms["l2"] = pixel_loss(recon, video, "l2", weights)
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
        if weights is not None:  # the weighted L1/L2 are not the batch's error: report its plain MSE too
            terms["mse"] = pixel_loss(recon.detach(), video, "l2")
        return total, terms

    @property
    def disc_updates(self) -> int:
        """The discriminator's updates so far (LeCam's averages move once per update and are checkpointed)."""
        return int(self.lecam.num_updates) if self.disc is not None else 0

    def _set_learning_rates(self, number: int) -> float:
        lr = set_lr_factor(self.opt_g, self.schedule_g(number))
        if self.disc is not None:
            set_lr_factor(self.opt_d, self.schedule_d(number))
        return lr

    def train_step(self, batch: dict[str, Any] | list[dict[str, Any]], step: int) -> dict[str, float]:
        """One optimiser step on `batch`, or on the micro-batches of a list (gradients accumulated).

        `step` counts the steps done before this one; this step's number is `step + 1`."""
        loss_cfg, ctx = self.recipe.loss, self.ctx
        micro = [batch] if isinstance(batch, dict) else list(batch)
        k = len(micro)
        number = step + 1
        self.model.train()
        lr = self._set_learning_rates(number)
        self.anti.before_step(step)
        gan_on = self.disc is not None and step >= loss_cfg.gan_start_step
        disc_now = self.disc is not None and step >= loss_cfg.disc_start and number % loss_cfg.disc_every == 0
        videos = [b["video"].to(ctx.device, non_blocking=True) for b in micro]
        d_metrics: dict[str, float] = {}
        if disc_now and k > 1:
            d_metrics = self._disc_step_before(videos, number)
        rows, indices, top1 = [], [], []
        self.opt_g.zero_grad(set_to_none=True)
        for i, video in enumerate(videos):
            with ctx.no_sync(self.train_model, sync=i == k - 1):
                with ctx.autocast():
                    out = self._forward(video, number)
                if disc_now and k == 1:
                    d_metrics = self._disc_step(videos, [out.recon.detach().float()])
                with ctx.autocast():
                    total, terms = self._generator_loss(video, out, step, gan_on)
                metrics = {name: float(v.detach()) for name, v in terms.items()}
                metrics["loss"] = float(total.detach())
                if not math.isfinite(metrics["loss"]):
                    return metrics  # the engine stops before the tokenizer's weights are touched
                self.scaler.scale(total if k == 1 else total / k).backward()
            rows.append(metrics)
            indices.append(out.indices)
            if out.prior is not None:
                top1.append(float(out.prior.top1))
        metrics = _mean(rows)
        metrics["grad_norm"] = self._clip(self.model.parameters(), self.opt_g, self.scaler)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        if top1:
            metrics["prior_top1"] = sum(top1) / len(top1)
        codes = indices[0] if k == 1 else torch.cat(indices)
        if ctx.distributed:  # every rank counts every rank's codes, so they agree on usage and dead codes
            gathered = [torch.empty_like(codes) for _ in range(ctx.world_size)]
            dist.all_gather(gathered, codes.contiguous())  # (gloo has no all_gather_into_tensor)
            codes = torch.stack(gathered)
        metrics.update(self.anti.after_step(step, codes, self.opt_g))
        if ctx.distributed and self.recipe.codebook.dead_code_steps > 0:
            # Re-initialised rows come from each rank's own latents: take rank 0's everywhere.
            for param in quantizer_of(self.model).parameters():
                dist.broadcast(param.data, src=0)
        metrics.update(d_metrics)
        metrics["lr"] = lr
        return metrics

    def _disc_step_before(self, videos: list[torch.Tensor], number: int) -> dict[str, float]:
        """With accumulation: the micro-batches' reconstructions without gradients, then the discriminator's
        update on them. The random state is restored afterwards, so that the forward passes with gradients
        that follow draw the same codes (the label noise stays a draw of its own)."""
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            with torch.no_grad(), self.ctx.autocast():
                fakes = [self._forward(v, number).recon.float() for v in videos]
            return self._disc_step(videos, fakes)

    def _disc_step(self, reals: list[torch.Tensor], fakes: list[torch.Tensor]) -> dict[str, float]:
        """One discriminator update on the step's own reconstructions (detached): smoothed BCE (or hinge)
        + lecam_weight x the LeCam penalty against the averages before this update, which then move."""
        loss_cfg, ctx = self.recipe.loss, self.ctx
        k = len(reals)
        noise = self.draws.d_noise(self.disc_updates + 1)
        self.disc.requires_grad_(True)
        rows, real_means, fake_means = [], [], []
        self.opt_d.zero_grad(set_to_none=True)
        for i in range(k):
            real = reals[i].detach().requires_grad_(loss_cfg.r1_weight > 0)
            with ctx.no_sync(self.train_disc, sync=i == k - 1):
                with ctx.autocast():
                    real_logits = self.train_disc(real)
                    fake_logits = self.train_disc(fakes[i].detach())
                    d_loss = discriminator_loss(loss_cfg.gan_loss, real_logits, fake_logits, noise=noise)
                    lecam = self.lecam.penalty(real_logits, fake_logits)
                    total = d_loss + loss_cfg.lecam_weight * lecam
                    if loss_cfg.r1_weight > 0:
                        total = total + loss_cfg.r1_weight / 2 * r1_penalty(real_logits, real)
                self.scaler_d.scale(total if k == 1 else total / k).backward()
            real_means.append(real_logits.detach().float().mean())
            fake_means.append(fake_logits.detach().float().mean())
            rows.append({"d_loss": float(d_loss.detach()), "lecam": float(lecam.detach()),
                         "d_total": float(total.detach()),
                         "d_real": float(real_means[-1]), "d_fake": float(fake_means[-1])})
        self.lecam.update(torch.stack(real_means).mean(), torch.stack(fake_means).mean())
        self._clip(self.disc.parameters(), self.opt_d, self.scaler_d)
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        self.disc.requires_grad_(False)
        return _mean(rows)

    @torch.no_grad()
    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        """PSNR, SSIM (LPIPS), codebook usage/perplexity and the prior's accuracy on fixed validation clips,
        measured by `larp.eval.reconstruction.reconstruction_metrics`, plus pictures."""
        if self.val_set is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        n = min(self.recipe.data.val_clips, len(self.val_set))
        bs = self.recipe.data.batch_size
        batches = (torch.stack([self.val_set[i]["video"] for i in range(start, min(start + bs, n))])
                   for start in range(0, n, bs))
        has_prior = model.prior_model is not None
        result = reconstruction_metrics(batches, model, device=self.ctx.device, dtype=self.ctx.amp_dtype,
                                        lpips=self._clip_lpips if self.eval_lpips is not None else None,
                                        prior=has_prior, keep_examples=4)
        model.train(was_training)
        keys = ["psnr", "ssim", "lpips", "codebook_usage", "codebook_perplexity"]
        keys += ["prior_top1", "prior_top5", "prior_ce"] if has_prior else []
        metrics = {f"val/{k}": result.metrics[k] for k in keys if k in result.metrics}
        shown = torch.cat(result.examples)  # rows: real clips, then their reconstructions
        pictures = out_dir / "samples"
        write_png_grid(pictures / f"recon_step{step:08d}.png", shown)
        write_gif(pictures / f"recon_step{step:08d}.gif", shown)
        return metrics

    def _clip_lpips(self, recon: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Per-clip LPIPS (B,) from the mean-over-frames perceptual loss."""
        return torch.stack([self.eval_lpips(recon[i:i + 1], video[i:i + 1]) for i in range(len(video))])

    def export(self, folder: Path) -> None:
        from larp.train.export import run_card_fields  # the card: recipe, data, last evaluation

        model = self.ema.module if self.ema is not None else self.model
        model.save_pretrained(folder, **run_card_fields(self.recipe.run.out_dir, self.ctx.world_size))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(), "opt_g": self.opt_g.state_dict(), "scaler": self.scaler.state_dict(),
            "codebook": self.anti.state_dict(),
            "temperature": float(quantizer_of(self.model).temperature),
        }
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict(),
                         scaler_d=self.scaler_d.state_dict(),
                         lecam=self.lecam.state_dict())
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.scaler.load_state_dict(state["scaler"])
        self.anti.load_state_dict(state["codebook"])
        quantizer_of(self.model).set_temperature(state["temperature"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.scaler_d.load_state_dict(state["scaler_d"])
            self.lecam.load_state_dict(state["lecam"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
