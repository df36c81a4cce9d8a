"""A tiny synthetic dataset, tokenizer and recipes shared by the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from larp import LARPTokenizer, tokenizer_preset
from larp.data.synthetic import write_synthetic_dataset
from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """4 classes x 6 clips of 8 frames at 32x32 (the `larp-tiny` tokenizer's input)."""
    out = tmp_path_factory.mktemp("synthetic")
    paths = write_synthetic_dataset(out, classes=4, clips_per_class=6, frames=8, size=32, seed=0)
    return {k: Path(v) for k, v in paths.items()}


def tiny_recipe(data: dict[str, Path], out_dir: Path, *overrides: str) -> TokenizerTrainConfig:
    base = [
        "model.preset=larp-tiny",
        f"data.train_csv={data['train']}",
        f"data.val_csv={data['val']}",
        "data.num_frames=8", "data.size=32", "data.batch_size=2", "data.num_workers=0", "data.val_clips=4",
        "loss.perceptual_weight=0", "loss.gan_weight=0.1", "loss.disc_every=2",
        "discriminator.width=16", "discriminator.heads=2", "discriminator.depth=1",
        "codebook.final_layer_init_std=0.02",
        f"run.out_dir={out_dir}", "run.max_steps=6", "run.log_every=1", "run.eval_every=0",
        "run.ckpt_every=2", "run.keep_last=5", "run.ema_decay=0.9",
    ]
    return load_recipe(TokenizerTrainConfig, None, base + list(overrides))


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """A random `larp-tiny` tokenizer whose codes vary from clip to clip."""
    torch.manual_seed(0)
    model = LARPTokenizer(tokenizer_preset("larp-tiny"))
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    torch.nn.init.normal_(model.encoder_latent_query_embed, std=1.0)  # varied codes from a random model
    return model.save_pretrained(tmp_path_factory.mktemp("tok") / "tokenizer")


def ar_recipe(tiny_data, tokenizer: Path, out_dir: Path, *overrides: str) -> ARTrainConfig:
    base = ["model.preset=ar-tiny", f"tokenizer.path={tokenizer}", f"data.val_csv={tiny_data['val']}",
            "data.num_frames=8", "data.size=32", "data.batch_size=4", "data.num_workers=0", "data.val_clips=4",
            f"run.out_dir={out_dir}", "run.max_steps=6", "run.log_every=1", "run.eval_every=3",
            "run.ckpt_every=2", "optim.warmup_steps=2"]
    return load_recipe(ARTrainConfig, None, base + list(overrides))
