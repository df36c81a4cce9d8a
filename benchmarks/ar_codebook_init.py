"""Does starting the AR model from the tokenizer's codebook help it learn a demo's tokens?

Trains the demo's AR recipe (`configs/tiny_synthetic_ar.yaml`, as `larp demo` runs it) twice on the token
cache of a finished demo folder, once from the default random start and once with `model.codebook_init`, then
draws 200 samples (20 per class) from each as the demo does and scores them with the demo's analytic metrics
against the demo's validation clips. Prints one JSON object (and writes it to --out): per start, the AR
validation loss and token accuracy, the training seconds, and the sample metrics.

    python benchmarks/ar_codebook_init.py runs/demo [--steps 1000] [--out ar_codebook_init.json]

The two runs share the seed, the data and every other setting; on one CPU thread each takes 4-12 minutes at
the demo's size. Sample figures vary by a few points between draws (docs/studies/demo.md gives the spread)."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from larp.demo.pipeline import (
    AR_RECIPE,
    DemoConfig,
    ar_data_overrides,
    recipe_file,
    sample_videos,
    score_samples,
)
from larp.models.ar import LARPAR
from larp.models.tokenizer import LARPTokenizer
from larp.train.ar_task import ARTask
from larp.train.config import ARTrainConfig, load_recipe
from larp.train.run import train


def one_start(demo: Path, out: Path, codebook_init: bool, steps: int, threads: int) -> dict[str, float]:
    cfg = DemoConfig()
    tok = LARPTokenizer.from_pretrained(demo / "tokenizer" / "model").eval()
    recipe = load_recipe(ARTrainConfig, recipe_file(AR_RECIPE), cfg.ar_overrides() + ar_data_overrides(
        tok, demo / "tokenizer" / "model", demo / "tokens", demo / "data" / "val.csv", out) + [
        f"model.codebook_init={str(codebook_init).lower()}", f"run.max_steps={steps}", f"run.eval_every={steps}",
        f"run.ckpt_every={steps}", f"run.threads={threads}"])
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's evaluation lines: stdout holds the JSON alone
        final = train(recipe, ARTask, overwrite=True)
    seconds = time.perf_counter() - start
    videos, labels = sample_videos(LARPAR.from_pretrained(out / "model").eval(), tok, cfg)
    scores = score_samples(videos, labels, demo / "recon" / "recon.safetensors", cfg.classes)
    return {"ar_val_loss": final.get("val/loss"), "ar_val_token_acc": final.get("val/token_acc"),
            "train_seconds": round(seconds, 1), **{k: v for k, v in scores.items() if not isinstance(v, dict)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("demo", type=Path, help="a finished `larp demo` folder")
    p.add_argument("--steps", type=int, default=1000, help="AR training steps (the demo's: 1000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("runs/ar_codebook_init"), help="where the two runs go")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if not (a.demo / "tokens" / "meta.json").is_file():
        sys.exit(f"{a.demo} holds no finished demo (expected {a.demo / 'tokens' / 'meta.json'})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"demo": str(a.demo), "steps": a.steps, "commit": commit,
              "random": one_start(a.demo, a.work / "random", False, a.steps, a.threads),
              "codebook": one_start(a.demo, a.work / "codebook", True, a.steps, a.threads)}
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
