"""Token generation with a LARPAR model: prefill, one decode step, and the sampling loop.

`prefill` runs the condition through the model, fills the KV caches (sized to the request: condition +
N - 1 positions) and returns the logits of the first token. A decode step turns one new token per sequence
into the logits of the next one; it comes in three variants that compute the same numbers:

- eager (`decode_step`): attention reads the filled prefix of the cache only;
- static (`static_decode_step`): the position is a 0-d tensor and attention reads the whole cache with
  the unwritten positions masked, so that no shape depends on the position;
- compiled (`compiled_decode_step`): torch.compile of the static step with CUDA graphs on a GPU, of the
  eager step (inductor, shapes dynamic in the position, no CUDA graphs) on a CPU.

`generate` is the loop: guidance (the conditional and null-class halves in one batch), temperature,
top-k / top-p, multinomial sampling, and feeding each token back."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from larp.models.ar import LARPAR, KVCache
from larp.sample.condition import frame_prediction_condition

__all__ = ["compiled_decode_step", "decode_step", "filter_logits", "frame_prediction_condition", "generate",
           "generate_without_cache", "guide", "guided_condition", "prefill", "sample_next",
           "static_decode_step"]

DecodeStep = Callable[[LARPAR, torch.Tensor, list[KVCache], "int | torch.Tensor"], torch.Tensor]


# ------------------------------------------------------------------------------------------ sampling
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
    if temperature != 1.0:  # dividing by 1 changes no value; skipping it saves a pass over the logits
        logits = logits / temperature
    probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# Beyond these the float32 logits overflow (cfg_scale * difference, logits / temperature) and sampling
# would fail on NaN probabilities; ordinary values are 1-3 and 0.5-1.5.
MAX_CFG_SCALE = 1000.0
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 1000.0


def check_sampling_args(cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    """Raise a ValueError naming the sampling option that is out of range (NaN and infinity included)."""
    if not 0 <= cfg_scale <= MAX_CFG_SCALE:  # NaN fails every comparison
        raise ValueError(f"cfg_scale must be >= 0 and <= {MAX_CFG_SCALE:g}, got {cfg_scale}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise ValueError(f"temperature must be 0 (argmax) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got "
                         f"{temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


# ------------------------------------------------------------------------------------------ guidance
def guided_condition(model: LARPAR, cond: torch.Tensor, cfg_scale: float) -> tuple[torch.Tensor, bool]:
    """The batch the model runs and whether guidance is on: with classifier-free guidance (class-conditional
    models, cfg_scale != 1) the null class is appended, so both halves run as one batch."""
    if cfg_scale == 1.0 or model.config.frame_prediction:
        return cond, False
    if not model.config.has_null_class:
        raise ValueError("classifier-free guidance needs a model trained with a null class "
                         "(class_dropout_prob > 0)")
    return torch.cat([cond, torch.full_like(cond, model.null_class)]), True


def guide(logits: torch.Tensor, batch: int, cfg_scale: float, active: bool = True) -> torch.Tensor:
    """(2B, V) logits of the conditional and null-class halves -> (B, V): uncond + cfg_scale * (cond - uncond)
    while `active`, the conditional half alone after that."""
    c, u = logits[:batch], logits[batch:]
    return u + cfg_scale * (c - u) if active else c


# ------------------------------------------------------------------------------------- model passes
def prefill(model: LARPAR, cond: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
    """Run the condition (positions [0, cond_length)) through the model, filling `caches`; return the
    (B, V) logits of the first token. Only the last position goes through the output layer."""
    h = model.forward_features(model.cond_embeddings(cond), caches, 0)
    return model.head(h[:, -1])


def decode_step(model: LARPAR, tokens: torch.Tensor, caches: list[KVCache], pos: int | torch.Tensor
                ) -> torch.Tensor:
    """(B,) tokens at position `pos` -> (B, V) logits of the next ones; attention reads the filled prefix."""
    return model.decode_step(tokens, caches, pos)


def static_decode_step(model: LARPAR, tokens: torch.Tensor, caches: list[KVCache], pos: torch.Tensor
                       ) -> torch.Tensor:
    """`decode_step` with the position in a 0-d tensor: every shape is the same at every step."""
    if not isinstance(pos, torch.Tensor) or pos.ndim != 0:
        raise ValueError(f"the static decode step takes the position as a 0-d tensor, got {pos!r}")
    return model.decode_step(tokens, caches, pos)


_COMPILED: dict[str, DecodeStep] = {}


def compiled_decode_step(device: torch.device) -> DecodeStep:
    """The decode step compiled once per process and device type. CUDA: the static step captured as CUDA
    graphs ("reduce-overhead"); give it the position as a 0-d tensor and caches whose tensors are marked
    static (`generate` does both). CPU: the eager step compiled by inductor with shapes dynamic in the
    position (one compilation for every position; no CUDA graphs)."""
    kind = device.type
    if kind not in _COMPILED:
        if kind == "cuda":
            _COMPILED[kind] = torch.compile(static_decode_step, mode="reduce-overhead", dynamic=False)
        elif kind == "cpu":
            _COMPILED[kind] = torch.compile(decode_step, dynamic=True)
        else:
            raise ValueError(f"compile=True supports cpu and cuda devices, got {device}")
    return _COMPILED[kind]


def _step_variant(device: torch.device, static: bool, compile: bool) -> tuple[DecodeStep, bool]:
    """(the decode step, whether it takes the position as a tensor)."""
    if compile:
        return compiled_decode_step(device), device.type == "cuda"
    if static:
        return static_decode_step, True
    return decode_step, False


@contextlib.contextmanager
def _eval_mode(model: LARPAR) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


_STATIC_CACHES: dict[tuple, list[KVCache]] = {}


def _static_caches(model: LARPAR, batch: int, length: int) -> list[KVCache]:
    """Caches at addresses that stay the same from one call to the next, for CUDA graphs (which read and
    update them in place; a new address makes them record again). The last shape asked for is kept.
    Stale values need no clearing: prefill overwrites the condition, and the static step masks every
    position after the current one."""
    attn = model.layers[0].attention
    w = model.output.weight
    key = (len(model.layers), attn.n_kv_head, attn.head_dim, batch, length, w.dtype, w.device)
    if key not in _STATIC_CACHES:
        _STATIC_CACHES.clear()
        caches = model.new_caches(batch, length)
        for cache in caches:
            torch._dynamo.mark_static_address(cache.k)
            torch._dynamo.mark_static_address(cache.v)
        _STATIC_CACHES[key] = caches
    return _STATIC_CACHES[key]


def in_dtype(model: LARPAR, dtype: torch.dtype | None) -> LARPAR:
    """`model` itself, or a copy with its weights cast to `dtype` (the reference release samples with the
    model cast to bfloat16: weights, activations and KV cache in bfloat16)."""
    if dtype is None or model.output.weight.dtype == dtype:
        return model
    with torch.device("meta"):
        copy = LARPAR(model.config)
    copy.load_state_dict({k: v.to(dtype) for k, v in model.state_dict().items()}, assign=True)
    return copy.eval()


# --------------------------------------------------------------------------------------------- loop
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
    position (the whole cache, masked); `compile` compiles the decode step with torch.compile (CUDA graphs
    on a GPU; inductor on a CPU, where the first call compiles for about a minute); `dtype` runs a copy of
    the model with its weights and KV cache in that dtype (bfloat16 as the reference release samples on
    GPUs; on CPUs without native bfloat16 arithmetic it is slower than float32, see docs/speed.md)."""
    check_sampling_args(cfg_scale, temperature, top_k, top_p)
    model.check_cond(cond)
    n = num_tokens or model.num_tokens
    if not 0 < n <= model.num_tokens:
        raise ValueError(f"num_tokens must be in [1, {model.num_tokens}], got {n}")
    device = cond.device
    batch = cond.shape[0]
    cond, guided = guided_condition(model, cond, cfg_scale)
    step, tensor_pos = _step_variant(device, static, compile)
    with _eval_mode(model):
        run = in_dtype(model, dtype)
        length = run.cond_length + n - 1
        if compile and device.type == "cuda":
            caches = _static_caches(run, cond.shape[0], length)
        else:
            # Compiled on a CPU, a prefix as long as the whole cache would be a shape of its own (a second
            # compilation for the last token): one spare position avoids it.
            caches = run.new_caches(cond.shape[0], length + int(compile))
        out = torch.empty(batch, n, dtype=torch.long, device=device)
        step_in = torch.empty(cond.shape[0], dtype=torch.long, device=device)  # reused every step
        pos: int | torch.Tensor = run.cond_length
        if tensor_pos:
            pos = torch.tensor(run.cond_length, device=device)
        logits = prefill(run, cond, caches)  # (B or 2B, V)
        for i in range(n):
            if guided:
                logits = guide(logits.float(), batch, cfg_scale, cfg_interval < 0 or i <= cfg_interval + 1)
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            out[:, i] = token
            if i == n - 1:
                break
            step_in[:batch] = token
            if guided:
                step_in[batch:] = token
            logits = step(run, step_in, caches, pos)
            pos += 1  # in place for a tensor: a captured graph reads the new value
    return out


@torch.no_grad()
def generate_without_cache(model: LARPAR, cond: torch.Tensor, *, cfg_scale: float = 1.0,
                           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Reference loop that recomputes the whole prefix for every token (for tests and benchmarks)."""
    model.check_cond(cond)
    batch, n = cond.shape[0], model.num_tokens
    full_cond, guided = guided_condition(model, cond, cfg_scale)
    tokens = torch.zeros(batch, 0, dtype=torch.long, device=cond.device)
    for _ in range(n):
        prefix = torch.cat([tokens, tokens]) if guided else tokens
        h = torch.cat([model.cond_embeddings(full_cond), model.tok_embeddings(prefix)], dim=1)
        logits = model.forward_hidden(h)[:, -1].float()
        if guided:
            logits = guide(logits, batch, cfg_scale)
        tokens = torch.cat([tokens, sample_next(logits, temperature, top_k, top_p, generator)[:, None]], dim=1)
    return tokens
