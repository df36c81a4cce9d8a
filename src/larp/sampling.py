"""The generation functions under their first name; they live in `larp.sample.generate`."""

from larp.sample.generate import filter_logits, frame_prediction_condition, generate, sample_next

__all__ = ["filter_logits", "frame_prediction_condition", "generate", "sample_next"]
