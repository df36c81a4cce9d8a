"""Local linear initialisation: start a small tokenizer as a per-region linear (PCA) autoencoder.

Why (docs/studies/small_scale_recipes.md): a small LARP tokenizer trained from the released initialisation sits at
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

With more latents than patches (a whole number S per patch that divides the heads), latent i holds slice
i // Np of the principal components of patch i % Np, and the slices travel through separate attention heads
(`_sliced_init`): the tokens then run coarse to fine, all patches' first slices before any second one.

The model then starts near a per-patch PCA autoencoder, far above the mean video (docs/studies/small_scale_recipes.md
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

    read_query, read_key: (D, K) maps from normalised tokens to codes, the same in every head, or (H, D, K) with
    one map per head. Each head sees the codes through its own (head_dim, K) matrix with orthonormal columns,
    which keeps the inner product exact."""
    attn = block.attn
    heads = attn.num_heads
    if read_query.dim() == 2:
        read_query, read_key = read_query.expand(heads, -1, -1), read_key.expand(heads, -1, -1)
    d, k = read_query.shape[1:]
    head_dim = d // heads
    if k > head_dim:
        raise ValueError(f"local_linear_init: {k} position-code dimensions exceed the head width {head_dim}")
    rot = torch.linalg.qr(torch.randn(heads, head_dim, k, generator=generator))[0]
    s = head_dim ** 0.25  # the attention divides logits by sqrt(head_dim)
    attn.qkv.weight[:d].copy_(torch.cat([rot[h] @ read_query[h].T for h in range(heads)]) * gain * s)
    attn.qkv.weight[d:2 * d].copy_(torch.cat([rot[h] @ read_key[h].T for h in range(heads)]) * s)


def _set_value_path(block: nn.Module, content: torch.Tensor, gain: float) -> None:
    """Values copy the content subspace (D, k); the output projection is `gain` times the identity."""
    d = content.shape[0]
    block.attn.qkv.weight[2 * d:].copy_(content @ content.T)
    block.attn.proj.weight.copy_(torch.eye(d) * gain)
    block.attn.proj.bias.zero_()


def _set_head_values(block: nn.Module, reads: list[torch.Tensor], writes: list[torch.Tensor], gain: float) -> None:
    """Head h's value reads the subspace reads[h] (D, r) and its output is written to writes[h] (D, r), times
    `gain`; the other value and output dimensions are zero."""
    attn = block.attn
    d = attn.proj.weight.shape[0]
    head_dim = d // attn.num_heads
    value, proj = torch.zeros(d, d), torch.zeros(d, d)
    for h, (read, write) in enumerate(zip(reads, writes, strict=True)):
        r = read.shape[1]
        if r > head_dim:
            raise ValueError(f"local_linear_init: {r} value dimensions exceed the head width {head_dim}")
        value[h * head_dim:h * head_dim + r] = read.T
        proj[:, h * head_dim:h * head_dim + r] = write * gain
    attn.qkv.weight[2 * d:].copy_(value)
    attn.proj.weight.copy_(proj)
    attn.proj.bias.zero_()


def _patch_pixels(videos: torch.Tensor, temporal_patch: int, patch: int, channels_last: bool) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, Np, pt*p*p*C) in (t, h, w) patch order; the pixels of a patch in the order of
    the patch-embedding convolution's weight (C, pt, p, p) or of `unpatchify` (pt, p, p, C)."""
    b, c, t, h, w = videos.shape
    x = videos.reshape(b, c, t // temporal_patch, temporal_patch, h // patch, patch, w // patch, patch)
    order = (0, 2, 4, 6, 3, 5, 7, 1) if channels_last else (0, 2, 4, 6, 1, 3, 5, 7)
    return x.permute(*order).reshape(b, -1, c * temporal_patch * patch * patch)


def routing_mass(block: nn.Module, tokens: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                 heads: torch.Tensor | None = None) -> float:
    """Mean attention weight that rows `rows` of `block`'s first attention put on keys `targets` (same length),
    over all heads or, when given, in heads `heads` (same length)."""
    attn = block.attn
    d = tokens.shape[-1]
    qkv = attn.qkv(block.norm1(tokens)).unflatten(-1, (3, attn.num_heads, d // attn.num_heads))
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, heads, L, dh)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(d // attn.num_heads)).softmax(-1)
    if heads is None:
        return float(weights[:, :, rows, targets].mean())
    return float(weights[:, heads, rows, targets].mean())


@torch.no_grad()
def local_linear_init(model: LARPTokenizer, videos: torch.Tensor, routing_gain: float = 16.0,
                      content_dims: int = 48, content_fraction: float = 0.3, value_gain: float = 3.0,
                      generator: torch.Generator | None = None) -> dict[str, float]:
    """Initialise `model` from `videos` (B, C, T, H, W) in [0, 1] as described in the module docstring.

    `content_dims` principal components enter the encoder when a latent owns one patch or more; with several
    latents per patch the latents' S slices of d - 1 components do (d: the bottleneck's width).

    Returns the routing achieved on these clips: `routing_encoder` (attention mass of latent queries on the
    patches they own) and `routing_decoder` (of patch queries on their latent), each 1.0 when perfect."""
    model.check_video(videos)
    c = model.config
    n, d_enc, d_dec = c.bottleneck_token_num, c.encoder_hidden_size, c.decoder_hidden_size
    n_p = math.prod(c.encoder_grid)
    if n > n_p:
        return _sliced_init(model, videos, routing_gain, content_fraction, value_gain, generator)
    if len(videos) * n_p < 2 * content_dims:
        raise ValueError(f"local_linear_init: {len(videos)} clips give too few patches for {content_dims} "
                         "principal components; pass more clips")
    videos = videos.to(model.x_embedder.proj.weight)
    device = videos.device
    patch_code, latent_code = (x.to(device) for x in _position_codes(c.encoder_grid, n))
    k = patch_code.shape[1]
    owner = torch.arange(n_p, device=device) * n // n_p

    _zero_later_branches(model)

    # ---- encoder: position span, query codes, content
    pe = model.encoder_patch_pe[0].float().cpu()
    ones = torch.ones(1, d_enc) / math.sqrt(d_enc)  # LayerNorm removes this direction
    span_pe = _span(torch.cat([pe, ones]))
    query_basis = _complement_basis(span_pe, k, generator)
    queries = latent_code.cpu() @ query_basis.T * math.sqrt(d_enc / k)
    content = _complement_basis(_span(torch.cat([pe, ones, queries])), content_dims, generator)
    _embed_components(model, videos, content, pe, content_fraction, generator)
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
    latent_pe, patch_queries = _decoder_inputs(model)
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

    _fit_read_out(model, videos, latents, patch_tokens)
    return {"routing_encoder": mass_enc, "routing_decoder": mass_dec}


def _embed_components(model: LARPTokenizer, videos: torch.Tensor, content: torch.Tensor, pe: torch.Tensor,
                      content_fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    """The patch embedding writes the top k principal components of the clips' patches into `content` (D, k),
    at `content_fraction` of the position embedding `pe`'s norm. Returns their standard deviations (k,)."""
    c = model.config
    pixels = _patch_pixels(videos, c.temporal_patch_size, c.patch_size, channels_last=False).flatten(0, 1)
    mean, components, std = _pca(pixels.cpu().float(), content.shape[1], generator)
    scale = content_fraction * float(pe.norm(dim=-1).mean()) / float(std.norm())
    weight = scale * content @ components  # (D_enc, C*pt*p*p)
    model.x_embedder.proj.weight.copy_(weight.reshape(model.x_embedder.proj.weight.shape))
    model.x_embedder.proj.bias.copy_(-(weight @ mean))
    return std


def _decoder_inputs(model: LARPTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D_dec) latent position embedding and (Np, D_dec) patch queries of the decoder, on the CPU."""
    latent_pe = model.decoder_latent_pe[0].float().cpu()
    patch_queries = (model.decoder_patch_query_embed + model.decoder_patch_query_token_type_embed)[0].float().cpu()
    return latent_pe, patch_queries


def _fit_read_out(model: LARPTokenizer, videos: torch.Tensor, latents: torch.Tensor, patch_tokens: torch.Tensor
                  ) -> None:
    """The output layer: the least-squares read-out of the decoder's features, fitted to the clips' pixels."""
    c = model.config
    features = model.final_layer.norm_final(model.decoder(latents, patch_tokens)).flatten(0, 1).float().cpu()
    target = _patch_pixels(videos, c.decoder_temporal_patch_size, c.decoder_patch_size,
                           channels_last=True).flatten(0, 1).float().cpu()
    solution = _least_squares(torch.cat([features, torch.ones(len(features), 1)], 1), target, ridge=1e-3)
    model.final_layer.linear.weight.copy_(solution[:-1].T)
    model.final_layer.linear.bias.copy_(solution[-1])


def _zero_later_branches(model: LARPTokenizer) -> None:
    """Every MLP, and every attention after the first, starts at zero: each transformer is one attention."""
    for blocks in (model.encoder.blocks, model.decoder.blocks):
        for i, block in enumerate(blocks):
            nn.init.zeros_(block.mlp.fc2.weight)
            if i > 0:
                nn.init.zeros_(block.attn.proj.weight)


@torch.no_grad()
def _sliced_init(model: LARPTokenizer, videos: torch.Tensor, routing_gain: float, content_fraction: float,
                 value_gain: float, generator: torch.Generator | None) -> dict[str, float]:
    """Several latents per patch: S = N / Np latents share each patch, latent i holding slice i // Np of the
    principal components of patch i % Np (slice 0 the largest), so the tokens run coarse to fine.

    The slices travel through separate attention heads: in the encoder, head h routes the latents of slice
    h mod S to their patch and reads that slice's components into one shared subspace, which the bottleneck
    reads (the other latents attend to the latent queries there, whose values are zero); in the decoder,
    head h routes each patch query to its slice-(h mod S) latent and writes the code into a subspace of its
    own, so the patch query receives all S slices side by side. Each slice carries d - 1 components plus a
    constant coordinate: the bottleneck normalises its d-vector, and the constant keeps the components'
    magnitude readable from the direction."""
    c = model.config
    n, d_enc, d_dec, m = c.bottleneck_token_num, c.encoder_hidden_size, c.decoder_hidden_size, c.bottleneck_dim
    n_p = math.prod(c.encoder_grid)
    slices = n // n_p
    for name, heads in (("encoder", c.encoder_num_heads), ("decoder", c.decoder_num_heads)):
        if n % n_p or heads % slices:
            raise ValueError(f"local_linear_init: {n} latents for {n_p} patches need a whole number of latents "
                             f"per patch that divides the {name}'s {heads} heads")
    if c.encoder_grid != c.decoder_grid:
        raise ValueError("local_linear_init: several latents per patch need the same encoder and decoder patches")
    videos = videos.to(model.x_embedder.proj.weight)
    device = videos.device
    patch_code = _position_codes(c.encoder_grid, n_p)[0]  # (Np, K) one-hot t, h, w
    k = patch_code.shape[1]
    slice_of, patch_of = torch.arange(n) // n_p, torch.arange(n) % n_p
    per_slice = m - 1
    _zero_later_branches(model)

    # ---- encoder: query codes hold the patch code in the block of their slice
    pe = model.encoder_patch_pe[0].float().cpu()
    ones = torch.ones(1, d_enc) / math.sqrt(d_enc)
    blocks = torch.zeros(n, slices, k)
    blocks[torch.arange(n), slice_of] = patch_code[patch_of]
    code = blocks.flatten(1)  # (N, S*K)
    query_basis = _complement_basis(_span(torch.cat([pe, ones])), slices * k, generator)
    queries = code @ query_basis.T * math.sqrt(d_enc / k)
    content = _complement_basis(_span(torch.cat([pe, ones, queries])), slices * per_slice, generator)
    std = _embed_components(model, videos, content, pe, content_fraction, generator)
    model.encoder_latent_query_embed.copy_(queries)

    enc_block, enc_heads = model.encoder.blocks[0], c.encoder_num_heads
    head_slice = [h % slices for h in range(enc_heads)]
    # A latent reads its patch's code in its slice's heads and a sink code elsewhere; patches carry their code,
    # latent queries the sink.
    read_q = [_least_squares(_layer_norm(queries), torch.cat([blocks[:, s], (slice_of != s).float()[:, None]], 1))
              for s in range(slices)]
    key_code = torch.cat([torch.cat([patch_code, torch.zeros(n_p, 1)], 1),
                          torch.cat([torch.zeros(n, k), torch.ones(n, 1)], 1)])
    read_k = _least_squares(_layer_norm(torch.cat([pe, queries])), key_code)
    _set_routing(enc_block, torch.stack([read_q[s] for s in head_slice]), read_k.expand(enc_heads, -1, -1),
                 routing_gain, generator)
    # slice s's components, each slice brought to the first slice's scale, land in one shared subspace
    slice_std = std.view(slices, per_slice).norm(dim=1)
    shared = content[:, :per_slice]
    share = enc_heads // slices
    _set_head_values(enc_block, [content[:, s * per_slice:(s + 1) * per_slice] * float(slice_std[0] / slice_std[s])
                                 for s in head_slice], [shared] * enc_heads, value_gain / share)
    tokens = torch.cat([model.embed(videos), model.encoder_latent_query_embed.expand(len(videos), -1, -1)], 1)
    rows = torch.arange(n).repeat_interleave(share)
    heads = slice_of[rows] + slices * torch.arange(share).repeat(n)  # the heads h with h mod S = the row's slice
    mass_enc = routing_mass(enc_block, tokens, (n_p + rows).to(device), patch_of[rows].to(device),
                            heads.to(device))

    # ---- bottleneck: the shared subspace, scaled to unit RMS, plus a constant last coordinate
    encoded = model.encode_continuous(videos)
    hidden = encoded.float().cpu() @ shared  # (B, N, d - 1)
    centre = hidden.flatten(0, 1).mean(0)
    rms = float((hidden - centre).pow(2).sum(-1).mean().sqrt())
    model.bottleneck.in_linear.weight.copy_(torch.cat([shared.T / rms, torch.zeros(1, d_enc)]))
    model.bottleneck.in_linear.bias.copy_(torch.cat([-centre / rms, torch.ones(1)]))

    # ---- decoder: head h routes patch queries to their slice-(h mod S) latent and writes into its own slot
    latent_pe, patch_queries = _decoder_inputs(model)
    dec_ones = torch.ones(1, d_dec) / math.sqrt(d_dec)
    code_in = _complement_basis(_span(torch.cat([latent_pe, patch_queries, dec_ones])), m, generator)
    slots = _complement_basis(_span(torch.cat([patch_queries, dec_ones, code_in.T])), slices * m, generator)
    model.bottleneck.out_linear.weight.copy_(code_in * float(latent_pe.norm(dim=-1).mean()))
    model.bottleneck.out_linear.bias.zero_()
    dec_block, dec_heads = model.decoder.blocks[0], c.decoder_num_heads
    dec_slice = [h % slices for h in range(dec_heads)]
    read_query = _least_squares(_layer_norm(patch_queries), patch_code)
    keys = _layer_norm(torch.cat([latent_pe, patch_queries]))
    read_k = [_least_squares(keys, torch.cat([patch_code[patch_of] * (slice_of == s).float()[:, None],
                                              torch.zeros(n_p, k)])) for s in range(slices)]
    _set_routing(dec_block, read_query.expand(dec_heads, -1, -1), torch.stack([read_k[s] for s in dec_slice]),
                 routing_gain, generator)
    share = dec_heads // slices
    _set_head_values(dec_block, [code_in] * dec_heads, [slots[:, s * m:(s + 1) * m] for s in dec_slice],
                     value_gain / share)
    unit = model.bottleneck.project(encoded)
    latents = model.bottleneck.out_linear(unit) + model.decoder_latent_pe
    patch_tokens = patch_queries.to(device)[None].expand(len(videos), -1, -1)
    rows = torch.arange(n_p).repeat(dec_heads)
    heads = torch.arange(dec_heads).repeat_interleave(n_p)
    targets = torch.tensor(dec_slice).repeat_interleave(n_p) * n_p + rows
    mass_dec = routing_mass(dec_block, torch.cat([latents, patch_tokens], 1), (n + rows).to(device),
                            targets.to(device), heads.to(device))

    _fit_read_out(model, videos, latents, patch_tokens)
    return {"routing_encoder": mass_enc, "routing_decoder": mass_dec}
