"""`LARPTokenizer`: a holistic-query video tokenizer with a stochastic VQ and a learned AR prior.

Stages (docs/method.md):
    video (B,3,T,H,W) --embed--> patches (B,Np,D) --encoder with N queries--> (B,N,D)
    --quantize--> codes (B,N) / unit vectors (B,N,d) --out_linear + decoder--> video (B,3,T,H,W)
The prior (`prior_model`) only serves training: its loss is a method here so that trainers can call it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from larp.models.config import TokenizerConfig
from larp.models.hub import HubModelMixin
from larp.models.layers import (
    JointTransformer,
    PatchEmbed3D,
    init_vit_weights_,
    sincos_1d,
    sincos_3d,
    unpatchify,
)
from larp.models.prior import GPTC
from larp.models.quantizer import Bottleneck, QuantizerOutput, sample_categorical

VALUE_TOLERANCE = 1e-3  # how far outside [0, 1] an input may stray (resampling overshoot) before we refuse


@dataclass
class PriorOutput:
    loss: torch.Tensor  # cross-entropy averaged over rounds
    logits: torch.Tensor  # (B, N-1, K) logits of the first round (teacher forcing)
    top1: torch.Tensor  # accuracy of the first round
    top5: torch.Tensor


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, C, T, H, W), not clamped
    indices: torch.Tensor  # (B, N)
    vq_loss: torch.Tensor
    similarity: torch.Tensor  # (B, N, K) cosine similarities, for codebook statistics
    prior: PriorOutput | None


class OutputLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x))


class LARPTokenizer(HubModelMixin, nn.Module):
    config_class = TokenizerConfig
    kind = "a tokenizer"

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        n, d_enc, d_dec = cfg.bottleneck_token_num, cfg.encoder_hidden_size, cfg.decoder_hidden_size
        pt, p, c = cfg.temporal_patch_size, cfg.patch_size, cfg.in_channels

        self.x_embedder = PatchEmbed3D(c, d_enc, pt, p)
        self.register_buffer("encoder_patch_pe", sincos_3d(d_enc, *cfg.encoder_grid))  # (1, Np, D_enc)
        self.encoder_latent_query_embed = nn.Parameter(torch.randn(n, d_enc) * cfg.query_init_std)
        self.encoder = JointTransformer(d_enc, cfg.encoder_depth, cfg.encoder_num_heads)

        self.bottleneck = Bottleneck(d_enc, cfg.bottleneck_dim, d_dec, cfg.vq)

        latent_pe = sincos_1d(d_dec, torch.arange(n), base=cfg.latent_pe_scale_factor).float()
        self.register_buffer("decoder_latent_pe", latent_pe[None])  # (1, N, D_dec)
        self.register_buffer("decoder_patch_query_embed", sincos_3d(d_dec, *cfg.decoder_grid))  # (1, Np, D_dec)
        self.decoder_patch_query_token_type_embed = nn.Parameter(torch.randn(1, 1, d_dec) * 0.02)
        self.decoder = JointTransformer(d_dec, cfg.decoder_depth, cfg.decoder_num_heads)
        self.final_layer = OutputLayer(d_dec, pt * p * p * c)

        prior = cfg.prior_model
        self.prior_model = (GPTC(prior.name, cfg.bottleneck_dim, dropout=0.0 if prior.no_dropout else 0.1,
                                 l2_normalized=prior.args.l2_normalized) if prior.enabled else None)
        self._init_weights()

    def _init_weights(self) -> None:
        init_vit_weights_(self, self.x_embedder)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ------------------------------------------------------------------------------------------ shapes
    @property
    def num_tokens(self) -> int:
        return self.config.bottleneck_token_num

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of the clips this tokenizer takes."""
        c = self.config
        return (c.in_channels, c.frame_num, c.input_size, c.input_size)

    def check_video(self, video: torch.Tensor) -> None:
        """Raise a ValueError naming what was expected and what came."""
        c, t, h, w = self.video_shape
        expected = f"a float tensor (B, {c}, {t}, {h}, {w}) with values in [0, 1]"
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"expected {expected}, got {type(video).__name__}")
        if video.ndim != 5:
            raise ValueError(f"expected {expected}, got a tensor of rank {video.ndim} with shape {tuple(video.shape)}")
        if video.shape[1] != c:
            raise ValueError(f"expected {c} channels at dim 1 of {expected}, got {video.shape[1]} "
                             f"(shape {tuple(video.shape)}; layout is B,C,T,H,W)")
        if video.shape[2] != t:
            raise ValueError(f"expected {t} frames at dim 2 of {expected}, got {video.shape[2]} "
                             "(longer videos: use larp.videos.tokenize_video, which cuts windows)")
        if tuple(video.shape[3:]) != (h, w):
            raise ValueError(f"expected frames of {h}x{w} for {expected}, got {video.shape[3]}x{video.shape[4]}")
        if not video.is_floating_point():
            raise ValueError(f"expected {expected}, got dtype {video.dtype} (convert uint8 with video / 255)")
        lo, hi = torch.aminmax(video.detach())
        lo, hi = float(lo), float(hi)
        if lo < -VALUE_TOLERANCE or hi > 1 + VALUE_TOLERANCE or lo != lo or hi != hi:
            raise ValueError(f"expected {expected}, got values in [{lo:.4g}, {hi:.4g}]"
                             + (" (looks like [-1, 1]: pass (x + 1) / 2)" if lo < -0.5 else ""))

    def check_indices(self, indices: torch.Tensor) -> None:
        n, k = self.num_tokens, self.codebook_size
        expected = f"an integer tensor (B, {n}) of code indices in [0, {k})"
        if not isinstance(indices, torch.Tensor):
            raise ValueError(f"expected {expected}, got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"expected {expected}, got dtype {indices.dtype}")
        if indices.ndim != 2 or indices.shape[1] != n:
            raise ValueError(f"expected {expected}, got shape {tuple(indices.shape)}")
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= k:
                raise ValueError(f"expected {expected}, got indices in [{lo}, {hi}]")

    # ------------------------------------------------------------------------------------------ stages
    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, Np, D_enc) patch tokens with their fixed position embedding."""
        video = video.to(self.x_embedder.proj.weight.dtype)
        return self.x_embedder(video) + self.encoder_patch_pe

    def encode_continuous(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, D_enc): the encoder's output at the N holistic queries."""
        patches = self.embed(video)
        queries = self.encoder_latent_query_embed.unsqueeze(0).expand(patches.shape[0], -1, -1)
        return self.encoder(patches, queries)

    def quantize(self, hidden: torch.Tensor, deterministic: bool | None = None,
                 generator: torch.Generator | None = None) -> QuantizerOutput:
        """(B, N, D_enc) -> codes; sampled in training unless `deterministic`, argmax otherwise."""
        det = (not self.training) if deterministic is None else deterministic
        return self.bottleneck(hidden, deterministic=det, generator=generator)

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, N, d) unit vectors -> (B, C, T, H, W) video (not clamped)."""
        latents = self.bottleneck.out_linear(quantized) + self.decoder_latent_pe  # (B, N, D_dec)
        queries = (self.decoder_patch_query_embed + self.decoder_patch_query_token_type_embed)
        queries = queries.expand(latents.shape[0], -1, -1)  # (B, Np, D_dec)
        patches = self.final_layer(self.decoder(latents, queries))  # (B, Np, pt*p*p*C)
        c = self.config
        return unpatchify(patches, c.decoder_grid, c.decoder_temporal_patch_size, c.decoder_patch_size,
                          c.in_channels)

    # -------------------------------------------------------------------------------------- public API
    def encode(self, video: torch.Tensor, deterministic: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) in [0, 1] -> (B, N) int64 codes (argmax in eval mode)."""
        self.check_video(video)
        return self.quantize(self.encode_continuous(video), deterministic, generator).indices

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) codes -> (B, 3, T, H, W) float video, not clamped."""
        self.check_indices(indices)
        return self.decode_latents(self.bottleneck.regularizer.lookup(indices.long()))

    def prior_logits(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) codes -> (B, N-1, K): the prior's logits for tokens 1..N-1 (no dropout in eval)."""
        self.check_indices(indices)
        return self.prior_logits_from_vectors(self.bottleneck.regularizer.lookup(indices.long()))

    # -------------------------------------------------------------------------------------- the prior
    def _require_prior(self) -> GPTC:
        if self.prior_model is None:
            raise ValueError("this tokenizer has no prior model (prior_model.name is 'none')")
        return self.prior_model

    def prior_predict(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, N, d) -> (B, N, d): first vector as given, then the prior's predictions of 1..N-1."""
        return self._require_prior().predict_sequence(vectors)

    def prior_logits_from_vectors(self, vectors: torch.Tensor, codebook_grad: bool = False) -> torch.Tensor:
        """(B, N, d) -> (B, N-1, K): the prior's predictions of vectors 1..N-1 against the codebook.

        The codebook enters detached, as in the reference: the prior loss trains the prior and, through
        `vectors`, the encoder, but not the code vectors (`codebook_grad=True` lets it reach them too)."""
        pred = self.prior_predict(vectors)[:, 1:]  # (B, N-1, d)
        codebook = self.bottleneck.regularizer.codebook
        logits = pred @ (codebook if codebook_grad else codebook.detach()).t()
        return logits / self.config.prior_model.latent_ce_temperature

    def scheduled_sampling_ratio(self, step: int, total_steps: int) -> float:
        """The share of prior inputs replaced by its own picks at training step `step` (counted from 1) of
        `total_steps`: rising linearly to `mix_ss_max_ratio` at `mix_ss_peak_steps_ratio` of the run."""
        p = self.config.prior_model
        if not p.use_mix_ss:
            return 1.0
        return min(step / (max(total_steps, 1) * p.mix_ss_peak_steps_ratio) * p.mix_ss_max_ratio, p.mix_ss_max_ratio)

    def prior_loss(self, quantized: torch.Tensor, indices: torch.Tensor, step: int, total_steps: int,
                   generator: torch.Generator | None = None, ss_mask: torch.Tensor | None = None,
                   argmax_picks: bool = False, codebook_grad: bool = False) -> PriorOutput:
        """Cross-entropy of the prior with scheduled sampling over `n_rounds` rounds (docs/method.md).

        `quantized` are the straight-through vectors, so the gradient reaches the encoder. Each round after
        the first feeds the prior, where the scheduled-sampling mask is set, a code picked from the previous
        round's logits (drawn from their softmax; `argmax_picks` takes the most likely one) instead of the
        true vector. The mask holds one Bernoulli(ratio) draw per (clip, token 1..N-1), shared by the rounds;
        `ss_mask` (B, N-1) replays a given one."""
        p = self.config.prior_model
        self._require_prior()
        b, n, d = quantized.shape
        labels = indices[:, 1:]
        if ss_mask is None:
            ratio = self.scheduled_sampling_ratio(step, total_steps)
            mask = torch.rand(b, n - 1, 1, device=quantized.device, generator=generator) < ratio  # (B, N-1, 1)
        else:
            if tuple(ss_mask.shape) != (b, n - 1):
                raise ValueError(f"ss_mask must have shape ({b}, {n - 1}), got {tuple(ss_mask.shape)}")
            mask = ss_mask.to(device=quantized.device, dtype=torch.bool)[..., None]
        codebook = self.bottleneck.regularizer.codebook.detach()
        all_logits = []
        inputs = quantized
        for r in range(p.n_rounds):
            last = r == p.n_rounds - 1
            if p.no_grad_before_last_round and not last:
                with torch.no_grad():
                    logits = self.prior_logits_from_vectors(inputs.detach(), codebook_grad)
            else:
                logits = self.prior_logits_from_vectors(inputs, codebook_grad)
                all_logits.append(logits)
            if not last:
                if argmax_picks:
                    picked = logits.detach().argmax(dim=-1)  # (B, N-1)
                else:
                    picked = sample_categorical(torch.softmax(logits.detach().float(), dim=-1), generator)
                picked_vec = F.embedding(picked, codebook).to(quantized.dtype)
                mixed = torch.where(mask, picked_vec, quantized[:, 1:])
                inputs = torch.cat([quantized[:, :1], mixed], dim=1)
        used = all_logits if p.avg_loss_over_rounds else all_logits[-1:]
        stacked = torch.stack(used)  # (R, B, N-1, K)
        loss = F.cross_entropy(stacked.reshape(-1, stacked.shape[-1]).float(),
                               labels.unsqueeze(0).expand(len(used), -1, -1).reshape(-1))
        first = all_logits[0].detach()
        top5 = first.topk(min(5, first.shape[-1]), dim=-1).indices
        return PriorOutput(loss=loss, logits=first,
                           top1=(top5[..., 0] == labels).float().mean(),
                           top5=(top5 == labels.unsqueeze(-1)).any(-1).float().mean())

    # ------------------------------------------------------------------------------------- training
    def forward(self, video: torch.Tensor, step: int = 0, total_steps: int = 1,
                deterministic: bool | None = None, generator: torch.Generator | None = None,
                ss_mask: torch.Tensor | None = None, argmax_picks: bool = False,
                prior_codebook_grad: bool = False) -> TokenizerOutput:
        """Reconstruct `video` and compute the VQ and (if present) prior losses.

        `step` (counted from 1) of `total_steps` sets the prior's scheduled-sampling ratio; `ss_mask`,
        `argmax_picks` and `prior_codebook_grad` are `prior_loss`'s."""
        self.check_video(video)
        q = self.quantize(self.encode_continuous(video), deterministic, generator)
        recon = self.decode_latents(q.quantized)
        prior = (self.prior_loss(q.quantized, q.indices, step, total_steps, generator, ss_mask, argmax_picks,
                                 prior_codebook_grad)
                 if self.prior_model is not None else None)
        return TokenizerOutput(recon=recon, indices=q.indices, vq_loss=q.loss, similarity=q.similarity,
                               prior=prior)
