"""larp: the LARP video tokenizer and the autoregressive video generator on its tokens.

The models are imported on first use, so that `import larp.data` (and the CLI's start-up) stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LARPAR", "LARPTokenizer", "ARConfig", "TokenizerConfig", "ar_preset", "tokenizer_preset",
           "generate", "generate_long"]

_HOMES = {"LARPAR": "larp.models.ar", "LARPTokenizer": "larp.models.tokenizer", "ARConfig": "larp.models.config",
          "TokenizerConfig": "larp.models.config", "ar_preset": "larp.models.config",
          "tokenizer_preset": "larp.models.config", "generate": "larp.sample.generate",
          "generate_long": "larp.sample.long"}

if TYPE_CHECKING:
    from larp.models.ar import LARPAR
    from larp.models.config import ARConfig, TokenizerConfig, ar_preset, tokenizer_preset
    from larp.models.tokenizer import LARPTokenizer


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'larp' has no attribute {name!r}")
