"""Videos longer than the tokenizer's clip, by chained frame prediction.

A frame-prediction model turns the tokens of k context frames into a whole clip of T frames whose first k
frames redo the context and whose other T - k frames follow it. `generate_long` starts from a video (real frames, or a class-conditional
sample), conditions the model on the video's last k frames, appends the T - k frames that follow them in
the predicted clip, and repeats until the video holds the asked number of frames. Each window's condition
is the tokenizer's encoding of the previous window's last k decoded frames (LARP tokens describe a whole
clip, not single frames, so the frames go through the tokenizer again)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from larp.models.ar import LARPAR
from larp.models.tokenizer import LARPTokenizer
from larp.sample.condition import check_pair, frame_prediction_condition
from larp.sample.generate import generate


@dataclass
class LongVideo:
    """A chained frame-prediction result."""

    video: torch.Tensor  # (B, 3, num_frames, H, W) in [0, 1]: the start frames, then the predicted ones
    start_frames: int  # how many leading frames came from the start video
    conditions: list[torch.Tensor] = field(default_factory=list)  # per window: the (B, N + 1) condition
    tokens: list[torch.Tensor] = field(default_factory=list)  # per window: the (B, N) sampled tokens
    context_frames: int = 5


def check_long_args(fp_model: LARPAR, tokenizer: LARPTokenizer, start_frames: int, num_frames: int,
                    context_frames: int) -> None:
    """Raise a ValueError naming what does not fit in a long-video request."""
    if not fp_model.config.frame_prediction:
        raise ValueError("long videos need a frame-prediction AR model, got a class-conditional one")
    check_pair(tokenizer, fp_model)
    t = tokenizer.video_shape[1]
    if not 1 <= context_frames < t:
        raise ValueError(f"context_frames must be in [1, {t - 1}] for this {t}-frame tokenizer, "
                         f"got {context_frames}")
    if start_frames < 1:
        raise ValueError("the start video has no frames")
    if num_frames <= start_frames:
        raise ValueError(f"num_frames ({num_frames}) must exceed the {start_frames} frames of the start video")


def plan_windows(start_frames: int, num_frames: int, clip_frames: int, context_frames: int) -> list[int]:
    """The context length of each window that takes a video of `start_frames` frames to `num_frames`."""
    plan, length = [], start_frames
    while length < num_frames:
        plan.append(min(context_frames, length))
        length += clip_frames - plan[-1]
    return plan


@torch.no_grad()
def iter_long(fp_model: LARPAR, tokenizer: LARPTokenizer, start: torch.Tensor, num_frames: int, *,
              context_frames: int = 5, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              generator: torch.Generator | None = None, static: bool = False, compile: bool = False,
              dtype: torch.dtype | None = None, on_window: Callable[[int, int], None] | None = None,
              keep: LongVideo | None = None) -> Iterator[torch.Tensor]:
    """`generate_long` as a stream: the start frames, then each window's new frames, (B, 3, n, H, W) in
    [0, 1], `num_frames` in all. Only the last `context_frames` frames are kept between windows, so memory
    does not grow with the video's length. `keep` collects the windows' conditions and tokens."""
    c, t, h, w = tokenizer.video_shape
    if start.ndim != 5 or start.shape[1] != c or tuple(start.shape[3:]) != (h, w):
        raise ValueError(f"expected a start video (B, {c}, F, {h}, {w}) in [0, 1], got shape {tuple(start.shape)}")
    check_long_args(fp_model, tokenizer, start.shape[2], num_frames, context_frames)
    plan = plan_windows(start.shape[2], num_frames, t, context_frames)
    tail, left = start.float(), num_frames - start.shape[2]
    yield tail
    for i, k in enumerate(plan):
        if on_window is not None:
            on_window(i, len(plan))
        cond = frame_prediction_condition(tokenizer, tail[:, :, -k:])
        tokens = generate(fp_model, cond, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                          static=static, compile=compile, dtype=dtype)
        new = tokenizer.decode(tokens).clamp(0, 1).float()[:, :, k:k + left]  # (B, 3, <= T - k, H, W)
        left -= new.shape[2]
        tail = torch.cat([tail[:, :, -context_frames:], new], dim=2)[:, :, -context_frames:]
        if keep is not None:
            keep.conditions.append(cond)
            keep.tokens.append(tokens)
        yield new


@torch.no_grad()
def generate_long(fp_model: LARPAR, tokenizer: LARPTokenizer, start: torch.Tensor, num_frames: int, *,
                  context_frames: int = 5, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, static: bool = False, compile: bool = False,
                  dtype: torch.dtype | None = None,
                  on_window: Callable[[int, int], None] | None = None) -> LongVideo:
    """Continue `start` (B, 3, F, H, W) in [0, 1] to `num_frames` frames with the frame-prediction model.

    Window w conditions on the last `context_frames` frames of the video so far (all of them while the video
    is shorter) and appends the T - context_frames frames that follow them in the decoded clip; the video is
    cut to `num_frames`. The start frames are kept as given. Sampling options as in `generate` (there is no
    guidance: frame prediction has no null class). `on_window(w, total)` is called before each window."""
    result = LongVideo(video=start.float(), start_frames=start.shape[2], context_frames=context_frames)
    chunks = iter_long(fp_model, tokenizer, start, num_frames, context_frames=context_frames,
                       temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, static=static,
                       compile=compile, dtype=dtype, on_window=on_window, keep=result)
    result.video = torch.cat(list(chunks), dim=2)
    return result
