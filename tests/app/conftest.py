"""Tiny models for the app's tests: the `larp-tiny` tokenizer (8 frames of 32x32 -> 32 tokens of 128 codes)
with a class-conditional and a frame-prediction model that fit it, random weights, saved as folders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
from larp.data.synthetic import synthetic_clip
from larp.data.video_io import write_mp4


def fp_config():
    cfg = ar_preset("ar-tiny")
    return dataclasses.replace(cfg, frame_prediction=True, cls_token_num=cfg.max_seq_len + 1)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("app_models")
    return {"tokenizer": LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(root / "tokenizer"),
            "ar": LARPAR(ar_preset("ar-tiny")).save_pretrained(root / "ar"),
            "fp": LARPAR(fp_config()).save_pretrained(root / "fp")}


@pytest.fixture(scope="session")
def models(model_dirs):
    from larp.app.core import load_models

    return load_models(model_dirs["tokenizer"], model_dirs["ar"], model_dirs["fp"], names="synthetic")


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory) -> Path:
    """20 frames of 40x56 (not multiples of the model's 8 frames and 32 pixels): a synthetic clip, resized."""
    frames = synthetic_clip(1, np.random.default_rng(0), frames=20, size=56)[:, 8:48]
    return write_mp4(tmp_path_factory.mktemp("clips") / "clip.mp4", frames)


@pytest.fixture(scope="session")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "notes.mp4"
    path.write_text("not a video\n")
    return path
