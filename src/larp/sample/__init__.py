"""Generating tokens with an AR model: the KV-cached loop (`generate`), the frame-prediction condition, and
the sharded sampling job behind `larp sample` (`job`, `shards`, `commands`)."""

from larp.sample.generate import filter_logits, frame_prediction_condition, generate, sample_next
from larp.sample.long import generate_long

__all__ = ["filter_logits", "frame_prediction_condition", "generate", "generate_long", "sample_next"]
