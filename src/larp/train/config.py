"""Training recipes: YAML files -> typed dataclasses, with `key=value` overrides and unknown keys rejected.

A recipe has sections `model`, `data`, `optim`, `run` shared by both trainings, plus `loss`,
`discriminator` and `codebook` for the tokenizer and `tokenizer` for the AR model. Every value is checked
when a recipe is loaded (`validate`), so that a bad one fails at once with its key named, not mid-run. The
resolved recipe is saved as `config.yaml` in every run folder."""

from __future__ import annotations

import copy
import math
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
from larp.utils.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    parse_override_value,
    read_yaml_file,
    to_dict,
)

T = TypeVar("T")

# The parts of a tokenizer that `model.freeze` may keep fixed.
FREEZABLE = ("encoder", "decoder", "prior", "codebook")


def _need(ok: bool, key: str, rule: str, value: Any) -> None:
    """Raise ConfigError `<key> must be <rule>, got <value>` unless `ok` (NaN fails every comparison)."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _positive_ints(section: Any, prefix: str, names: str, low: int = 1) -> None:
    for name in names.split():
        value = getattr(section, name)
        _need(value >= low, f"{prefix}.{name}", f">= {low}", value)


def _betas(betas: tuple[float, float], key: str) -> None:
    _need(len(betas) == 2 and all(0 <= b < 1 for b in betas), key, "two numbers in [0, 1)", list(betas))


@dataclass
class ModelSpec:
    """A named preset plus overrides of its released config keys (nested mappings merge).

    Fine-tuning: `init_from` (a folder written by `save_pretrained` or a training run's `model/`, or a
    Hugging Face repo id) starts the run from those weights, with a fresh optimiser. The architecture is then
    the checkpoint's own (its config.json; `preset` is not used), and `config` still overrides keys of it,
    e.g. `num_classes` of an AR model."""

    preset: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    freeze: list[str] = field(default_factory=list)  # tokenizer: parts kept fixed, of FREEZABLE
    # AR fine-tuning onto a new class count: for each class of the new model, the checkpoint's class whose
    # embedding row it starts from, or -1 for a fresh row. Empty: all rows kept when the count is unchanged,
    # all fresh otherwise. The null-class row (guidance) is always kept.
    class_rows: list[int] = field(default_factory=list)
    # AR model: start the token embeddings and the output head from the tokenizer's codebook
    # (`larp.train.ar_init.embed_codebook`); needs tokenizer.path, not with init_from.
    codebook_init: bool = False


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

    def validate(self, prefix: str = "data") -> None:
        _positive_ints(self, prefix, "num_frames size batch_size val_clips")
        _positive_ints(self, prefix, "num_workers", low=0)
        _need(0 <= self.max_bad_fraction < 1, f"{prefix}.max_bad_fraction", "in [0, 1)", self.max_bad_fraction)
        _need(self.cache_mb >= 0, f"{prefix}.cache_mb", ">= 0", self.cache_mb)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # > 0: the warm-up in epochs of the training set (the released recipes count epochs); it sets
    # warmup_steps when the run starts (`resolve_epochs`).
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 0.0  # clip the gradient norm at this value; 0 = off (the released recipes: off)
    # Tokenizer: learning-rate multiplier of the prior model. The released recipe configures 50, but the
    # reference's scheduler sets every group to the same rate at every step, so it trains at 1x: 1 is the
    # released training; 50 is what the recipe intended.
    prior_lr_mult: float = 1.0
    embed_lr_mult: float = 1.0  # tokenizer: multiplier of the patch embedding (large fan-in; see local_init)
    # Micro-batches of data.batch_size per optimiser step: the effective batch is
    # data.batch_size x grad_accum_steps x processes. Steps, schedules and checkpoints count optimiser steps.
    grad_accum_steps: int = 1

    def validate(self, prefix: str = "optim") -> None:
        _need(self.lr > 0, f"{prefix}.lr", "> 0", self.lr)
        _betas(self.betas, f"{prefix}.betas")
        for name in ("weight_decay", "grad_clip", "prior_lr_mult", "embed_lr_mult"):
            _need(getattr(self, name) >= 0, f"{prefix}.{name}", ">= 0", getattr(self, name))
        _need(0 <= self.min_lr_ratio <= 1, f"{prefix}.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        _need(0 <= self.warmup_epochs < math.inf, f"{prefix}.warmup_epochs", "a finite number >= 0",
              self.warmup_epochs)
        _positive_ints(self, prefix, "warmup_steps", low=0)
        _positive_ints(self, prefix, "grad_accum_steps")


@dataclass
class LossConfig:
    """Tokenizer loss: pixel + perceptual + GAN + VQ + prior."""

    pixel: Literal["l1", "l2"] = "l1"
    pixel_weight: float = 1.0
    l2_weight: float = 0.0  # an extra L2 term, optionally only for the first `l2_steps` steps
    l2_steps: int = 0  # 0 = for the whole run
    # Pixels that move (against their median over the clip) weigh 1 + motion_weight in the L1 and L2 terms
    # (larp.train.losses.motion_weights); 0 = a plain mean, as released.
    motion_weight: float = 0.0
    perceptual_weight: float = 1.0
    gan_weight: float = 0.3
    gan_loss: Literal["bce", "hinge"] = "bce"  # bce: non-saturating with one-sided label smoothing
    gan_start_step: int = 0
    # The discriminator's first update; None: gan_start_step. Fine-tuning a trained generator: let a fresh
    # discriminator learn alone for a while (disc_start_step=0, gan_start_step=500).
    disc_start_step: int | None = None
    disc_every: int = 5  # the discriminator is updated at steps k, 2k, ... (steps counted from 1)
    # The weight of the LeCam penalty in the discriminator loss. The released recipe configures 0.001, but
    # the reference applies it twice, so 0.001^2 = 1e-6 is what its training uses; 0.001 is the intended value.
    lecam_weight: float = 1e-6
    lecam_decay: float = 0.999
    r1_weight: float = 0.0
    vq_weight: float = 0.1
    prior_weight: float = 0.06
    prior_warmup_steps: int = 0  # ramp the prior weight linearly from 0 over these steps (0 = released: none)
    # Let the prior loss train the code vectors too. The reference detaches the codebook in the prior's
    # logits: the prior loss reaches the encoder (through the quantised vectors) but not the codebook.
    prior_codebook_grad: bool = False

    def prior_weight_at(self, step: int) -> float:
        if self.prior_warmup_steps <= 0:
            return self.prior_weight
        return self.prior_weight * min(1.0, max(step, 0) / self.prior_warmup_steps)

    @property
    def disc_start(self) -> int:
        return self.gan_start_step if self.disc_start_step is None else self.disc_start_step

    def validate(self, prefix: str = "loss") -> None:
        for name in ("pixel_weight", "l2_weight", "motion_weight", "perceptual_weight", "gan_weight", "lecam_weight",
                     "r1_weight", "vq_weight", "prior_weight"):
            _need(getattr(self, name) >= 0, f"{prefix}.{name}", ">= 0", getattr(self, name))
        _positive_ints(self, prefix, "l2_steps gan_start_step prior_warmup_steps", low=0)
        if self.disc_start_step is not None:
            _positive_ints(self, prefix, "disc_start_step", low=0)
        _positive_ints(self, prefix, "disc_every")
        _need(0 <= self.lecam_decay < 1, f"{prefix}.lecam_decay", "in [0, 1)", self.lecam_decay)


@dataclass
class DiscriminatorSpec:
    width: int = 512
    heads: int = 8
    depth: int = 12
    patch: int = 0  # spatial patch size; 0: the tokenizer's
    temporal_patch: int = 0  # temporal patch size; 0: the tokenizer's
    lr: float = 3e-5
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int | None = None  # its own learning-rate warm-up; None: optim.warmup_steps

    def validate(self, prefix: str = "discriminator") -> None:
        _positive_ints(self, prefix, "width heads depth")
        _positive_ints(self, prefix, "patch temporal_patch", low=0)
        _need(self.width % self.heads == 0, f"{prefix}.width", f"a multiple of heads={self.heads}", self.width)
        _need(self.lr > 0, f"{prefix}.lr", "> 0", self.lr)
        _betas(self.betas, f"{prefix}.betas")
        if self.warmup_steps is not None:
            _positive_ints(self, prefix, "warmup_steps", low=0)


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    max_steps: int = 1000
    # > 0: train for this many epochs instead; it sets max_steps when the run starts (`resolve_epochs`), as
    # the released recipes count their length. An epoch is one clip per training video (a token cache's
    # windows and mirror images count once), as in the reference's training.
    epochs: int = 0
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 autocast on CUDA only
    compile: bool = False  # torch.compile the model's forward (CUDA)
    tf32: bool = True  # TF32 matrix products on CUDA, as the reference trains; false: strict float32
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
    threads: int = 0  # torch CPU threads; 0 = leave them as they are (the CLI: every available CPU, or --threads)

    def validate(self, prefix: str = "run") -> None:
        _need(bool(self.out_dir), f"{prefix}.out_dir", "a folder", self.out_dir)
        _positive_ints(self, prefix, "max_steps log_every")
        _positive_ints(self, prefix, "seed eval_every ckpt_every keep_last threads epochs", low=0)
        _need(0 <= self.ema_decay < 1, f"{prefix}.ema_decay", "in [0, 1)", self.ema_decay)


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

    def validate(self) -> None:
        """Check every section, naming the key of the first bad value (ConfigError)."""
        _validate_common(self)
        self.loss.validate()
        self.discriminator.validate()
        try:
            self.codebook.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        unknown = [part for part in self.model.freeze if part not in FREEZABLE]
        _need(not unknown, "model.freeze", f"a list of {list(FREEZABLE)}", self.model.freeze)
        _need(not self.model.class_rows, "model.class_rows", "empty for a tokenizer", self.model.class_rows)
        _need(not self.model.codebook_init, "model.codebook_init", "false for a tokenizer (an AR model option)",
              self.model.codebook_init)
        if "codebook" in self.model.freeze:
            for name in ("dead_code_steps", "init_kmeans_iters"):
                _need(not getattr(self.codebook, name), f"codebook.{name}", "0 with the codebook frozen",
                      getattr(self.codebook, name))
            _need(not self.codebook.init_from_encoder, "codebook.init_from_encoder",
                  "false with the codebook frozen", True)
        if set(FREEZABLE) <= set(self.model.freeze):
            raise ConfigError(f"model.freeze={self.model.freeze} leaves nothing to train")


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

    def validate(self) -> None:
        """Check every section, naming the key of the first bad value (ConfigError)."""
        _validate_common(self)
        _need(not self.model.freeze, "model.freeze", "empty for an AR model (freezing is a tokenizer option)",
              self.model.freeze)
        _need(self.num_cond_frames >= 1, "num_cond_frames", ">= 1", self.num_cond_frames)
        if self.model.codebook_init:
            _need(bool(self.tokenizer.path), "model.codebook_init", "used with tokenizer.path (the codebook's "
                  "source)", True)
            _need(not self.model.init_from, "model.codebook_init", "false when fine-tuning (model.init_from "
                  "brings trained embeddings)", True)
        if self.model.class_rows:
            _need(bool(self.model.init_from), "model.class_rows", "used with model.init_from", self.model.class_rows)
            classes = self.model_config().num_classes
            _need(len(self.model.class_rows) == classes, "model.class_rows",
                  f"one entry per class of the new model ({classes})", self.model.class_rows)


def _check_finite(node: Any, where: str) -> None:
    """Every number of the recipe is finite: infinity passes `>= 0` and would only fail mid-run."""
    if isinstance(node, float):
        _need(math.isfinite(node), where, "a finite number", node)
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_finite(value, f"{where}[{i}]")


def _check_device(name: str, key: str) -> None:
    import torch

    try:
        torch.device("cpu" if name == "auto" else name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{key} must be auto, cpu, cuda, cuda:N or another torch device, got {name!r}") from exc


def _validate_common(recipe: Any) -> None:
    recipe.data.validate()
    recipe.optim.validate()
    recipe.run.validate()
    for key, value in to_dict(recipe).items():
        _check_finite(value, key)
    _check_device(recipe.run.device, "run.device")
    _need(recipe.optim.lr <= 1, "optim.lr", "in (0, 1] (AdamW's rates are around 1e-4)", recipe.optim.lr)


def resolve_epochs(recipe: Any, num_items: int, processes: int = 1) -> int:
    """Optimiser steps per epoch of `num_items` training items (each process sees its share, in whole
    batches: drop_last); sets `run.max_steps` from `run.epochs` and `optim.warmup_steps` from
    `optim.warmup_epochs` where those are given. Returns the steps per epoch."""
    per_epoch = (num_items // processes) // (recipe.data.batch_size * recipe.optim.grad_accum_steps)
    if per_epoch < 1 and (recipe.run.epochs or recipe.optim.warmup_epochs):
        raise ConfigError(f"run.epochs / optim.warmup_epochs: an epoch of {num_items} items is less than one "
                          f"step of {effective_batch(recipe, processes)} clips")
    if recipe.run.epochs:
        recipe.run.max_steps = recipe.run.epochs * per_epoch
    if recipe.optim.warmup_epochs:
        recipe.optim.warmup_steps = round(recipe.optim.warmup_epochs * per_epoch)
    return per_epoch


def effective_batch(recipe: Any, processes: int = 1) -> int:
    """Clips per optimiser step: data.batch_size x optim.grad_accum_steps x processes."""
    return recipe.data.batch_size * recipe.optim.grad_accum_steps * processes


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_model(spec: ModelSpec, presets: dict[str, Any], family: str) -> dict[str, Any]:
    if spec.init_from:  # fine-tuning: the checkpoint's architecture
        from larp.models.hub import read_config, resolve_folder

        return _deep_merge(read_config(resolve_folder(spec.init_from)), spec.config)
    if spec.preset and spec.preset not in presets:
        raise ConfigError(f"model.preset: unknown {family} preset {spec.preset!r}; expected one of {list(presets)}")
    base = to_dict(presets[spec.preset]) if spec.preset else {}
    return _deep_merge(base, spec.config)


def load_recipe(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML recipe into `cls`, apply `a.b=value` overrides, and validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = read_yaml_file(path) or {}  # size and alias expansion checked first
        except FileNotFoundError as exc:
            raise ConfigError(f"recipe {path} does not exist") from exc
        except IsADirectoryError as exc:
            raise ConfigError(f"recipe {path} is a folder, not a YAML file") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"recipe {path} is not a text file ({exc.reason} at byte {exc.start}); "
                              "expected a YAML recipe") from exc
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
            node[parts[-1]] = parse_override_value(item, raw)
        full = apply_overrides(full, [o for o in overrides if not o.startswith("model.config.")])
        recipe = from_dict(cls, full, f"{where} with overrides")
    recipe.model_config()  # type: ignore[attr-defined]  # validates the model section now, not mid-run
    recipe.validate()  # type: ignore[attr-defined]
    return recipe


def save_recipe(recipe: Any, path: Path) -> None:
    """Write the resolved recipe as YAML (atomically)."""
    from larp.utils.files import atomic_write_bytes

    text = yaml.safe_dump(to_dict(recipe), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
