"""Building blocks shared by the LARP models: position embeddings, patch embedding, transformer blocks.

The numerics follow docs/method.md (tokenizer, AR generator); the module names are part of the released checkpoint
format and must not change.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# ---------------------------------------------------------------------------------------------------------
# Fixed sin-cos position embeddings (computed in float64, stored in float32, like the reference buffers).
# ---------------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """(P,) positions -> (P, dim) embedding laid out as [sin | cos]."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / base**omega
    angles = positions.to(torch.float64).reshape(-1)[:, None] * omega[None, :]  # (P, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """MAE-style 2-D embedding of a (grid_h, grid_w) grid -> (grid_h * grid_w, dim), row-major.

    The first half of the channels encodes the column (w) index, the second half the row (h) index, as in
    MAE's `get_2d_sincos_pos_embed` (its meshgrid puts w first)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    hh, ww = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb_w = sincos_1d(dim // 2, ww.reshape(-1))
    emb_h = sincos_1d(dim // 2, hh.reshape(-1))
    return torch.cat([emb_w, emb_h], dim=1)


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(t, h, w)-ordered embedding: a 2-D spatial embedding plus a 1-D temporal one, summed.

    Returns (1, grid_t * grid_h * grid_w, dim) in float32."""
    spatial = sincos_2d(dim, grid_h, grid_w)  # (h*w, dim)
    temporal = sincos_1d(dim, torch.arange(grid_t))  # (t, dim)
    pe = temporal[:, None, :] + spatial[None, :, :]  # (t, h*w, dim)
    return pe.reshape(1, -1, dim).float()


# ---------------------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------------------


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = (pt, p, p); output tokens flattened in (t, h, w) order."""

    def __init__(self, in_channels: int, dim: int, temporal_patch: int, patch: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=(temporal_patch, patch, patch),
                              stride=(temporal_patch, patch, patch), bias=True)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.proj(video)  # (B, D, t, h, w)
        return rearrange(x, "b d t h w -> b (t h w) d")


def init_vit_weights_(module: nn.Module, patch_embed: PatchEmbed3D) -> None:
    """The reference initialisation: xavier-uniform Linears with zero bias, the patch conv like a Linear
    over the flattened patch."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    w = patch_embed.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(patch_embed.proj.bias)


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], temporal_patch: int, patch: int,
               channels: int) -> torch.Tensor:
    """(B, t*h*w, pt*p*p*C) -> (B, C, t*pt, h*p, w*p); the inverse of the decoder's patch layout."""
    t, h, w = grid
    return rearrange(x, "b (t h w) (pt p1 p2 c) -> b c (t pt) (h p1) (w p2)",
                     t=t, h=h, w=w, pt=temporal_patch, p1=patch, p2=patch, c=channels)


# ---------------------------------------------------------------------------------------------------------
# Transformer blocks
# ---------------------------------------------------------------------------------------------------------


def vit_block(dim: int, num_heads: int) -> nn.Module:
    """Pre-norm ViT block with the released names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)."""
    # Imported here: timm brings torchvision and torch._dynamo (~200 MiB resident), which the AR model and
    # its sampling loop do not need.
    from timm.models.vision_transformer import Block as TimmBlock

    return TimmBlock(dim=dim, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=False,
                     norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU)


class JointTransformer(nn.Module):
    """Blocks over [context ; queries] with full attention; returns the query positions.

    This is how both the LARP encoder (context = patches, queries = latent queries) and decoder
    (context = latent tokens, queries = patch queries) run."""

    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.blocks = nn.ModuleList([vit_block(dim, num_heads) for _ in range(depth)])

    def forward(self, context: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        n_queries = queries.shape[1]
        h = torch.cat([context, queries], dim=1)  # (B, Nc + Nq, D)
        for block in self.blocks[:-1]:
            h = block(h)
        # Only the query positions leave the last block: their rows alone go through its query projection,
        # attention output, projection and MLP (the context still gives keys and values). Half of the last
        # block's work, which a full block would compute and throw away; the same function.
        return block_rows(self.blocks[-1], h, slice(-n_queries, None))  # (B, Nq, D)


def block_rows(block: nn.Module, h: torch.Tensor, rows: slice) -> torch.Tensor:
    """timm's ViT `Block` on (B, N, D) -> its output at the positions `rows` only (B, n, D), attending over
    all N positions: `block(h)[:, rows]`, without the work for the other rows (their queries, attention
    outputs, projection and MLP) when only these leave a model's last block."""
    attn = block.attn
    if getattr(attn, "gate", None) is not None:  # a gated timm attention: the whole block, then the rows
        return block(h)[:, rows]
    b, length, dim = h.shape
    x = block.norm1(h)
    w, bias = attn.qkv.weight, attn.qkv.bias
    inner = w.shape[0] // 3
    q = F.linear(x[:, rows], w[:inner], None if bias is None else bias[:inner])  # (B, n, H*d)
    n = q.shape[1]
    kv = F.linear(x, w[inner:], None if bias is None else bias[inner:])  # (B, N, 2*H*d)
    q = q.reshape(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, n, d)
    k, v = kv.reshape(b, length, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, d) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    y = attn.proj_drop(attn.proj(attn.norm(y.transpose(1, 2).reshape(b, n, inner))))
    out = h[:, rows] + block.drop_path1(block.ls1(y))
    return out + block.drop_path2(block.ls2(block.mlp(block.norm2(out))))


class RMSNorm(nn.Module):
    """RMSNorm with a weight only, normalising in float32 (Llama)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def swiglu_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """Llama's hidden width: 2/3 of 4*dim, optionally scaled, rounded up to a multiple."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * -(-hidden // multiple_of)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))
