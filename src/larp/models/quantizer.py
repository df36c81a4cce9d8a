"""The bottleneck: projections around a stochastic, cosine-similarity vector quantiser (SVQ).

Spec section 1, steps 5-7. In training the code of each token is sampled from softmax(cos / tau); in
deterministic mode (evaluation, AR training) it is the argmax."""

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


class StochasticVQ(nn.Module):
    """Codebook `embedding` of K unit-normalised d-vectors; codes chosen by cosine similarity."""

    def __init__(self, dim: int, args: VQArgs):
        super().__init__()
        self.args = args
        self.embedding = nn.Embedding(args.codebook_size, dim)
        # Sampling temperature; a trainer may anneal it (kept outside the state dict on purpose).
        self.temperature = args.stochastic_temperature

    def codebook(self) -> torch.Tensor:
        """(K, d) unit-normalised code vectors."""
        return F.normalize(self.embedding.weight, dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook())

    def forward(self, z: torch.Tensor, deterministic: bool, generator: torch.Generator | None = None
                ) -> QuantizerOutput:
        # z: (B, N, d), already unit-normalised by the bottleneck.
        codebook = self.codebook()  # (K, d)
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
        """(B, N, D_enc) encoder output -> (B, N, d) unit vectors."""
        return F.normalize(self.in_linear(h), dim=-1)

    def forward(self, h: torch.Tensor, deterministic: bool, generator: torch.Generator | None = None
                ) -> QuantizerOutput:
        return self.regularizer(self.project(h), deterministic, generator)
