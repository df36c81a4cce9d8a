"""Whole videos of any length, frame rate and size through a tokenizer: windows of frames, spatial tiles,
token files (`tokens`), their layout (`layout`) and the `tokenize` / `decode` / `reconstruct` commands."""

from larp.videos.tokens import (
    VideoTokens,
    VideoTokensError,
    decode_tokens,
    iter_decode,
    iter_reconstruct,
    reconstruct_video,
    tokenize_video,
)

__all__ = ["VideoTokens", "VideoTokensError", "decode_tokens", "iter_decode", "iter_reconstruct",
           "reconstruct_video", "tokenize_video"]
