"""larp: the LARP video tokenizer and the autoregressive video generator on its tokens."""

from .models.ar import LARPAR
from .models.config import ARConfig, TokenizerConfig, ar_preset, tokenizer_preset
from .models.tokenizer import LARPTokenizer

__all__ = ["LARPAR", "LARPTokenizer", "ARConfig", "TokenizerConfig", "ar_preset", "tokenizer_preset"]
__version__ = "0.1.0"
