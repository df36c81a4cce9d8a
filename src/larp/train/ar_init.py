"""Start an AR model's token embeddings and output head from its tokenizer's codebook.

An AR model learns one embedding row and one output row per code. From a random start an embedding row moves
only when its code is seen (and an output row is only pushed down until then), so a small dataset (the demo's
960 clips and their mirror images hold each of its 8,192 codes ~15 times) leaves most rows near noise, and
codes that draw the same patch stay unrelated. Here every code starts from its own codebook vector (unit
length, `bottleneck_dim` wide) through one fixed random projection into the model's width: codes near each
other in the tokenizer start near each other in the AR model, and the head starts as the tokenizer's prior
scores codes, by the cosine between a predicted vector and each code. Only initial values change; the
architecture and the checkpoint format are the released ones (docs/studies/demo.md has the measurements).
"""

from __future__ import annotations

import math

import torch

from larp.models.ar import LARPAR

__all__ = ["embed_codebook"]


@torch.no_grad()
def embed_codebook(model: LARPAR, codebook: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Set the rows of `model`'s token embedding and output head for the codes of `codebook` (K, d).

    Row k becomes s * P c_k, P a random (dim, d) matrix with orthonormal columns and s = initializer_range x
    sqrt(dim), the length of a default random row. The embedding also keeps a quarter of its default random
    init, so that codes with nearly the same vector stay apart. Rows past K (the frame-prediction separator)
    keep their initialisation."""
    cfg = model.config
    if codebook.ndim != 2 or codebook.shape[0] != cfg.vocab_size:
        raise ValueError(f"expected a codebook of {cfg.vocab_size} codes (the AR model's vocab_size) as a (K, d) "
                         f"tensor, got shape {tuple(codebook.shape)}")
    k, d = codebook.shape
    if d > cfg.dim:
        raise ValueError(f"the codebook's vectors ({d} wide) must be no wider than the AR model ({cfg.dim})")
    weight = model.tok_embeddings.weight
    codes = torch.nn.functional.normalize(codebook.detach().float(), dim=-1).to(weight.device)
    basis, _ = torch.linalg.qr(torch.randn(cfg.dim, d, generator=generator))  # (dim, d), orthonormal columns
    rows = codes @ basis.t().to(weight.device) * (cfg.initializer_range * math.sqrt(cfg.dim))  # (K, dim)
    noise = torch.randn(k, cfg.dim, generator=generator).to(weight.device) * (cfg.initializer_range / 4)
    weight[:k] = (rows + noise).to(weight.dtype)
    model.output.weight.copy_(rows.to(model.output.weight.dtype))
