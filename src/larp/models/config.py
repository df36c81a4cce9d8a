"""Typed model configurations, named presets, and the released `config.json` format.

The dataclasses mirror the constructor arguments of the reference release key for key, so that a released
`config.json` loads unchanged and a saved one is readable by the reference. Values that the reference
accepts but this implementation does not support (learned patch position embeddings, say) are rejected
with an error naming the key."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from larp.utils.config import ConfigError, from_dict, to_dict

# Upper bounds on the sizes a config may declare. They are far above any trained model (the released ones
# are 1024 wide and 30 deep) and catch a `config.json` that would ask for absurd memory before anything is
# built; `from_pretrained` then compares every tensor shape with the weight file before materialising.
SIZE_LIMITS: dict[str, int] = {"width": 16_384, "depth": 512, "heads": 256, "codes": 1 << 20, "tokens": 1 << 17,
                               "frames": 4096, "pixels": 4096, "channels": 16, "classes": 1 << 20}


def check_sizes(where: str, values: dict[str, tuple[Any, str]]) -> None:
    """Raise a ConfigError unless each value is an integer in [1, SIZE_LIMITS[kind]], naming the key."""
    for key, (value, kind) in values.items():
        limit = SIZE_LIMITS[kind]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ConfigError(f"{where}: {key}={value!r} is out of range; expected an integer in [1, {limit:,}]")


def check_finite(where: str, values: dict[str, tuple[Any, float, bool]]) -> None:
    """Raise a ConfigError unless each value is a finite number above its bound (`strict`: >, else >=)."""
    for key, (value, low, strict) in values.items():
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if strict else value >= low)
        if not ok:
            raise ConfigError(f"{where}: {key}={value!r} must be a finite number {'>' if strict else '>='} {low}")

# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------


@dataclass
class VQArgs:
    """Stochastic vector quantiser (`bottleneck.regularizer`)."""

    codebook_size: int = 8192
    stochastic: bool = True
    stochastic_temperature: float = 0.03
    l2_normalized: bool = True
    commitment_loss_weight: float = 0.25
    codebook_loss_weight: float = 1.0
    entropy_loss_weight: float = 0.0
    entropy_loss_temperature: float = 0.01


@dataclass
class RegularizerConfig:
    name: str = "vq"
    args: VQArgs = field(default_factory=VQArgs)


@dataclass
class BottleneckArgs:
    bottleneck_dim: int = 16
    norm: str = "none"
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)


@dataclass
class BottleneckConfig:
    name: str = "bottleneck"
    args: BottleneckArgs = field(default_factory=BottleneckArgs)


@dataclass
class PriorArgs:
    l2_normalized: bool = True


@dataclass
class PriorConfig:
    """The GPTC prior and its scheduled-sampling loss (docs/method.md)."""

    name: str = "gptc-S"
    args: PriorArgs = field(default_factory=PriorArgs)
    n_rounds: int = 2
    no_grad_before_last_round: bool = False
    avg_loss_over_rounds: bool = True
    use_mix_ss: bool = True
    mix_ss_max_ratio: float = 0.5
    mix_ss_peak_steps_ratio: float = 0.3
    latent_ce_temperature: float = 1.0
    no_dropout: bool = False

    @property
    def enabled(self) -> bool:
        return self.name.lower() not in ("none", "no", "null", "")


# (layers, heads, width) of the GPTC prior sizes.
GPTC_SIZES: dict[str, tuple[int, int, int]] = {
    "gptc-XXXS": (2, 4, 128),  # ours, not in the reference release: the CPU presets' prior (3x cheaper than XXS)
    "gptc-XXS": (6, 4, 256),
    "gptc-XS": (6, 6, 384),
    "gptc-S": (12, 6, 384),
    "gptc-M": (12, 8, 512),
    "gptc-B": (12, 12, 768),
    "gptc-L": (24, 16, 1024),
}
GPTC_BLOCK_SIZE = 1024  # length of `prior_model.pos_emb`, fixed in the released format


@dataclass
class TokenizerConfig:
    """Constructor arguments of the LARP tokenizer (released `config.json` keys)."""

    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    prior_model: PriorConfig = field(default_factory=PriorConfig)
    bottleneck_token_num: int = 1024
    input_size: int = 128
    frame_num: int = 16
    temporal_patch_size: int = 4
    patch_size: int = 8
    decoder_temporal_patch_size: int = 4
    decoder_patch_size: int = 8
    in_channels: int = 3
    transformer_name: str = "transformer_encoder_parallel"
    encoder_name: str | None = "none"
    decoder_name: str | None = "none"
    latent_pe_scale_factor: float = 10000
    query_init_std: float = 0.02
    encoder_hidden_size: int = 768
    decoder_hidden_size: int = 768
    encoder_num_heads: int = 12
    decoder_num_heads: int = 12
    encoder_depth: int = 12
    decoder_depth: int = 12
    learned_encoder_patch_pe: bool = False
    learned_encoder_latent_query_embed: bool = True
    learned_decoder_latent_pe: bool = False
    learned_decoder_patch_query_embed: bool = False
    use_encoder_patch_token_type_embed: bool = False
    use_encoder_latent_query_token_type_embed: bool = False
    use_decoder_latent_token_type_embed: bool = False
    use_decoder_patch_query_token_type_embed: bool = True
    encoder_query_gaussian_init: bool = True

    # Convenience views of the nested released layout.
    @property
    def vq(self) -> VQArgs:
        return self.bottleneck.args.regularizer.args

    @property
    def codebook_size(self) -> int:
        return self.vq.codebook_size

    @property
    def bottleneck_dim(self) -> int:
        return self.bottleneck.args.bottleneck_dim

    @property
    def encoder_grid(self) -> tuple[int, int, int]:
        return (self.frame_num // self.temporal_patch_size, self.input_size // self.patch_size,
                self.input_size // self.patch_size)

    @property
    def decoder_grid(self) -> tuple[int, int, int]:
        return (self.frame_num // self.decoder_temporal_patch_size, self.input_size // self.decoder_patch_size,
                self.input_size // self.decoder_patch_size)

    def validate(self) -> None:
        """Reject values this implementation does not support, naming the key."""
        check_sizes("tokenizer config", {
            "encoder_hidden_size": (self.encoder_hidden_size, "width"),
            "decoder_hidden_size": (self.decoder_hidden_size, "width"),
            "encoder_depth": (self.encoder_depth, "depth"), "decoder_depth": (self.decoder_depth, "depth"),
            "encoder_num_heads": (self.encoder_num_heads, "heads"),
            "decoder_num_heads": (self.decoder_num_heads, "heads"),
            "bottleneck_token_num": (self.bottleneck_token_num, "tokens"),
            "codebook_size": (self.codebook_size, "codes"), "bottleneck_dim": (self.bottleneck_dim, "width"),
            "input_size": (self.input_size, "pixels"), "frame_num": (self.frame_num, "frames"),
            "patch_size": (self.patch_size, "pixels"), "decoder_patch_size": (self.decoder_patch_size, "pixels"),
            "temporal_patch_size": (self.temporal_patch_size, "frames"),
            "decoder_temporal_patch_size": (self.decoder_temporal_patch_size, "frames"),
            "in_channels": (self.in_channels, "channels")})
        check_finite("tokenizer config", {
            "latent_pe_scale_factor": (self.latent_pe_scale_factor, 0.0, True),
            "query_init_std": (self.query_init_std, 0.0, False),
            "stochastic_temperature": (self.vq.stochastic_temperature, 0.0, True)})
        for side in ("encoder", "decoder"):
            width, heads = getattr(self, f"{side}_hidden_size"), getattr(self, f"{side}_num_heads")
            if width % heads:
                raise ConfigError(f"tokenizer config: {side}_hidden_size {width} is not divisible by "
                                  f"{side}_num_heads {heads}")
        required = {
            "learned_encoder_patch_pe": False,
            "learned_encoder_latent_query_embed": True,
            "learned_decoder_latent_pe": False,
            "learned_decoder_patch_query_embed": False,
            "use_encoder_patch_token_type_embed": False,
            "use_encoder_latent_query_token_type_embed": False,
            "use_decoder_latent_token_type_embed": False,
            "use_decoder_patch_query_token_type_embed": True,
            "encoder_query_gaussian_init": True,
            "transformer_name": "transformer_encoder_parallel",
        }
        for key, expected in required.items():
            if getattr(self, key) != expected:
                raise ConfigError(f"tokenizer config: {key}={getattr(self, key)!r} is not supported "
                                  f"(only {expected!r}, as in the released model)")
        for key in ("encoder_name", "decoder_name"):
            value = getattr(self, key)
            if value not in (None, "none", "None", "", "transformer_encoder_parallel"):
                raise ConfigError(f"tokenizer config: {key}={value!r} is not supported")
        if self.bottleneck.name != "bottleneck" or self.bottleneck.args.regularizer.name != "vq":
            raise ConfigError("tokenizer config: only bottleneck 'bottleneck' with regularizer 'vq' is supported")
        if self.bottleneck.args.norm != "none":
            raise ConfigError(f"tokenizer config: bottleneck norm {self.bottleneck.args.norm!r} is not supported")
        if not self.vq.l2_normalized:
            raise ConfigError("tokenizer config: only the L2-normalised (cosine) quantiser is supported")
        if self.prior_model.enabled and self.prior_model.name not in GPTC_SIZES:
            raise ConfigError(f"tokenizer config: prior_model.name={self.prior_model.name!r}; "
                              f"expected 'none' or one of {sorted(GPTC_SIZES)}")
        if self.prior_model.enabled and self.bottleneck_token_num > GPTC_BLOCK_SIZE:
            raise ConfigError(f"tokenizer config: the prior handles at most {GPTC_BLOCK_SIZE} tokens, "
                              f"got bottleneck_token_num={self.bottleneck_token_num}")
        if self.temporal_patch_size < 2 or self.temporal_patch_size != self.decoder_temporal_patch_size \
                or self.patch_size != self.decoder_patch_size:
            raise ConfigError("tokenizer config: encoder and decoder patch sizes must match and the temporal "
                              f"patch must be >= 2, got temporal {self.temporal_patch_size}/"
                              f"{self.decoder_temporal_patch_size}, spatial {self.patch_size}/{self.decoder_patch_size}")
        if self.frame_num % self.temporal_patch_size or self.input_size % self.patch_size:
            raise ConfigError(f"tokenizer config: frame_num {self.frame_num} and input_size {self.input_size} "
                              f"must be multiples of the patch sizes ({self.temporal_patch_size}, {self.patch_size})")

    def to_json_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        cfg = from_dict(cls, data, "tokenizer config")
        cfg.validate()
        return cfg


# ---------------------------------------------------------------------------------------------------------
# AR generator
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ARConfig:
    """Constructor arguments of the LARP AR model (released `config.json` keys, Llama-style)."""

    dim: int = 1280
    n_layer: int = 30
    n_head: int = 20
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000  # kept for the released format; LARP uses absolute position embeddings
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 101
    class_dropout_prob: float = 0.1
    model_type: str = "class_cond"
    vocab_size: int = 8192
    cls_token_num: int = 1
    max_batch_size: int = 32
    max_seq_len: int = 1024
    use_fixed_pe: bool = False
    frame_prediction: bool = False

    def validate(self) -> None:
        check_sizes("AR config", {
            "dim": (self.dim, "width"), "n_layer": (self.n_layer, "depth"), "n_head": (self.n_head, "heads"),
            "n_kv_head": (self.n_kv_head or self.n_head, "heads"), "multiple_of": (self.multiple_of, "width"),
            "vocab_size": (self.vocab_size, "codes"), "num_classes": (self.num_classes, "classes"),
            "max_seq_len": (self.max_seq_len, "tokens"), "cls_token_num": (self.cls_token_num, "tokens"),
            "max_batch_size": (self.max_batch_size, "tokens")})
        check_finite("AR config", {"norm_eps": (self.norm_eps, 0.0, True), "rope_base": (self.rope_base, 0.0, True),
                                   "initializer_range": (self.initializer_range, 0.0, False)})
        if self.ffn_dim_multiplier is not None:
            check_finite("AR config", {"ffn_dim_multiplier": (self.ffn_dim_multiplier, 0.0, True)})
            if self.ffn_dim_multiplier > 64:
                raise ConfigError(f"AR config: ffn_dim_multiplier={self.ffn_dim_multiplier} is out of range; "
                                  "expected at most 64")
        for key in ("token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p", "drop_path_rate",
                    "class_dropout_prob"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ConfigError(f"AR config: {key}={value!r} must be a probability in [0, 1)")
        if self.model_type != "class_cond":
            raise ConfigError(f"AR config: model_type={self.model_type!r}; only 'class_cond' is supported")
        if self.dim % self.n_head:
            raise ConfigError(f"AR config: dim {self.dim} is not divisible by n_head {self.n_head}")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ConfigError(f"AR config: n_head {self.n_head} is not a multiple of n_kv_head {kv}")
        if self.frame_prediction and self.cls_token_num != self.max_seq_len + 1:
            raise ConfigError(f"AR config: frame prediction needs cls_token_num = max_seq_len + 1 = "
                              f"{self.max_seq_len + 1}, got {self.cls_token_num}")
        if not self.frame_prediction and self.cls_token_num < 1:
            raise ConfigError(f"AR config: cls_token_num must be >= 1, got {self.cls_token_num}")

    @property
    def input_vocab_size(self) -> int:
        """Rows of `tok_embeddings`: frame prediction adds the separator token (id = vocab_size)."""
        return self.vocab_size + 1 if self.frame_prediction else self.vocab_size

    @property
    def separator_id(self) -> int:
        return self.vocab_size

    @property
    def has_null_class(self) -> bool:
        """Whether the class table ends with a null class (a class-conditional model trained with label
        dropout): classifier-free guidance needs it."""
        return not self.frame_prediction and self.class_dropout_prob > 0

    def to_json_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ARConfig:
        cfg = from_dict(cls, data, "AR config")
        cfg.validate()
        return cfg


# (layers, heads, width) of the AR sizes (docs/method.md).
AR_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 6, 384),
    "B": (12, 12, 768),
    "L": (24, 16, 1024),
    "LP": (30, 20, 1280),
    "XL": (36, 20, 1280),
    "XXL": (48, 24, 1536),
    "XXXL": (48, 40, 2560),
}


def ar_config(size: str, **overrides: Any) -> ARConfig:
    """An ARConfig of a named size, e.g. `ar_config("LP", num_classes=101)`."""
    if size not in AR_SIZES:
        raise ConfigError(f"unknown AR size {size!r}; expected one of {list(AR_SIZES)}")
    n_layer, n_head, dim = AR_SIZES[size]
    cfg = ARConfig(n_layer=n_layer, n_head=n_head, dim=dim)
    cfg = dataclasses.replace(cfg, **overrides)
    if cfg.frame_prediction and "cls_token_num" not in overrides:
        cfg.cls_token_num = cfg.max_seq_len + 1
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Presets: explicit dicts of names
# ---------------------------------------------------------------------------------------------------------


def _tokenizer(codebook_size: int, bottleneck_dim: int, prior: str, **kw: Any) -> TokenizerConfig:
    cfg = TokenizerConfig(**kw)
    cfg.bottleneck.args.bottleneck_dim = bottleneck_dim
    cfg.bottleneck.args.regularizer.args.codebook_size = codebook_size
    cfg.prior_model.name = prior
    cfg.validate()
    return cfg


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    # The released LARP-L-long tokenizer: 16x128x128 -> 1024 tokens of a 8192-code book.
    "larp-l-long": _tokenizer(8192, 16, "gptc-S"),
    # CPU presets. `larp-tiny` is for unit tests; `larp-synthetic-64-clip` is the demo's tokenizer on the
    # 64x64x16 synthetic clips, `larp-synthetic-64` its earlier one (docs/studies/small_scale_recipes.md, docs/studies/demo.md).
    "larp-tiny": _tokenizer(128, 8, "gptc-XXS", bottleneck_token_num=32, input_size=32, frame_num=8,
                            encoder_hidden_size=64, decoder_hidden_size=64, encoder_num_heads=4,
                            decoder_num_heads=4, encoder_depth=2, decoder_depth=2),
    # `larp-sanity-32`: the solid-colour sanity check (no prior; sampling temperature 0.01,
    # which measured better than 0.03 at this size).
    "larp-sanity-32": _tokenizer(1024, 16, "none", bottleneck_token_num=16, input_size=32, frame_num=8,
                                 encoder_hidden_size=128, decoder_hidden_size=128, encoder_num_heads=4,
                                 decoder_num_heads=4, encoder_depth=2, decoder_depth=2,
                                 bottleneck=BottleneckConfig(args=BottleneckArgs(regularizer=RegularizerConfig(
                                     args=VQArgs(stochastic_temperature=0.01))))),
    # 64 tokens of 16x16x4 patches, 128 wide, 2+2 layers: about 0.3 CPU-seconds per training step with the
    # small gptc-XXXS prior (gptc-XXS costs three times the tokenizer's step), so that 1,200 steps fit in 10
    # CPU-minutes. 4,096 codes: with 64 tokens each code carries a whole 16x16x4 patch, and 12 bits instead
    # of 10 per token measured +1.1 dB at 900 steps (docs/studies/small_scale_recipes.md). The latent position
    # embedding's base of 0.1 (released: 10,000) makes the 64 latent positions linearly distinguishable,
    # which the local linear initialisation needs (larp.train.local_init).
    "larp-synthetic-64": _tokenizer(4096, 16, "gptc-XXXS", bottleneck_token_num=64, input_size=64,
                                    frame_num=16, patch_size=16, decoder_patch_size=16, latent_pe_scale_factor=0.1,
                                    encoder_hidden_size=128, decoder_hidden_size=128, encoder_num_heads=4,
                                    decoder_num_heads=4, encoder_depth=2, decoder_depth=2),
    # The same 64 tokens over 16 patches of 16x16 pixels through all 16 frames, four tokens per patch (the
    # local initialisation gives each a slice of its patch's principal components, coarse to fine), 8,192
    # codes: no temporal patch boundary for the object to jump at, and the static background coded once; the
    # slices need the 13 bits (docs/studies/demo.md).
    "larp-synthetic-64-clip": _tokenizer(8192, 16, "gptc-XXXS", bottleneck_token_num=64, input_size=64,
                                         frame_num=16, patch_size=16, decoder_patch_size=16,
                                         temporal_patch_size=16, decoder_temporal_patch_size=16,
                                         latent_pe_scale_factor=0.1, encoder_hidden_size=128,
                                         decoder_hidden_size=128, encoder_num_heads=4, decoder_num_heads=4,
                                         encoder_depth=2, decoder_depth=2),
}

AR_PRESETS: dict[str, ARConfig] = {
    # The released generators: LP size on 1024 tokens of the 8192-code tokenizer.
    "larp-ar-lp-ucf101": ar_config("LP", num_classes=101, vocab_size=8192, max_seq_len=1024),
    "larp-ar-fp-lp-k600": ar_config("LP", vocab_size=8192, max_seq_len=1024, frame_prediction=True),
    # CPU presets.
    "ar-tiny": ARConfig(dim=64, n_layer=2, n_head=4, num_classes=5, vocab_size=128, max_seq_len=32),
    "ar-synthetic": ARConfig(dim=256, n_layer=4, n_head=4, num_classes=10, vocab_size=4096, max_seq_len=64),
}


def tokenizer_preset(name: str) -> TokenizerConfig:
    if name not in TOKENIZER_PRESETS:
        raise ConfigError(f"unknown tokenizer preset {name!r}; expected one of {list(TOKENIZER_PRESETS)}")
    return TokenizerConfig.from_json_dict(to_dict(TOKENIZER_PRESETS[name]))


def ar_preset(name: str) -> ARConfig:
    if name not in AR_PRESETS:
        raise ConfigError(f"unknown AR preset {name!r}; expected one of {list(AR_PRESETS)}")
    return ARConfig.from_json_dict(to_dict(AR_PRESETS[name]))
