"""Local linear initialisation: start a small tokenizer as a per-region linear (PCA) autoencoder.

Why (docs/small_scale_recipes.md): a small LARP tokenizer trained from the released initialisation sits at
the data set's mean video for thousands of steps. Its latents carry almost nothing about the clip (attention
is near-uniform, so each query averages all patches) and the fixed sin-cos position embeddings of a small grid
are nearly alike, so neither the encoder's queries nor the decoder's patch queries can tell where to read.
This initialisation, computed from a batch of training clips, builds the path that training would otherwise
have to discover, inside the released architecture (no module or key changes; only parameter values):

1. Every residual branch after the first attention layer of the encoder and of the decoder starts at zero,
   so each transformer starts as one attention layer.
2. The channels are split into disjoint subspaces: the span of the fixed position embeddings, a small
   subspace of query codes, and a content subspace. The patch embedding writes the top principal components
   of the clips' patches into the content subspace (`content_fraction` of the position embedding's size, so
   LayerNorm keeps the positions readable); the encoder's latent queries are code vectors.
3. The first attention layers route: latent i attends to the patches it owns and patch query j to the latent
   that owns it. A position's code is three one-hot vectors (its t, h and w index); on a small grid the
   sin-cos embedding is an additive function of the three indices, so these codes are exactly what a linear
   map can read from it. The attention logit is `routing_gain` times the number of matching indices.
   The decoder reads latent codes from the 1-D latent position embedding, which must resolve N indices:
   a small `latent_pe_scale_factor` (e.g. 0.1) makes it full-rank; the base 10,000 is band-limited.
4. Values pass the content subspace unchanged; the bottleneck's `in_linear` takes the top principal
   components of the encoder's content outputs, `out_linear` writes the code into a content subspace of the
   decoder, and the output layer is the least-squares read-out of the decoder's features.

The model then starts near a per-patch PCA autoencoder, far above the mean video (docs/small_scale_recipes.md
has the measured figures), and LARP training proceeds from there. The patch embedding then needs a small
learning rate (`optim.embed_lr_mult`): its fan-in is a whole patch, so Adam's per-weight steps move its
outputs far more than any other layer's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from larp.models.tokenizer import LARPTokenizer


def _span(rows: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """(D, r) orthonormal basis of the span of `rows` (M, D).

    The tolerance must keep every direction that the least-squares reads below use: on an axis of 8
    positions the sin-cos embedding's last directions are ~2e-5 of its largest, and the one-hot reads need
    them (weights ~1/singular value). A direction left out of the span can hold patch content, which those
    weights then amplify ~500-fold into the attention keys (routing 0.06 instead of 0.95)."""
    u, s, _ = torch.linalg.svd(rows.T.double(), full_matrices=False)
    return u[:, s > tol * s[0]].float()


def _complement_basis(span: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """(D, k) orthonormal vectors orthogonal to the columns of `span` (D, r)."""
    d = span.shape[0]
    if span.shape[1] + k > d:
        raise ValueError(f"local_linear_init: width {d} is too small for a {span.shape[1]}-dimensional position "
                         f"span plus {k} more dimensions; use a wider model or fewer content dimensions")
    r = torch.randn(d, k, generator=generator)
    r = r - span @ (span.T @ r)
    return torch.linalg.qr(r)[0]


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters (those of a fresh block are identity)."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _least_squares(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """(D, K) W minimising |x W - y|^2 + ridge |W|^2 for x (M, D), y (M, K)."""
    a = x.double()
    gram = a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype)
    return torch.linalg.solve(gram, a.T @ y.double()).float()


def _pca(x: torch.Tensor, k: int, generator: torch.Generator | None = None
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (D,), top-k principal directions (k, D) and their standard deviations (k,) of rows x (M, D)."""
    mean = x.mean(0)
    centred = x - mean
    if min(centred.shape) <= 4 * (k + 16):
        _, s, vh = torch.linalg.svd(centred.double(), full_matrices=False)
        return mean, vh[:k].float(), (s[:k] / math.sqrt(len(x))).float()
    # Whole patches (thousands of pixels): a randomised SVD finds the top k in a second where the full one
    # takes tens (relative error ~1e-6 here). Its random draws come from `generator`, not the global RNG.
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(centred, q=k + 16, niter=6)
    return mean, v[:, :k].T.contiguous(), s[:k] / math.sqrt(len(x))


def _position_codes(grid: tuple[int, int, int], n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (Np, K) of the patches (one-hot t, h, w indices) and (N, K) of the latents (mean over the run
    of consecutive patches, in (t, h, w) order, that each latent owns)."""
    gt, gh, gw = grid
    j = torch.arange(gt * gh * gw)
    patch = torch.cat([torch.eye(gt)[j // (gh * gw)], torch.eye(gh)[(j // gw) % gh], torch.eye(gw)[j % gw]], 1)
    owner = j * n_latents // len(j)
    latent = torch.zeros(n_latents, patch.shape[1]).index_add_(0, owner, patch)
    return patch, latent / torch.bincount(owner, minlength=n_latents)[:, None]


def _set_routing(block: nn.Module, read_query: torch.Tensor, read_key: torch.Tensor, gain: float,
                 generator: torch.Generator | None) -> None:
    """q/k weights of `block` so that logit(a -> b) = gain * <read_query^T x_a, read_key^T x_b> in every head.

    read_query, read_key: (D, K) maps from normalised tokens to codes. Each head sees the codes through its own
    (head_dim, K) matrix with orthonormal columns, which keeps the inner product exact."""
    attn = block.attn
    d, k = read_query.shape
    heads, head_dim = attn.num_heads, d // attn.num_heads
    if k > head_dim:
        raise ValueError(f"local_linear_init: {k} position-code dimensions exceed the head width {head_dim}")
    rot = torch.linalg.qr(torch.randn(heads, head_dim, k, generator=generator))[0]
    s = head_dim ** 0.25  # the attention divides logits by sqrt(head_dim)
    attn.qkv.weight[:d].copy_(torch.cat([rot[h] @ read_query.T for h in range(heads)]) * gain * s)
    attn.qkv.weight[d:2 * d].copy_(torch.cat([rot[h] @ read_key.T for h in range(heads)]) * s)


def _set_value_path(block: nn.Module, content: torch.Tensor, gain: float) -> None:
    """Values copy the content subspace (D, k); the output projection is `gain` times the identity."""
    d = content.shape[0]
    block.attn.qkv.weight[2 * d:].copy_(content @ content.T)
    block.attn.proj.weight.copy_(torch.eye(d) * gain)
    block.attn.proj.bias.zero_()


def _patch_pixels(videos: torch.Tensor, temporal_patch: int, patch: int, channels_last: bool) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, Np, pt*p*p*C) in (t, h, w) patch order; the pixels of a patch in the order of
    the patch-embedding convolution's weight (C, pt, p, p) or of `unpatchify` (pt, p, p, C)."""
    b, c, t, h, w = videos.shape
    x = videos.reshape(b, c, t // temporal_patch, temporal_patch, h // patch, patch, w // patch, patch)
    order = (0, 2, 4, 6, 3, 5, 7, 1) if channels_last else (0, 2, 4, 6, 1, 3, 5, 7)
    return x.permute(*order).reshape(b, -1, c * temporal_patch * patch * patch)


def routing_mass(block: nn.Module, tokens: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean attention weight that rows `rows` of `block`'s first attention put on keys `targets` (same length)."""
    attn = block.attn
    d = tokens.shape[-1]
    qkv = attn.qkv(block.norm1(tokens)).unflatten(-1, (3, attn.num_heads, d // attn.num_heads))
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, heads, L, dh)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(d // attn.num_heads)).softmax(-1)
    return float(weights[:, :, rows, targets].mean())


@torch.no_grad()
def local_linear_init(model: LARPTokenizer, videos: torch.Tensor, routing_gain: float = 16.0,
                      content_dims: int = 48, content_fraction: float = 0.3, value_gain: float = 3.0,
                      generator: torch.Generator | None = None) -> dict[str, float]:
    """Initialise `model` from `videos` (B, C, T, H, W) in [0, 1] as described in the module docstring.

    Returns the routing achieved on these clips: `routing_encoder` (attention mass of latent queries on the
    patches they own) and `routing_decoder` (of patch queries on their latent), each 1.0 when perfect."""
    model.check_video(videos)
    c = model.config
    n, d_enc, d_dec = c.bottleneck_token_num, c.encoder_hidden_size, c.decoder_hidden_size
    n_p = math.prod(c.encoder_grid)
    if n > n_p:
        raise ValueError(f"local_linear_init: needs at most one latent per patch, got {n} latents for {n_p} patches")
    if len(videos) * n_p < 2 * content_dims:
        raise ValueError(f"local_linear_init: {len(videos)} clips give too few patches for {content_dims} "
                         "principal components; pass more clips")
    videos = videos.to(model.x_embedder.proj.weight)
    device = videos.device
    patch_code, latent_code = (x.to(device) for x in _position_codes(c.encoder_grid, n))
    k = patch_code.shape[1]
    owner = torch.arange(n_p, device=device) * n // n_p

    for blocks in (model.encoder.blocks, model.decoder.blocks):
        for i, block in enumerate(blocks):
            nn.init.zeros_(block.mlp.fc2.weight)
            if i > 0:
                nn.init.zeros_(block.attn.proj.weight)

    # ---- encoder: position span, query codes, content
    pe = model.encoder_patch_pe[0].float().cpu()
    ones = torch.ones(1, d_enc) / math.sqrt(d_enc)  # LayerNorm removes this direction
    span_pe = _span(torch.cat([pe, ones]))
    query_basis = _complement_basis(span_pe, k, generator)
    queries = latent_code.cpu() @ query_basis.T * math.sqrt(d_enc / k)
    content = _complement_basis(_span(torch.cat([pe, ones, queries])), content_dims, generator)
    pixels = _patch_pixels(videos, c.temporal_patch_size, c.patch_size, channels_last=False).flatten(0, 1)
    mean, components, std = _pca(pixels.cpu().float(), content_dims, generator)
    scale = content_fraction * float(pe.norm(dim=-1).mean()) / float(std.norm())
    weight = scale * content @ components  # (D_enc, C*pt*p*p)
    model.x_embedder.proj.weight.copy_(weight.reshape(model.x_embedder.proj.weight.shape))
    model.x_embedder.proj.bias.copy_(-(weight @ mean))
    model.encoder_latent_query_embed.copy_(queries)
    block = model.encoder.blocks[0]
    read_query = _least_squares(_layer_norm(queries), latent_code.cpu())
    read_key = _least_squares(_layer_norm(torch.cat([pe, queries])),
                              torch.cat([patch_code.cpu(), torch.zeros(n, k)]))  # queries read as no position
    _set_routing(block, read_query, read_key, routing_gain, generator)
    _set_value_path(block, content, value_gain)
    tokens = torch.cat([model.embed(videos), model.encoder_latent_query_embed.expand(len(videos), -1, -1)], 1)
    mass_enc = routing_mass(block, tokens, n_p + owner, torch.arange(n_p, device=device)) * (n_p / n)

    # ---- bottleneck: principal components of the content the queries received
    encoded = model.encode_continuous(videos)  # the encoder is final from here on: reused for the decoder below
    hidden = encoded.float().cpu() @ content @ content.T  # (B, N, D_enc)
    _, directions, _ = _pca((hidden - hidden.mean(0, keepdim=True)).flatten(0, 1), c.bottleneck_dim)
    model.bottleneck.in_linear.weight.copy_(directions)
    model.bottleneck.in_linear.bias.copy_(-(directions @ hidden.flatten(0, 1).mean(0)))

    # ---- decoder
    latent_pe = model.decoder_latent_pe[0].float().cpu()
    patch_queries = (model.decoder_patch_query_embed + model.decoder_patch_query_token_type_embed)[0].float().cpu()
    span_dec = _span(torch.cat([latent_pe, patch_queries, torch.ones(1, d_dec) / math.sqrt(d_dec)]))
    code_in = _complement_basis(span_dec, c.bottleneck_dim, generator)
    model.bottleneck.out_linear.weight.copy_(code_in * float(latent_pe.norm(dim=-1).mean()))
    model.bottleneck.out_linear.bias.zero_()
    block = model.decoder.blocks[0]
    read_query = _least_squares(_layer_norm(patch_queries), patch_code.cpu())
    read_key = _least_squares(_layer_norm(torch.cat([latent_pe, patch_queries])),
                              torch.cat([latent_code.cpu(), torch.zeros(n_p, k)]))
    _set_routing(block, read_query, read_key, routing_gain, generator)
    _set_value_path(block, code_in, value_gain)
    unit = model.bottleneck.project(encoded)
    latents = model.bottleneck.out_linear(unit) + model.decoder_latent_pe
    patch_tokens = patch_queries.to(device)[None].expand(len(videos), -1, -1)
    mass_dec = routing_mass(block, torch.cat([latents, patch_tokens], 1), n + torch.arange(n_p, device=device),
                            owner)

    # ---- output layer: least-squares read-out of the decoder's features
    features = model.final_layer.norm_final(model.decoder(latents, patch_tokens)).flatten(0, 1).float().cpu()
    target = _patch_pixels(videos, c.decoder_temporal_patch_size, c.decoder_patch_size,
                           channels_last=True).flatten(0, 1).float().cpu()
    solution = _least_squares(torch.cat([features, torch.ones(len(features), 1)], 1), target, ridge=1e-3)
    model.final_layer.linear.weight.copy_(solution[:-1].T)
    model.final_layer.linear.bias.copy_(solution[-1])
    return {"routing_encoder": mass_enc, "routing_decoder": mass_dec}
