"""Token generation with a LARPAR model: KV-cached decoding, classifier-free guidance, top-k / top-p.

Plain functions over a model. The cache is sized to the request (condition + N - 1 positions), each new
token attends to the filled prefix only, and the conditional and null-class halves of guidance run as one
batch."""

from __future__ import annotations

import contextlib

import torch

from larp.models.ar import LARPAR, KVCache
from larp.models.tokenizer import LARPTokenizer


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (B, V) logits outside the top-k and outside the nucleus of mass top_p with -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids. temperature 0 means argmax."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_sampling_args(cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _decode_step(model: LARPAR, tokens: torch.Tensor, caches: list[KVCache], pos: int | torch.Tensor
                 ) -> torch.Tensor:
    """One new token per sequence at position `pos` -> (B, V) logits of the next one."""
    return model.forward_hidden(model.tok_embeddings(tokens[:, None]), caches, pos)[:, -1]


_COMPILED_STEP = None


def _compiled_step():
    """The decode step compiled once per process with CUDA graphs ("reduce-overhead")."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_decode_step, mode="reduce-overhead", dynamic=False)
    return _COMPILED_STEP


@torch.no_grad()
def generate(model: LARPAR, cond: torch.Tensor, *, cfg_scale: float = 1.0, cfg_interval: int = -1,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None, num_tokens: int | None = None,
             static: bool = False, compile: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sample (B, N) tokens after `cond` with a KV cache.

    Guidance (class-conditional only, when cfg_scale != 1): logits = uncond + cfg_scale * (cond - uncond).
    With cfg_interval >= 0, as in the reference release, guidance covers tokens 0..cfg_interval + 1 and the
    conditional logits alone are used after that.

    Speed options (the same tokens in float32): `static` decodes with shapes that do not depend on the
    position (the whole cache, masked), which `compile` captures as CUDA graphs with torch.compile
    (CUDA only); `dtype=torch.bfloat16` runs the model under autocast (CUDA, or CPUs with bf16 support)."""
    _check_sampling_args(cfg_scale, temperature, top_k, top_p)
    model.check_cond(cond)
    n = num_tokens or model.num_tokens
    if not 0 < n <= model.num_tokens:
        raise ValueError(f"num_tokens must be in [1, {model.num_tokens}], got {n}")
    device = cond.device
    if compile and device.type != "cuda":
        raise ValueError("compile=True captures CUDA graphs and needs a CUDA device; use static=True on the CPU")
    batch = cond.shape[0]
    guided = cfg_scale != 1.0 and not model.config.frame_prediction
    if guided:
        if model.config.class_dropout_prob <= 0:
            raise ValueError("classifier-free guidance needs a model trained with a null class "
                             "(class_dropout_prob > 0)")
        cond = torch.cat([cond, torch.full_like(cond, model.null_class)])
    step_fn = _compiled_step() if compile else _decode_step
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype not in (None, torch.float32)
                else contextlib.nullcontext())

    was_training = model.training
    model.eval()
    try:
        with autocast:
            caches = model.new_caches(cond.shape[0], model.cond_length + n - 1)
            out = torch.empty(batch, n, dtype=torch.long, device=device)
            step_in = torch.empty(cond.shape[0], dtype=torch.long, device=device)  # reused every step
            pos = torch.tensor(model.cond_length, device=device) if (static or compile) else model.cond_length
            logits = model.forward_hidden(model.cond_embeddings(cond), caches, 0)[:, -1]  # (B or 2B, V)
            for i in range(n):
                logits = logits.float()
                if guided:
                    c, u = logits[:batch], logits[batch:]
                    logits = u + cfg_scale * (c - u) if (cfg_interval < 0 or i <= cfg_interval + 1) else c
                token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
                out[:, i] = token
                if i == n - 1:
                    break
                step_in[:batch] = token
                if guided:
                    step_in[batch:] = token
                logits = step_fn(model, step_in, caches, pos)
                pos += 1  # in place for a tensor: the captured graph reads the new value
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def generate_without_cache(model: LARPAR, cond: torch.Tensor, *, cfg_scale: float = 1.0,
                           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Reference loop that recomputes the whole prefix for every token (for tests and benchmarks)."""
    model.check_cond(cond)
    batch, n = cond.shape[0], model.num_tokens
    guided = cfg_scale != 1.0 and not model.config.frame_prediction
    full_cond = torch.cat([cond, torch.full_like(cond, model.null_class)]) if guided else cond
    tokens = torch.zeros(batch, 0, dtype=torch.long, device=cond.device)
    for _ in range(n):
        prefix = torch.cat([tokens, tokens]) if guided else tokens
        h = torch.cat([model.cond_embeddings(full_cond), model.tok_embeddings(prefix)], dim=1)
        logits = model.forward_hidden(h)[:, -1].float()
        if guided:
            logits = logits[batch:] + cfg_scale * (logits[:batch] - logits[batch:])
        tokens = torch.cat([tokens, sample_next(logits, temperature, top_k, top_p, generator)[:, None]], dim=1)
    return tokens


def frame_prediction_condition(tokenizer: LARPTokenizer, context: torch.Tensor) -> torch.Tensor:
    """Context frames (B, 3, k, H, W), k <= T, -> (B, N + 1) condition: the tokens of the context padded
    to T frames by repeating its last frame, then the separator id (= codebook size)."""
    c, t, h, w = tokenizer.video_shape
    if context.ndim != 5 or context.shape[1] != c or tuple(context.shape[3:]) != (h, w):
        raise ValueError(f"expected context frames (B, {c}, k, {h}, {w}) with 1 <= k <= {t}, "
                         f"got shape {tuple(context.shape)}")
    k = context.shape[2]
    if not 1 <= k <= t:
        raise ValueError(f"expected 1 to {t} context frames, got {k}")
    padded = torch.cat([context, context[:, :, -1:].expand(-1, -1, t - k, -1, -1)], dim=2)
    tokens = tokenizer.encode(padded, deterministic=True)
    sep = torch.full((tokens.shape[0], 1), tokenizer.codebook_size, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([tokens, sep], dim=1)
