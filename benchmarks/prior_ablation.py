"""Prior ablation: does training the tokenizer with its AR prior make its tokens easier to generate?

A *cell* is a token count x an arm x a seed, and runs the demo's own pipeline end to end (`larp demo`:
its tokenizer recipe and steps, its AR model started from the tokenizer's codebook with its steps, its
sampling settings and scoring) on one shared copy of the demo's data. The two arms differ only in the prior's
loss weight: the recipe's 0.06, or 0 (the prior still runs, with the same random draws and compute, but
nothing learns from it). The seed is the demo's seed for everything but the data: tokenizer and AR training,
token cache, samples. Per cell: the demo's reconstruction and sample figures (PSNR, object IoU / PSNR,
strict, coherent, sFVD, path spread), the prior's CE and top-1 on the validation codes
(`larp.eval.reconstruction.prior_scores`), the AR model's validation NLL on them, and times.

    python benchmarks/prior_ablation.py run --workers 2 [--tokens 64 32] [--seeds 0 1 2] [--git-commit]
    python benchmarks/prior_ablation.py rerun n64-prior-s0        # the same cell again, in its own folder
    python benchmarks/prior_ablation.py report                    # markdown tables + docs/images plot

Pinned: the library is taken from one git commit (`--commit`, default HEAD at the first launch of a
`--root`), extracted under <root>/code/<commit>, so that edits in the working tree during the hours of a run
change nothing; every row records the commit and the hash of the resolved recipes (`recipe_hash`, the cell's
own keys left out): rows of another recipe are refused. Cells resume at the stage where they stopped (the
demo's own resumption). Results: benchmarks/results/prior_ablation.json, one entry per ablation (the
earlier 500-step ablation is kept there as `short-500`; see docs/studies/prior_ablation.md)."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# siblings in this folder, which is on sys.path when the script runs
from prior_ablation_state import Results, now, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "prior_ablation.json"
PLOT = REPO / "docs" / "images" / "prior_ablation_demo.png"
ABLATION = "demo-recipe"  # this script's entry in the results file
CHILD_ENV = "PRIOR_ABLATION_COMMIT"  # set in the re-executed process that imports the pinned library
PRIOR_WEIGHT_ON = 0.06  # the demo's (and the released recipe's) prior weight
# The cells' own settings; everything else is the demo's. The AR model trains on one thread so that two
# cells share the two cores (the demo gives it two).
CELL_KEYS = {"tokenizer": [("run", "seed"), ("loss", "prior_weight"), ("model", "config", "bottleneck_token_num"),
                           ("model_config", "bottleneck_token_num")],
             "ar": [("run", "seed"), ("model", "config", "max_seq_len"), ("model_config", "max_seq_len")]}


@dataclass(frozen=True)
class Cell:
    tokens: int
    prior: bool
    seed: int

    @property
    def id(self) -> str:
        return f"n{self.tokens}-{'prior' if self.prior else 'noprior'}-s{self.seed}"

    @classmethod
    def parse(cls, text: str) -> Cell:
        try:
            n, arm, s = text.split("-")
            if n[0] != "n" or s[0] != "s" or arm not in ("prior", "noprior"):
                raise ValueError
            return cls(int(n[1:]), arm == "prior", int(s[1:]))
        except ValueError:
            raise ValueError(f"expected a cell id like n64-prior-s0 or n32-noprior-s1, got {text!r}") from None

    def tokenizer_overrides(self) -> list[str]:
        return [f"loss.prior_weight={PRIOR_WEIGHT_ON if self.prior else 0.0}",
                f"model.config.bottleneck_token_num={self.tokens}"]


def demo_config(seed: int, quick: bool = False) -> Any:
    from larp.demo.pipeline import DemoConfig

    return DemoConfig.smoke(seed) if quick else DemoConfig(seed=seed)


def demo_cell(cell: Cell, folder: Path, data: dict[str, str], quick: bool = False) -> Any:
    """The pinned library's `Demo` for one cell: the cell's overrides on the demo's recipes, the shared data."""
    from larp.demo.pipeline import Demo

    class CellDemo(Demo):
        def tokenizer_recipe(self, extra: list[str] | None = None) -> Any:
            return super().tokenizer_recipe(cell.tokenizer_overrides() + (extra or []))

        def ar_recipe(self, extra: list[str] | None = None) -> Any:
            return super().ar_recipe(["run.threads=1", f"model.config.max_seq_len={cell.tokens}"] + (extra or []))

        def stage_data(self) -> dict[str, Any]:
            return dict(data)

    return CellDemo(folder, demo_config(cell.seed, quick))


def _drop(tree: dict[str, Any], path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        tree = tree.get(key, {})
    tree.pop(path[-1], None)


def recipe_hash(demo: Any) -> str:
    """Hash of everything a cell does not set (the resolved recipes and the demo's settings): equal hashes
    mean the cells differ only in tokens, arm and seed."""
    shared = json.loads(json.dumps(demo.recipes()))
    for name, paths in CELL_KEYS.items():
        for path in paths:
            _drop(shared[name], path)
    settings = {k: v for k, v in asdict(demo.cfg).items() if k != "seed"}
    text = json.dumps({"recipes": shared, "demo": settings, "prior_weight_on": PRIOR_WEIGHT_ON}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- the stages
def stage_codes(demo: Any) -> dict[str, Any]:
    """Deterministic codes of every validation clip and the prior's scores on them."""
    import torch

    from larp.eval.reconstruction import prior_scores
    from larp.utils.files import write_safetensors

    tok = demo._tokenizer().eval()
    codes, labels, ce, top1, top5 = [], [], [], [], []
    with torch.no_grad():
        for video, y in demo._clips("val", batch=32):
            idx = tok.encode(video, deterministic=True)
            codes.append(idx)
            labels += y
            if tok.prior_model is not None:
                s = prior_scores(tok, idx)
                ce.append(s["prior_ce"])
                top1.append(s["prior_top1"])
                top5.append(s["prior_top5"])
    codes = torch.cat(codes)
    write_safetensors(demo.out / "val_codes.safetensors",
                      {"tokens": codes.to(torch.int32).contiguous(), "labels": torch.tensor(labels)})
    out: dict[str, Any] = {"clips": len(codes), "codes_used": int(codes.unique().numel()),
                           "uniform_ce": math.log(tok.codebook_size)}
    if ce:
        out.update(prior_ce=float(torch.cat(ce).mean()), prior_top1=float(torch.cat(top1).mean()),
                   prior_top5=float(torch.cat(top5).mean()))
    return out


def stage_ar_eval(demo: Any) -> dict[str, Any]:
    """The AR model's teacher-forced NLL (nats per token) on every validation clip's deterministic codes,
    beside a unigram model of the training cache's codes (add-1/2 smoothing)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from larp.models.ar import LARPAR
    from larp.train.token_cache import read_cache_meta

    val = load_file(str(demo.out / "val_codes.safetensors"))
    tokens, labels = val["tokens"].long(), val["labels"].long()
    ar = LARPAR.from_pretrained(demo.state["done"]["ar"]["model"]).eval()
    nll, correct = [], 0
    with torch.no_grad():
        for start in range(0, len(tokens), 64):
            t, y = tokens[start:start + 64], labels[start:start + 64]
            logits = ar.logits(t, y).float()
            nll.append(F.cross_entropy(logits.transpose(1, 2), t, reduction="none"))  # (B, N)
            correct += int((logits.argmax(-1) == t).sum())
    nll = torch.cat(nll)
    cache = Path(demo.state["done"]["tokens"]["cache"])
    meta = read_cache_meta(cache)
    train_codes = torch.cat([load_file(str(cache / s))["tokens"].long().flatten() for s in meta.shards])
    freq = torch.bincount(train_codes, minlength=ar.config.vocab_size).double() + 0.5
    unigram = float(-(freq / freq.sum()).log()[tokens.flatten()].mean())
    return {"val_nll": float(nll.mean()), "val_token_acc": correct / tokens.numel(), "unigram_nll": unigram,
            "uniform_nll": math.log(ar.config.vocab_size)}


def run_cell(cell: Cell, folder: Path, data: dict[str, str], expected_hash: str, quick: bool = False
             ) -> dict[str, Any]:
    """Run (or resume) one cell in `folder` with the demo's stages (its report left out) and two of its own."""
    import time

    import torch

    torch.set_num_threads(1)
    demo = demo_cell(cell, folder, data, quick)
    h = recipe_hash(demo)
    if h != expected_hash:
        raise SystemExit(f"cell {cell.id} resolves to recipe {h}, the ablation's is {expected_hash}")
    stages = [("data", demo.stage_data), ("tokenizer", demo.stage_tokenizer), ("recon", demo.stage_recon),
              ("codes", lambda: stage_codes(demo)), ("tokens", demo.stage_tokens), ("ar", demo.stage_ar),
              ("ar_eval", lambda: stage_ar_eval(demo)), ("samples", demo.stage_samples), ("score", demo.stage_score)]
    for name, fn in stages:
        if demo._done(name):
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        info = fn() or {}
        info["seconds"] = round(time.perf_counter() - t0, 1)
        info["cpu_seconds"] = round(time.process_time() - c0, 1)
        demo._finish(name, info)
        print(f"[{cell.id}] {name}: {json.dumps(info)[:300]}", flush=True)
    return make_row(cell, h, demo.state["done"])


def make_row(cell: Cell, h: str, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def pick(stage: str, keys: list[str], prefix: str = "") -> dict[str, Any]:
        info = done.get(stage) or {}
        return {k[len(prefix):] if k.startswith(prefix) else k: info[k] for k in keys if k in info}

    recon = pick("recon", ["val_psnr", "val_ssim", "recon_object_psnr", "recon_background_psnr",
                           "recon_object_iou", "recon_strict_accuracy", "recon_coherent_fraction", "recon_sfvd",
                           "codebook_usage"], "recon_")
    ar_final = (done.get("ar") or {}).get("final_eval") or {}
    row = {"cell": cell.id, "tokens": cell.tokens, "prior": "on" if cell.prior else "off",
           "prior_weight": PRIOR_WEIGHT_ON if cell.prior else 0.0, "seed": cell.seed, "recipe_hash": h,
           "commit": os.environ.get(CHILD_ENV, "working-tree"), "finished": now(),
           "recon": {("psnr" if k == "val_psnr" else "ssim" if k == "val_ssim" else k): v for k, v in recon.items()},
           "prior_eval": pick("codes", ["prior_ce", "prior_top1", "prior_top5", "uniform_ce", "codes_used"]),
           "ar": {**pick("ar_eval", ["val_nll", "val_token_acc", "unigram_nll", "uniform_nll"]),
                  "demo_val_loss": ar_final.get("val/loss")},
           "samples": pick("score", ["sfvd", "strict_accuracy", "colour_accuracy", "shape_accuracy",
                                     "motion_accuracy", "coherent_fraction", "empty_fraction", "path_spread",
                                     "count"]),
           "seconds": {k: v["seconds"] for k, v in done.items() if v and "seconds" in v},
           "cpu_seconds": {k: v["cpu_seconds"] for k, v in done.items() if v and "cpu_seconds" in v}}
    row["seconds"]["total"] = round(sum(row["seconds"].values()), 1)
    return row


# ------------------------------------------------------------------------------------------- the runner
def pin_code(root: Path, commit: str | None) -> tuple[str, Path]:
    """Extract the library of `commit` (default: the one pinned for `root`, else HEAD) under root/code."""
    pinned = root / "code" / "COMMIT"
    if commit is None:
        commit = pinned.read_text().strip() if pinned.exists() else None
    sha = subprocess.run(["git", "rev-parse", commit or "HEAD"], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    if pinned.exists() and pinned.read_text().strip() != sha:
        raise SystemExit(f"{root} runs the library of commit {pinned.read_text().strip()[:10]}, not {sha[:10]}: "
                         "use another --root to run other code")
    src = root / "code" / sha
    if not (src / "src" / "larp" / "__init__.py").exists():
        tmp = root / "code" / f".{sha}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", sha, "src/larp"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.replace(src)
    if not pinned.exists():  # atomic: a second launch may read it at any moment
        tmp_pin = pinned.with_name(f".COMMIT.{os.getpid()}")
        tmp_pin.write_text(sha + "\n")
        tmp_pin.replace(pinned)
    return sha, src / "src"


def prepare_data(root: Path, quick: bool = False) -> dict[str, str]:
    """The demo's dataset (its default settings, seed 0), written once for all cells: x264 may not give the
    same bytes twice, so that every cell reads the same files."""
    from larp.data.synthetic import write_synthetic_dataset
    c = demo_config(0, quick)
    settings = {"classes": c.classes, "clips_per_class": c.clips_per_class, "frames": c.frames, "size": c.size,
                "seed": 0}
    folder, marker = root / "data", root / "data" / "done.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info["settings"] != settings:
            raise SystemExit(f"{folder} holds a dataset of other settings: use another --root")
        return info["paths"]
    paths = write_synthetic_dataset(folder, **settings)
    info = {"settings": settings, "paths": {k: str(v) for k, v in paths.items()}}
    write_json(marker, info)
    return info["paths"]


def cells_of(args: argparse.Namespace) -> list[Cell]:
    """Seed by seed, so that a first full seed comes early; arms alternate (two workers take one arm each)."""
    return [Cell(n, prior, s) for s in args.seeds for n in args.tokens for prior in (False, True)]


def command_run(args: argparse.Namespace) -> None:
    root = Path(args.root)
    data = prepare_data(root, args.quick)  # written once, before any worker starts
    cells = [Cell.parse(c) for c in args.cells] if args.cells else cells_of(args)
    if args.workers > 1 and args.worker is None:  # one process per worker, cells dealt round-robin
        procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", str(i)])
                 for i in range(args.workers)]
        raise SystemExit(max(p.wait() for p in procs))
    scratch = root / f".template.{os.getpid()}"
    expected = recipe_hash(demo_cell(Cell(64, True, 0), scratch, data, args.quick))  # the hash of the ablation's recipe
    shutil.rmtree(scratch)
    results = Results(Path(args.results), ABLATION, expected)
    mine = cells[args.worker::args.workers] if args.worker is not None else cells
    for cell in mine:
        if results.done(args.kind, cell.id):
            continue
        folder = root / args.kind / cell.id
        print(f"[{cell.id}] {folder}", flush=True)
        row = run_cell(cell, folder, data, expected, args.quick)
        results.add(args.kind, row, args.git_commit)
        print(f"[{cell.id}] row: {json.dumps(row)[:400]}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "rerun"):
        q = sub.add_parser(name)
        q.add_argument("cells", nargs="*" if name == "run" else 1, default=None,
                       help="cells to run, e.g. n64-prior-s0 (run: default all of --tokens x arms x --seeds)")
        q.add_argument("--root", default=str(REPO / "runs" / "prior_ablation_demo"), help="working folder")
        q.add_argument("--results", default=str(RESULTS))
        q.add_argument("--tokens", type=int, nargs="+", default=[64],
                       help="token counts; the demo's local init needs a whole number of tokens per patch "
                            "that divides its encoder's heads: 16, 32 or 64 at its 16 patches and 4 heads")
        q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        q.add_argument("--workers", type=int, default=1, help="cells run in this many processes at once")
        q.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
        q.add_argument("--commit", default=None, help="library commit to run (default: pinned, else HEAD)")
        q.add_argument("--quick", action="store_true", help="the demo's smoke settings (checks the script only)")
        q.add_argument("--git-commit", action="store_true", help="commit the results file after every row")
    r = sub.add_parser("report")
    r.add_argument("--results", default=str(RESULTS))
    r.add_argument("--plot", default=str(PLOT))
    r.add_argument("--no-plot", action="store_true")
    r.add_argument("--ablation", default=ABLATION, help="the ablation whose plot is drawn")
    args = p.parse_args(argv)
    if args.command == "report":
        from prior_ablation_report import command_report

        return command_report(args)
    root = Path(args.root)
    if CHILD_ENV not in os.environ:  # re-run this script on the pinned library
        sha, src = pin_code(root, args.commit)
        env = {**os.environ, CHILD_ENV: sha, "PYTHONPATH": str(src)}
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    import larp

    if not Path(larp.__file__).resolve().is_relative_to((root / "code").resolve()):
        raise SystemExit(f"larp was imported from {larp.__file__}, not from the pinned copy under {root}/code")
    args.kind = {"run": "cells", "rerun": "reruns"}[args.command]
    command_run(args)


if __name__ == "__main__":
    main()
