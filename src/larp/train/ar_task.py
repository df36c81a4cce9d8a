"""One step of AR training: class-conditional or frame prediction, from a token cache or from clips encoded
on the fly by the frozen tokenizer (deterministic codes). With gradient accumulation a step runs the k
micro-batches one after the other, each loss divided by k (the loss is a mean over tokens, and every
micro-batch has as many), and updates once."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from larp.data.video_io import write_gif, write_png_grid
from larp.models.ar import LARPAR
from larp.models.tokenizer import LARPTokenizer
from larp.sample.condition import check_pair, pad_context
from larp.sample.generate import generate
from larp.train.ar_init import embed_codebook
from larp.train.config import ARTrainConfig, resolve_epochs
from larp.train.data import training_videos, validation_videos
from larp.train.draws import GivenDraws
from larp.train.engine import TrainContext
from larp.train.finetune import load_init_weights
from larp.train.optim import (
    decay_groups,
    fused_adam,
    make_ema,
    make_schedule,
    remember_base_lrs,
    set_lr_factor,
)
from larp.train.token_cache import TokenCacheDataset, check_cache_tokenizer

__all__ = ["ARTask", "check_pair", "decay_groups"]

log = logging.getLogger("larp.train")


class ARTask:
    """`draws` replays given class-label drops (`larp.train.draws.GivenDraws`); None: they are drawn."""

    def __init__(self, recipe: ARTrainConfig, ctx: TrainContext, draws: GivenDraws | None = None):
        self.recipe, self.ctx = recipe, ctx
        self.draws = draws or GivenDraws()
        run, data, o = recipe.run, recipe.data, recipe.optim
        torch.manual_seed(run.seed)
        self.model = LARPAR(recipe.model_config()).to(ctx.device)
        if recipe.model.init_from:
            log.info("fine-tuning from %s", load_init_weights(self.model, recipe.model.init_from,
                                                              recipe.model.class_rows))
        self.fp = self.model.config.frame_prediction
        self.tokenizer: LARPTokenizer | None = None
        if recipe.tokenizer.path:
            self.tokenizer = LARPTokenizer.from_pretrained(recipe.tokenizer.path).to(ctx.device).eval()
            self.tokenizer.requires_grad_(False)
            check_pair(self.tokenizer, self.model)
            if recipe.model.codebook_init:
                embed_codebook(self.model, self.tokenizer.bottleneck.regularizer.codebook)
                log.info("token embeddings and output head start from the tokenizer's codebook")
        if data.token_cache:
            self.train_set: Any = TokenCacheDataset(data.token_cache)
            meta = self.train_set.meta
            if self.tokenizer is not None:
                check_cache_tokenizer(meta, self.tokenizer, data.token_cache)
            if (meta.codebook_size, meta.num_tokens) != (self.model.config.vocab_size, self.model.config.max_seq_len):
                raise ValueError(f"token cache {data.token_cache} holds {meta.num_tokens} tokens of a "
                                 f"{meta.codebook_size}-code book; the AR model expects {self.model.config.max_seq_len} "
                                 f"of {self.model.config.vocab_size}")
            if self.fp and meta.fp_context_frames != recipe.num_cond_frames:
                raise ValueError(f"token cache {data.token_cache} stores {meta.fp_context_frames} context frames, "
                                 f"the recipe asks for num_cond_frames={recipe.num_cond_frames}")
        else:
            if self.tokenizer is None or not data.train_csv:
                raise ValueError("AR training needs data.token_cache, or tokenizer.path and data.train_csv to "
                                 "encode clips on the fly")
            self.train_set = training_videos(data, run.seed)
        self.val_set = validation_videos(data, run.seed) if self.tokenizer is not None else None
        # Epochs -> steps, before the schedules. An epoch is one clip per training video, as the reference's:
        # a token cache's windows and mirror images count once per video.
        resolve_epochs(recipe, getattr(self.train_set, "num_videos", len(self.train_set)), ctx.world_size)
        self.ema = make_ema(self.model, run.ema_decay)
        self.opt = torch.optim.AdamW(decay_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas,
                                     fused=fused_adam(ctx.device))
        remember_base_lrs(self.opt)
        self.schedule = make_schedule(o, run.max_steps)
        self.scaler = ctx.grad_scaler()
        self.train_model = ctx.maybe_compile(ctx.wrap(self.model))
        torch.manual_seed(run.seed + 7919 * ctx.rank)

    def train_dataset(self) -> Any:
        return self.train_set

    @torch.no_grad()
    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, N), cond) for a batch of cache entries or of clips."""
        dev = self.ctx.device
        if "tokens" in batch:
            tokens = batch["tokens"].to(dev)
            cond = batch["cond"].to(dev) if self.fp else batch["label"].to(dev)
        else:
            video = batch["video"].to(dev)
            tokens = self.tokenizer.encode(video, deterministic=True)
            cond = (self.tokenizer.encode(pad_context(video, self.recipe.num_cond_frames), deterministic=True)
                    if self.fp else batch["label"].to(dev))
        if self.fp:
            sep = torch.full((cond.shape[0], 1), self.model.config.separator_id, dtype=cond.dtype, device=dev)
            cond = torch.cat([cond, sep], dim=1)
        return tokens, cond

    def train_step(self, batch: dict[str, Any] | list[dict[str, Any]], step: int) -> dict[str, float]:
        """One optimiser step on `batch`, or on the micro-batches of a list (gradients accumulated)."""
        micro = [batch] if isinstance(batch, dict) else list(batch)
        k = len(micro)
        number = step + 1  # steps are numbered from 1, as in the reference
        self.model.train()
        lr = set_lr_factor(self.opt, self.schedule(number))
        self.opt.zero_grad(set_to_none=True)
        losses = []
        drop = self.draws.class_drop_mask(number)
        for i, b in enumerate(micro):
            tokens, cond = self.encode_batch(b)
            if drop is not None and not self.fp:  # given label drops: the null class where the mask is set
                part = drop[i * len(cond):(i + 1) * len(cond)].to(cond.device, torch.bool)
                cond = torch.where(part, torch.full_like(cond, self.model.null_class), cond)
            with self.ctx.no_sync(self.train_model, sync=i == k - 1):
                with self.ctx.autocast():
                    logits = self.train_model(tokens, cond, drop_labels=drop is None)
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    return {"loss": losses[-1]}  # the engine stops before any weight is touched
                self.scaler.scale(loss if k == 1 else loss / k).backward()
        metrics = {"loss": sum(losses) / k}
        self.scaler.unscale_(self.opt)
        if self.recipe.optim.grad_clip > 0:
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip))
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        metrics["lr"] = lr
        return metrics

    @torch.no_grad()
    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Validation loss / accuracy on fixed clips, and a few samples as pictures."""
        if self.val_set is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        was = model.training
        model.eval()
        n = min(self.recipe.data.val_clips, len(self.val_set))
        bs = self.recipe.data.batch_size
        total, correct, count = 0.0, 0.0, 0
        cond_first = None
        for start in range(0, n, bs):
            items = [self.val_set[i] for i in range(start, min(start + bs, n))]
            batch = {"video": torch.stack([it["video"] for it in items]),
                     "label": torch.tensor([it["label"] for it in items])}
            tokens, cond = self.encode_batch(batch)
            logits = model.logits(tokens, cond).float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="sum"))
            correct += float((logits.argmax(-1) == tokens).sum())
            count += tokens.numel()
            cond_first = cond[:4] if cond_first is None else cond_first
        sample_cfg = 1.5 if self.model.config.has_null_class else 1.0
        samples = generate(model, cond_first, cfg_scale=sample_cfg,
                           generator=torch.Generator(self.ctx.device).manual_seed(step))
        videos = self.tokenizer.decode(samples).float().clamp(0, 1).cpu()
        write_png_grid(out_dir / "samples" / f"ar_step{step:08d}.png", videos)
        write_gif(out_dir / "samples" / f"ar_step{step:08d}.gif", videos)
        model.train(was)
        return {"val/loss": total / count, "val/token_acc": correct / count}

    def export(self, folder: Path) -> None:
        from larp.train.export import run_card_fields  # the card: recipe, data, last evaluation

        model = self.ema.module if self.ema is not None else self.model
        model.save_pretrained(folder, **run_card_fields(self.recipe.run.out_dir, self.ctx.world_size))

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
