"""The model card a training run exports: its recipe, data, steps and last evaluation, in a card the hub reads."""

from __future__ import annotations

import hashlib
import json

import yaml
from huggingface_hub import ModelCard

from larp.data.datasets import read_video_csv
from larp.models.card import BIBTEX, PAPER_URL, format_value
from larp.train.ar_task import ARTask
from larp.train.run import train
from larp.train.tokenizer_task import TokenizerTask
from tests.train.conftest import ar_recipe, tiny_recipe


def _last_eval(run_dir) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if any(k.startswith("val/") for k in row)][-1]


def _check_run_card(run_dir, kind_tag: str) -> str:
    text = (run_dir / "model" / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.library_name == "larp" and card.data.license == "mit"
    assert {"larp", kind_tag, "arxiv:2410.21264"} <= set(card.data.tags)
    assert "Not recorded" not in text
    recipe_file = run_dir / "config.yaml"
    recipe = yaml.safe_load(recipe_file.read_text())
    assert json.dumps(recipe, indent=2, sort_keys=True) in text  # the resolved recipe, whole
    assert f"Recipe SHA-256: {hashlib.sha256(recipe_file.read_bytes()).hexdigest()}" in text
    assert f"Optimiser steps: {recipe['run']['max_steps']}" in text
    last = _last_eval(run_dir)
    assert f"The last evaluation during training (step {last['step']}), on the validation clips:" in text
    for key, value in last.items():
        if key not in ("step", "time"):
            assert f"| {key} | {format_value(value)} |" in text, key
            assert key.split("/")[-1] in card.data.metrics
    assert PAPER_URL in text and BIBTEX in text and "## Intended use and limitations" in text
    return text


def test_tokenizer_run_exports_a_card_with_its_recipe_data_and_metrics(tiny_data, tmp_path):
    out = tmp_path / "tok"
    train(tiny_recipe(tiny_data, out, "run.max_steps=4", "run.eval_every=2"), TokenizerTask)
    text = _check_run_card(out, "video-tokenizer")
    videos = len(read_video_csv(tiny_data["train"]))
    assert f"Training data: {tiny_data['train']} ({videos:,} videos)" in text
    assert "Effective batch: 2 clips (2 x 1 micro-batches x 1 processes)" in text
    assert "| val/psnr |" in text


def test_ar_run_exports_a_card_with_its_recipe_data_and_metrics(tiny_data, tiny_tokenizer, tmp_path):
    out = tmp_path / "ar"
    train(ar_recipe(tiny_data, tiny_tokenizer, out, f"data.train_csv={tiny_data['train']}", "run.max_steps=3"),
          ARTask)
    text = _check_run_card(out, "video-generation")
    assert f"Tokenizer: {tiny_tokenizer}" in text and "| val/loss |" in text
