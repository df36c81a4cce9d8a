"""The generation functions under their first name; they live in `larp.sample.generate` and `larp.sample.long`."""

from larp.sample.generate import filter_logits, frame_prediction_condition, generate, sample_next
from larp.sample.long import generate_long

__all__ = ["filter_logits", "frame_prediction_condition", "generate", "generate_long", "sample_next"]
