"""The bottleneck: projections around a stochastic, cosine-similarity vector quantiser (SVQ).

In training the code of each token is sampled from softmax(cos / tau); in deterministic mode (evaluation,
AR training) it is the argmax. The quantiser owns its codebook: trainers read it through `codebook`, and
change it only through `set_temperature`, `init_codebook` (codes on encoder outputs, refined by spherical
k-means) and `replace_codes` (dead-code re-initialisation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from larp.models.config import VQArgs


@dataclass
class QuantizerOutput:
    indices: torch.Tensor  # (B, N) int64
    quantized: torch.Tensor  # (B, N, d) unit vectors, straight-through to the encoder in training
    loss: torch.Tensor  # scalar: commitment + codebook (+ entropy) terms, weighted
    similarity: torch.Tensor  # (B, N, K) cosine similarities


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (..., K), drawn with probability proportional to the row.

    By inverting the cumulative sum with one uniform number per row: the same distribution as
    torch.multinomial, which on CPU draws K exponentials per row and costs ~8x more at K = 4,096."""
    cdf = probs.float().cumsum(dim=-1)  # (..., K)
    u = torch.rand(*probs.shape[:-1], 1, device=probs.device, generator=generator) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def pick_rows(z: torch.Tensor, count: int, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """`count` rows of z (M, d), without replacement while M allows, plus `noise` times a normal draw so that
    duplicates can separate. The draws come from `generator` (CPU) or the global RNG."""
    if z.shape[0] >= count:
        idx = torch.randperm(z.shape[0], generator=generator, device="cpu")[:count]
    else:
        idx = torch.randint(0, z.shape[0], (count,), generator=generator, device="cpu")
    rows = z[idx.to(z.device)].float()
    if noise > 0:
        rows = rows + noise * torch.randn(rows.shape, generator=generator, device="cpu").to(rows.device)
    return rows


def spherical_kmeans(z: torch.Tensor, centres: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd iterations on the unit sphere: assign each row of z (M, d) to its most similar centre (K, d),
    move every centre to the normalised mean of its rows; centres that get no row stay where they are."""
    centres = F.normalize(centres.float(), dim=-1)
    z = F.normalize(z.float(), dim=-1)
    for _ in range(iters):
        nearest = (z @ centres.t()).argmax(-1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, z)
        hit = torch.bincount(nearest, minlength=len(centres)) > 0
        centres = torch.where(hit[:, None], F.normalize(sums, dim=-1), centres)
    return centres


class StochasticVQ(nn.Module):
    """Codebook `embedding` of K unit-normalised d-vectors; codes chosen by cosine similarity."""

    def __init__(self, dim: int, args: VQArgs):
        super().__init__()
        self.args = args
        self.embedding = nn.Embedding(args.codebook_size, dim)
        # Sampling temperature; a trainer may anneal it (kept outside the state dict on purpose).
        self.temperature = float(args.stochastic_temperature)
        if args.stochastic:
            self.set_temperature(args.stochastic_temperature)

    @property
    def codebook_size(self) -> int:
        return self.embedding.num_embeddings

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d) unit-normalised code vectors."""
        return F.normalize(self.embedding.weight, dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook)

    # ------------------------------------------------------------------------------ codebook operations
    def set_temperature(self, temperature: float) -> None:
        """Set the sampling temperature of the stochastic codes (not part of the state dict)."""
        if not temperature > 0:  # also rejects NaN
            raise ValueError(f"the sampling temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @torch.no_grad()
    def init_codebook(self, latents: torch.Tensor, noise: float = 0.05, generator: torch.Generator | None = None,
                      kmeans_iters: int = 0) -> None:
        """Every code := a row of `latents` (..., d) (unit vectors the quantiser would see), plus `noise`, then
        `kmeans_iters` spherical k-means iterations over all the rows."""
        z = self._rows(latents)
        rows = pick_rows(z, self.codebook_size, noise, generator)
        if kmeans_iters > 0:
            rows = spherical_kmeans(z, rows, kmeans_iters)
        self.embedding.weight.copy_(rows.to(self.embedding.weight.dtype))

    @torch.no_grad()
    def replace_codes(self, mask: torch.Tensor, rows: torch.Tensor,
                      optimizer: torch.optim.Optimizer | None = None) -> None:
        """Codes where `mask` (K,) bool is set := `rows` (mask.sum(), d). With `optimizer`, its per-parameter
        state of those rows (Adam's moments) is zeroed, so that stale momentum does not drag them away."""
        weight = self.embedding.weight
        if mask.shape != (self.codebook_size,) or mask.dtype != torch.bool:
            raise ValueError(f"replace_codes: expected a bool mask of shape ({self.codebook_size},), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        n = int(mask.sum())
        if rows.shape != (n, self.dim):
            raise ValueError(f"replace_codes: expected rows of shape ({n}, {self.dim}), got {tuple(rows.shape)}")
        mask = mask.to(weight.device)
        weight[mask] = rows.to(weight)
        if optimizer is not None:
            for value in optimizer.state.get(weight, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                    value[mask] = 0

    def _rows(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.detach().reshape(-1, latents.shape[-1])
        if z.shape[-1] != self.dim:
            raise ValueError(f"latents must have the codebook's width {self.dim}, got {z.shape[-1]}")
        return z

    def forward(self, z: torch.Tensor, deterministic: bool, generator: torch.Generator | None = None
                ) -> QuantizerOutput:
        # z: (B, N, d), already unit-normalised by the bottleneck. Codes and the VQ loss in float32 even
        # under mixed precision, as the reference.
        with torch.autocast(z.device.type, enabled=False):
            out = self._quantize(z.float(), deterministic, generator)
        dtype = self.embedding.weight.dtype  # float32, unless the model itself was cast
        out.quantized = out.quantized.to(dtype)
        return out

    def _quantize(self, z: torch.Tensor, deterministic: bool, generator: torch.Generator | None
                  ) -> QuantizerOutput:
        codebook = self.codebook.float()  # (K, d)
        similarity = z @ codebook.t()  # (B, N, K)
        if deterministic or not self.args.stochastic:
            indices = similarity.argmax(dim=-1)
        else:
            probs = torch.softmax(similarity.float() / self.temperature, dim=-1)
            indices = sample_categorical(probs, generator)  # (B, N)
        q = F.embedding(indices, codebook)  # (B, N, d)
        loss = (self.args.commitment_loss_weight * F.mse_loss(z, q.detach())
                + self.args.codebook_loss_weight * F.mse_loss(q, z.detach()))
        if self.args.entropy_loss_weight > 0:
            loss = loss + self.args.entropy_loss_weight * code_entropy_loss(
                similarity, self.args.entropy_loss_temperature)
        quantized = z + (q - z).detach()  # straight-through
        return QuantizerOutput(indices=indices, quantized=quantized, loss=loss, similarity=similarity)


def code_entropy_loss(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token entropy minus batch-average entropy of softmax(similarity / temperature).

    Minimising it makes each token confident while spreading the batch over many codes. It uses the
    soft assignment, so it works whether the codes themselves are sampled or taken by argmax."""
    probs = torch.softmax(similarity.float().reshape(-1, similarity.shape[-1]) / temperature, dim=-1)
    per_token = -(probs * torch.log(probs.clamp_min(1e-10))).sum(-1).mean()
    avg = probs.mean(0)
    batch = -(avg * torch.log(avg.clamp_min(1e-10))).sum()
    return per_token - batch


class Bottleneck(nn.Module):
    """in_linear (D_enc -> d), L2 normalisation, SVQ, out_linear (d -> D_dec)."""

    def __init__(self, input_dim: int, bottleneck_dim: int, output_dim: int, vq: VQArgs):
        super().__init__()
        self.in_linear = nn.Linear(input_dim, bottleneck_dim)
        self.regularizer = StochasticVQ(bottleneck_dim, vq)
        self.out_linear = nn.Linear(bottleneck_dim, output_dim)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N, D_enc) encoder output -> (B, N, d) unit vectors (normalised in float32)."""
        z = self.in_linear(h)
        with torch.autocast(z.device.type, enabled=False):  # float32 weights: float32 vectors
            return F.normalize(z.float(), dim=-1).to(self.in_linear.weight.dtype)

    def forward(self, h: torch.Tensor, deterministic: bool, generator: torch.Generator | None = None
                ) -> QuantizerOutput:
        return self.regularizer(self.project(h), deterministic, generator)
