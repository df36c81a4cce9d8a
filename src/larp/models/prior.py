"""The GPTC prior: a small causal GPT over continuous code vectors (docs/method.md).

It is trained with the tokenizer; its cross-entropy, whose gradient flows back through the straight-through
quantised vectors, shapes the latent space so that an AR model can predict it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from larp.models.config import GPTC_BLOCK_SIZE, GPTC_SIZES


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        hd = d // self.n_head

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.n_head, hd).transpose(1, 2)  # (B, H, N, hd)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        # Dropout only in training: the reference also drops attention in eval mode, a bug not kept here.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, n, d)
        return self.resid_drop(self.proj(y))


class GPTCBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTC(nn.Module):
    """Causal GPT on d-dimensional inputs; predicts the next unit vector at each position."""

    def __init__(self, size: str, input_dim: int, dropout: float = 0.1, l2_normalized: bool = True):
        super().__init__()
        n_layer, n_head, width = GPTC_SIZES[size]
        self.l2_normalized = l2_normalized
        self.input_proj = nn.Linear(input_dim, width)
        self.pos_emb = nn.Parameter(torch.zeros(1, GPTC_BLOCK_SIZE, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[GPTCBlock(width, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, n, d) -> (B, n, d): position i predicts the vector at i + 1.
        n = x.shape[1]
        h = self.drop(self.input_proj(x) + self.pos_emb[:, :n])
        h = self.ln_f(self.blocks(h))
        out = self.head(h)
        return F.normalize(out, dim=-1) if self.l2_normalized else out

    def predict_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, d) -> (B, N, d): the first vector as given, then the predictions of vectors 1..N-1."""
        return torch.cat([x[:, :1], self(x[:, :-1])], dim=1)
