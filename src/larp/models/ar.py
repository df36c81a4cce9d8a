"""`LARPAR`: the Llama-style autoregressive generator over LARP tokens (docs/method.md).

Sequence = [condition (cls_token_num positions) ; tokens]. The condition is one class embedding
(class-conditional) or the tokenizer's tokens of the context frames plus a separator (frame prediction).
Learned absolute position embeddings, no RoPE. Generation lives in `larp.sample.generate`; this module only offers
the forward passes it needs, with a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from larp.models.config import ARConfig
from larp.models.hub import HubModelMixin
from larp.models.layers import RMSNorm, SwiGLU, sincos_1d, swiglu_hidden_dim


class KVCache:
    """Keys and values of one layer for a whole request, allocated once: (B, H_kv, L, head_dim)."""

    def __init__(self, batch: int, n_kv_head: int, length: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        self.k = torch.zeros(batch, n_kv_head, length, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write positions [start, start + n); return the keys and values to attend to, and a mask.

        With an int `start` these are views of the filled prefix [0, start + n) and no mask is needed. With a
        0-d tensor `start` (the static-shape path that CUDA graphs capture) they are the whole cache, and
        the mask (n, L) hides the positions not yet written."""
        n = k.shape[2]
        if isinstance(start, int):
            end = start + n
            self.k[:, :, start:end] = k
            self.v[:, :, start:end] = v
            return self.k[:, :, :end], self.v[:, :, :end], None
        pos = start + torch.arange(n, device=k.device)
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        mask = torch.arange(self.k.shape[2], device=k.device)[None, :] <= pos[:, None]  # (n, L)
        return self.k, self.v, mask

    def write_one(self, pos: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one position's keys and values, (B, H_kv, head_dim) each, at `pos` (an int or a 0-d tensor)."""
        if isinstance(pos, int):  # a slice, not an index: torch.compile then keeps `pos` symbolic
            self.k[:, :, pos:pos + 1] = k.unsqueeze(2)
            self.v[:, :, pos:pos + 1] = v.unsqueeze(2)
        else:  # in place at a position held in a tensor: no host sync, the same kernel at every step
            self.k.index_copy_(2, pos.view(1), k.unsqueeze(2).to(self.k.dtype))
            self.v.index_copy_(2, pos.view(1), v.unsqueeze(2).to(self.v.dtype))

    @property
    def length(self) -> int:
        return self.k.shape[2]


class Attention(nn.Module):
    def __init__(self, cfg: ARConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.dim // cfg.n_head
        self.wqkv = nn.Linear(cfg.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, start: int | torch.Tensor = 0) -> torch.Tensor:
        b, n, d = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([d, kv, kv], dim=-1)
        q = q.view(b, n, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, n, hd)
        k = k.view(b, n, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(b, n, self.n_kv_head, self.head_dim).transpose(1, 2)
        mask = None
        if cache is not None:
            k, v, mask = cache.update(start, k, v)  # the filled prefix only (or all of it, masked)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        dropout = self.attn_dropout_p if self.training else 0.0
        if mask is not None:  # static shapes: the whole cache, unwritten positions masked
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif n == 1:  # one new token attends to the whole prefix
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        elif k.shape[2] == n:  # prefill or training: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:  # a chunk after a prefix: causal within the chunk, full over the prefix
            mask = torch.ones(n, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=k.shape[2] - n)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(b, n, d)
        return self.resid_dropout(self.wo(y))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ARConfig, drop_path: float):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = SwiGLU(cfg.dim, swiglu_hidden_dim(cfg.dim, cfg.multiple_of, cfg.ffn_dim_multiplier),
                                   cfg.ffn_dropout_p)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if drop_path > 0:  # timm imported here: it costs ~200 MiB resident (torchvision, torch._dynamo)
            from timm.layers import DropPath

            self.drop_path = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, start: int | torch.Tensor = 0) -> torch.Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), cache, start))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


def _building_on_meta() -> bool:
    return torch.empty(0).is_meta


def _embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding; on the meta device without its random initialisation (normal_ on meta tensors imports
    torch._dynamo, ~150 MiB resident, and every weight is loaded over it anyway)."""
    if _building_on_meta():
        return nn.Embedding(num, dim, _weight=torch.empty(num, dim))
    return nn.Embedding(num, dim)


class LabelEmbedder(nn.Module):
    """Class embedding with a null class (last row) for classifier-free guidance and label dropout."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = _embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: torch.Tensor, generator: torch.Generator | None = None, drop: bool = True
                ) -> torch.Tensor:
        # Label dropout in training; drop=False when the caller has already chosen the dropped labels.
        if drop and self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device, generator=generator) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class LARPAR(HubModelMixin, nn.Module):
    config_class = ARConfig
    kind = "an AR model"

    def __init__(self, config: ARConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.cls_embedding = (None if cfg.frame_prediction
                              else LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob))
        self.tok_embeddings = _embedding(cfg.input_vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        # Stochastic depth grows linearly with depth (plain floats: the model may be built on 'meta').
        rates = [cfg.drop_path_rate * i / max(cfg.n_layer - 1, 1) for i in range(cfg.n_layer)]
        self.layers = nn.ModuleList([TransformerBlock(cfg, r) for r in rates])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        pe_len = cfg.max_seq_len + cfg.cls_token_num - 1
        if cfg.use_fixed_pe:
            self.register_buffer("abs_pe", sincos_1d(cfg.dim, torch.arange(pe_len)).float()[None])
        elif _building_on_meta():
            self.abs_pe = nn.Parameter(torch.empty(1, pe_len, cfg.dim))
        else:
            self.abs_pe = nn.Parameter(torch.randn(1, pe_len, cfg.dim) * 0.02)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.output.weight.is_meta:
            return  # nothing to initialise: the weights are loaded over it
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.output.weight)

    # ---------------------------------------------------------------------------------------- checks
    @property
    def num_tokens(self) -> int:
        return self.config.max_seq_len

    @property
    def cond_length(self) -> int:
        return self.config.cls_token_num

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def check_cond(self, cond: torch.Tensor, allow_null: bool = False) -> None:
        """Raise a ValueError naming the expected condition and what came."""
        cfg = self.config
        if cfg.frame_prediction:
            n = cfg.cls_token_num
            expected = (f"an integer tensor (B, {n}) of frame-prediction condition tokens: {n - 1} codes in "
                        f"[0, {cfg.vocab_size}) followed by the separator {cfg.separator_id}")
            if not isinstance(cond, torch.Tensor) or cond.is_floating_point() or cond.ndim != 2 or cond.shape[1] != n:
                got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
                raise ValueError(f"expected {expected}, got {got}"
                                 + (f" of dtype {cond.dtype}" if isinstance(cond, torch.Tensor) else ""))
            if cond.numel():
                if bool((cond[:, -1] != cfg.separator_id).any()):
                    raise ValueError(f"expected {expected}, but the last position holds "
                                     f"{cond[:, -1].tolist()} instead of the separator")
                lo, hi = int(cond[:, :-1].min()), int(cond[:, :-1].max())
                if lo < 0 or hi >= cfg.vocab_size:
                    raise ValueError(f"expected {expected}, got codes in [{lo}, {hi}]")
            return
        top = cfg.num_classes + (1 if allow_null and cfg.has_null_class else 0)
        expected = f"an integer tensor (B,) of class ids in [0, {top})"
        if not isinstance(cond, torch.Tensor) or cond.is_floating_point() or cond.ndim != 1:
            got = f"shape {tuple(cond.shape)} dtype {cond.dtype}" if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"expected {expected}, got {got}")
        if cond.numel():
            lo, hi = int(cond.min()), int(cond.max())
            if lo < 0 or hi >= top:
                raise ValueError(f"expected {expected}, got class ids in [{lo}, {hi}]")

    def check_tokens(self, tokens: torch.Tensor) -> None:
        n, v = self.config.max_seq_len, self.config.vocab_size
        expected = f"an integer tensor (B, {n}) of tokens in [0, {v})"
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.ndim != 2 \
                or tokens.shape[1] != n:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"expected {expected}, got {got}")
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= v:
                raise ValueError(f"expected {expected}, got tokens in [{lo}, {hi}]")

    # -------------------------------------------------------------------------------------- forward
    def cond_embeddings(self, cond: torch.Tensor, generator: torch.Generator | None = None,
                        drop_labels: bool = True) -> torch.Tensor:
        """(B,) class ids or (B, cls_token_num) condition tokens -> (B, cls_token_num, dim). In training,
        class labels are dropped to the null class at random unless `drop_labels` is False."""
        if self.cls_embedding is None:
            return self.tok_embeddings(cond)
        return self.cls_embedding(cond, generator, drop_labels).unsqueeze(1)

    def forward_features(self, h: torch.Tensor, caches: list[KVCache] | None = None,
                         start: int | torch.Tensor = 0) -> torch.Tensor:
        """Embedded positions [start, start + L) -> (B, L, dim) final hidden states (before `norm`), using
        and filling `caches`. `start` may be a 0-d tensor: then no shape depends on the position."""
        if isinstance(start, int):
            pe = self.abs_pe[:, start:start + h.shape[1]]
        else:
            pe = self.abs_pe.index_select(1, start + torch.arange(h.shape[1], device=h.device))
        h = self.tok_dropout(h) + pe
        for i, layer in enumerate(self.layers):
            h = layer(h, caches[i] if caches is not None else None, start)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., dim) -> logits (..., vocab)."""
        return self.output(self.norm(h))

    def forward_hidden(self, h: torch.Tensor, caches: list[KVCache] | None = None, start: int | torch.Tensor = 0
                       ) -> torch.Tensor:
        """Embedded positions [start, start + L) -> (B, L, vocab) logits, using and filling `caches`.

        `start` may be a 0-d tensor: then every shape is independent of the position (CUDA graphs)."""
        return self.head(self.forward_features(h, caches, start))

    def decode_step(self, tokens: torch.Tensor, caches: list[KVCache], pos: int | torch.Tensor) -> torch.Tensor:
        """One new token per sequence: (B,) ids at position `pos` -> (B, vocab) logits of the next token.

        Inference only (eval mode: no dropout). The operations of `forward_hidden` for one position, in
        the same order, written out without module calls and per-layer branching: the decoding loop runs
        this once per token, so its fixed cost per call is most of a step for small models. With an int
        `pos` attention reads the filled prefix [0, pos]; with a 0-d tensor `pos` it reads the whole cache
        with the unwritten positions masked, so that no shape depends on the position (CUDA graphs)."""
        b = tokens.shape[0]
        static = isinstance(pos, torch.Tensor)
        if static:
            pe = self.abs_pe.index_select(1, pos.view(1))
            mask = (torch.arange(caches[0].length, device=tokens.device) <= pos)[None]  # (1, L)
        else:
            pe = self.abs_pe[:, pos:pos + 1]
            mask = None
        x = F.embedding(tokens[:, None], self.tok_embeddings.weight) + pe  # (B, 1, dim)
        first = self.layers[0].attention
        n_head, n_kv, hd = first.n_head, first.n_kv_head, first.head_dim
        dim, kv = n_head * hd, n_kv * hd
        for layer, cache in zip(self.layers, caches, strict=True):
            attn, ffn = layer.attention, layer.feed_forward
            q, k, v = F.linear(layer.attention_norm(x), attn.wqkv.weight).split([dim, kv, kv], dim=-1)
            cache.write_one(pos, k.view(b, n_kv, hd), v.view(b, n_kv, hd))
            if static:
                keys, values = cache.k, cache.v
            else:
                keys, values = cache.k[:, :, :pos + 1], cache.v[:, :, :pos + 1]
            if n_kv != n_head:
                keys = keys.repeat_interleave(n_head // n_kv, dim=1)
                values = values.repeat_interleave(n_head // n_kv, dim=1)
            y = F.scaled_dot_product_attention(q.view(b, 1, n_head, hd).transpose(1, 2), keys, values,
                                               attn_mask=mask)
            x = x + F.linear(y.transpose(1, 2).reshape(b, 1, dim), attn.wo.weight)
            h = layer.ffn_norm(x)
            x = x + F.linear(F.silu(F.linear(h, ffn.w1.weight)) * F.linear(h, ffn.w3.weight), ffn.w2.weight)
        return self.head(x[:, 0])

    def logits(self, tokens: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
               drop_labels: bool = True) -> torch.Tensor:
        """Teacher-forced logits (B, N, vocab): [:, i] predicts tokens[:, i] from cond and tokens[:, :i].

        In training mode class labels are dropped at random (label dropout) unless `drop_labels` is False."""
        self.check_tokens(tokens)
        self.check_cond(cond, allow_null=True)
        if cond.shape[0] != tokens.shape[0]:
            raise ValueError(f"cond has batch {cond.shape[0]} but tokens have batch {tokens.shape[0]}")
        h = torch.cat([self.cond_embeddings(cond, generator, drop_labels), self.tok_embeddings(tokens[:, :-1])],
                      dim=1)
        return self.forward_hidden(h)[:, self.cond_length - 1:]

    forward = logits

    def new_caches(self, batch: int, length: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        """One KV cache per layer for `batch` sequences of `length` positions."""
        ref = self.output.weight
        attn = self.layers[0].attention
        return [KVCache(batch, attn.n_kv_head, length, attn.head_dim, dtype or ref.dtype, ref.device)
                for _ in self.layers]
