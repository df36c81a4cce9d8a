"""What an AR model is conditioned on, and whether a tokenizer and an AR model work together.

Frame prediction conditions on the tokenizer's tokens of the context frames padded to the tokenizer's clip
length by repeating the last context frame, followed by the separator id (= codebook size). Training (the
token cache, on-the-fly encoding), the sampling job, `larp generate` and long-video generation all build
the condition with these functions, so that a model sees at sampling time exactly what it was trained on."""

from __future__ import annotations

import torch

from larp.models.ar import LARPAR
from larp.models.tokenizer import LARPTokenizer


def pad_context(frames: torch.Tensor, context_frames: int, num_frames: int | None = None) -> torch.Tensor:
    """(B, C, T', H, W) -> its first `context_frames` frames padded to `num_frames` (default T') frames by
    repeating the last context frame."""
    if frames.ndim != 5:
        raise ValueError(f"expected frames (B, C, T, H, W), got shape {tuple(frames.shape)}")
    total = frames.shape[2] if num_frames is None else num_frames
    if not 1 <= context_frames <= min(total, frames.shape[2]):
        raise ValueError(f"expected 1 to {min(total, frames.shape[2])} context frames, got {context_frames}")
    ctx = frames[:, :, :context_frames]
    return torch.cat([ctx, ctx[:, :, -1:].expand(-1, -1, total - context_frames, -1, -1)], dim=2)


def with_separator(tokens: torch.Tensor, separator: int) -> torch.Tensor:
    """(B, N) context tokens -> the (B, N + 1) frame-prediction condition ending in `separator`."""
    sep = torch.full((tokens.shape[0], 1), separator, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([tokens, sep], dim=1)


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
    tokens = tokenizer.encode(pad_context(context, k, t), deterministic=True)
    return with_separator(tokens, tokenizer.codebook_size)


def check_pair(tokenizer: LARPTokenizer, ar: LARPAR, where: str = "") -> None:
    """Raise a ValueError when the AR model cannot run on this tokenizer's tokens: it must predict the
    tokenizer's codes, as many per clip as the tokenizer makes. `where` (e.g. the two model names) is added
    to the message."""
    a, k, n = ar.config, tokenizer.codebook_size, tokenizer.num_tokens
    suffix = f" {where}" if where else ""
    if a.vocab_size != k:
        raise ValueError(f"the AR model's vocab_size is {a.vocab_size} but the tokenizer's codebook has {k} "
                         f"codes; they do not fit together{suffix}")
    if a.max_seq_len != n:
        raise ValueError(f"the AR model makes max_seq_len={a.max_seq_len} tokens but the tokenizer uses {n} "
                         f"tokens per clip; they do not fit together{suffix}")
