"""Training recipes: YAML files -> typed dataclasses, with `key=value` overrides and unknown keys rejected.

A recipe has sections `model`, `data`, `optim`, `run` shared by both trainings, plus `loss`,
`discriminator` and `codebook` for the tokenizer and `tokenizer` for the AR model. The resolved recipe is
saved as `config.yaml` in every run folder."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from larp.models.config import (
    AR_PRESETS,
    TOKENIZER_PRESETS,
    ARConfig,
    TokenizerConfig,
)
from larp.train.codebook import CodebookOptions
from larp.utils.config import ConfigError, apply_overrides, from_dict, to_dict

T = TypeVar("T")


@dataclass
class ModelSpec:
    """A named preset plus overrides of its released config keys (nested mappings merge)."""

    preset: str = ""
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    # Metadata CSV(s) (id,path,action,label); several are concatenated (e.g. Kinetics-600 + UCF-101).
    train_csv: str | list[str] = ""
    val_csv: str = ""
    token_cache: str = ""  # AR only: a folder written by `larp tokenize-dataset`, used instead of train_csv
    num_frames: int = 16
    size: int = 128
    batch_size: int = 8
    num_workers: int = 2
    flip: bool = True  # random horizontal flip of training clips
    max_bad_fraction: float = 0.05  # fail when more of the training items than this are unreadable
    val_clips: int = 64  # validation clips per evaluation (fixed, seeded)
    # Keep decoded videos in memory up to this many MiB per process (0: decode at every visit). For small
    # datasets such as the synthetic one, where decoding costs a fifth of a CPU training step.
    cache_mb: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 = off
    prior_lr_mult: float = 50.0  # tokenizer: learning-rate multiplier of the prior model
    embed_lr_mult: float = 1.0  # tokenizer: multiplier of the patch embedding (large fan-in; see local_init)


@dataclass
class LossConfig:
    """Tokenizer loss: pixel + perceptual + GAN + VQ + prior (spec section 2)."""

    pixel: Literal["l1", "l2"] = "l1"
    pixel_weight: float = 1.0
    l2_weight: float = 0.0  # an extra L2 term, optionally only for the first `l2_steps` steps
    l2_steps: int = 0  # 0 = for the whole run
    perceptual_weight: float = 1.0
    gan_weight: float = 0.3
    gan_loss: Literal["bce", "hinge"] = "bce"  # bce: non-saturating with one-sided label smoothing
    gan_start_step: int = 0
    disc_every: int = 5  # the discriminator is updated every k-th step
    lecam_weight: float = 0.001
    lecam_decay: float = 0.999
    r1_weight: float = 0.0
    vq_weight: float = 0.1
    prior_weight: float = 0.06
    prior_warmup_steps: int = 0  # ramp the prior weight linearly from 0 over these steps (0 = released: none)

    def prior_weight_at(self, step: int) -> float:
        if self.prior_warmup_steps <= 0:
            return self.prior_weight
        return self.prior_weight * min(1.0, max(step, 0) / self.prior_warmup_steps)


@dataclass
class DiscriminatorSpec:
    width: int = 512
    heads: int = 8
    depth: int = 12
    lr: float = 3e-5
    betas: tuple[float, float] = (0.5, 0.9)


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    max_steps: int = 1000
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 autocast on CUDA only
    compile: bool = False  # torch.compile the model's forward (CUDA)
    ema_decay: float = 0.0  # 0 = no EMA of the weights
    log_every: int = 10
    eval_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    best_metric: str = ""  # e.g. "val/psnr"; empty = no best checkpoint
    best_mode: Literal["max", "min"] = "max"
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "larp"
    threads: int = 0  # torch CPU threads; 0 = leave torch's default


@dataclass
class TokenizerTrainConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="larp-l-long"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorSpec = field(default_factory=DiscriminatorSpec)
    codebook: CodebookOptions = field(default_factory=CodebookOptions)
    run: RunConfig = field(default_factory=RunConfig)

    def model_config(self) -> TokenizerConfig:
        return TokenizerConfig.from_json_dict(_resolve_model(self.model, TOKENIZER_PRESETS, "tokenizer"))


@dataclass
class TokenizerSource:
    path: str = ""  # a save_pretrained folder or hub id of the frozen tokenizer


@dataclass
class ARTrainConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="larp-ar-lp-ucf101"))
    tokenizer: TokenizerSource = field(default_factory=TokenizerSource)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.05))
    run: RunConfig = field(default_factory=RunConfig)
    num_cond_frames: int = 5  # frame prediction: context frames

    def model_config(self) -> ARConfig:
        return ARConfig.from_json_dict(_resolve_model(self.model, AR_PRESETS, "AR"))


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_model(spec: ModelSpec, presets: dict[str, Any], family: str) -> dict[str, Any]:
    if spec.preset and spec.preset not in presets:
        raise ConfigError(f"model.preset: unknown {family} preset {spec.preset!r}; expected one of {list(presets)}")
    base = to_dict(presets[spec.preset]) if spec.preset else {}
    return _deep_merge(base, spec.config)


def load_recipe(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML recipe into `cls`, apply `a.b=value` overrides, and validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"recipe {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    where = f"recipe {path}" if path else "recipe"
    recipe = from_dict(cls, data, where)
    if overrides:
        full = to_dict(recipe)
        model_overrides = [o for o in overrides if o.startswith("model.config.")]
        for item in model_overrides:  # model.config takes any released key; validated below
            key, raw = item.split("=", 1)
            node = full["model"]["config"]
            parts = key.split(".")[2:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = yaml.safe_load(raw)
        full = apply_overrides(full, [o for o in overrides if not o.startswith("model.config.")])
        recipe = from_dict(cls, full, f"{where} with overrides")
    recipe.model_config()  # type: ignore[attr-defined]  # validates the model section now, not mid-run
    return recipe


def save_recipe(recipe: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
