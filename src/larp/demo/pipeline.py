"""`larp demo`: the whole method on the built-in synthetic dataset, on a laptop CPU, in minutes.

Stages, each resumable (a finished stage is skipped when the demo runs again in the same folder):
  1. data        write the synthetic dataset (train / val mp4 clips and CSVs)
  2. tokenizer   train the small LARP tokenizer with its prior loss (configs/tiny_synthetic.yaml)
  3. recon       reconstruction of the validation clips: PSNR, SSIM, codebook usage, class kept
  4. tokens      encode the training clips once (token cache)
  5. ar          train a small class-conditional AR model on the tokens (configs/tiny_synthetic_ar.yaml)
  6. samples     sample videos per class with classifier-free guidance
  7. score       classify the samples with the dataset's analytic classifier
  8. report      report.html, metrics.json and plots"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from larp.utils.config import ConfigError
from larp.utils.errors import LarpError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "configs"

# The demo's recipes, as `key=value` overrides of the trainers' defaults. The tokenizer runs on one torch
# thread (its matrices are small: a second thread gains little, and a shared CPU makes it several times
# slower); the AR model's batch of 16 x 65 positions gains 1.5-2x from a second one on an idle machine.
# configs/tiny_synthetic.yaml and configs/tiny_synthetic_ar.yaml hold the same values (a test keeps them equal).
TOKENIZER_RECIPE = [
    "model.preset=larp-synthetic-64",
    "data.num_frames=16", "data.size=64", "data.batch_size=8", "data.num_workers=0", "data.val_clips=64",
    "data.cache_mb=512",
    "optim.lr=3e-4", "optim.betas=[0.9, 0.99]", "optim.warmup_steps=20", "optim.min_lr_ratio=0.1",
    "optim.grad_clip=1.0", "optim.prior_lr_mult=1.0", "optim.embed_lr_mult=0.01",
    "loss.pixel=l1", "loss.l2_weight=1.0", "loss.perceptual_weight=0", "loss.gan_weight=0", "loss.vq_weight=0.1",
    "loss.prior_weight=0.06",
    "codebook.local_linear_init=true", "codebook.init_from_encoder=true", "codebook.init_kmeans_iters=10",
    "codebook.dead_code_steps=50",
    "run.threads=1", "run.max_steps=1200", "run.log_every=10", "run.eval_every=300", "run.ckpt_every=300", "run.keep_last=2",
    "run.best_metric=val/psnr",
]
AR_RECIPE = [
    "model.preset=ar-synthetic",
    "data.num_frames=16", "data.size=64", "data.batch_size=16", "data.num_workers=0", "data.val_clips=16",
    "optim.lr=1e-3", "optim.betas=[0.9, 0.95]", "optim.weight_decay=0.05", "optim.warmup_steps=50",
    "optim.min_lr_ratio=0.1", "optim.grad_clip=1.0",
    "run.threads=2", "run.max_steps=1000", "run.log_every=10", "run.eval_every=250", "run.ckpt_every=250",
    "run.keep_last=2",
]


@dataclass
class DemoConfig:
    classes: int = 10
    clips_per_class: int = 128  # 96 training + 32 validation clips per class; 64 left the AR model overfitting
    frames: int = 16
    size: int = 64
    windows_per_video: int = 4  # token-cache windows per training video, distinct starts only (each also flipped)
    samples_per_class: int = 4
    cfg_scale: float = 3.0
    temperature: float = 1.0
    seed: int = 0
    quick: bool = False  # a few steps per stage (tests, smoke runs)

    @classmethod
    def smoke(cls, seed: int = 0) -> DemoConfig:
        """A few steps per stage on a few clips: checks the pipeline, not the figures."""
        return cls(clips_per_class=4, windows_per_video=1, samples_per_class=1, seed=seed, quick=True)

    def tokenizer_overrides(self) -> list[str]:
        extra = ["run.max_steps=4", "run.eval_every=2", "run.ckpt_every=2", "data.val_clips=8"] if self.quick else []
        return TOKENIZER_RECIPE + [f"run.seed={self.seed}"] + extra

    def ar_overrides(self) -> list[str]:
        extra = ["run.max_steps=4", "run.eval_every=2", "run.ckpt_every=2", "data.val_clips=4"] if self.quick else []
        return AR_RECIPE + [f"run.seed={self.seed}", f"model.config.num_classes={self.classes}"] + extra


class Demo:
    def __init__(self, out: str | Path, config: DemoConfig, overwrite: bool = False):
        self.out, self.cfg = Path(out), config
        self.state_file = self.out / "demo.json"
        self._claim_folder(overwrite)
        self.state: dict[str, Any] = json.loads(self.state_file.read_text())

    # ------------------------------------------------------------------------------------ folder
    def recipes(self) -> dict[str, Any]:
        """The resolved training recipes (presets included): what a finished stage's results depend on
        beyond DemoConfig, so that a demo folder from another version of them is never resumed."""
        from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe
        from larp.utils.config import to_dict

        tok = load_recipe(TokenizerTrainConfig, None, self.cfg.tokenizer_overrides())
        ar = load_recipe(ARTrainConfig, None, self.cfg.ar_overrides())
        return {"tokenizer": {**to_dict(tok), "model_config": to_dict(tok.model_config())},
                "ar": {**to_dict(ar), "model_config": to_dict(ar.model_config())}}

    def _claim_folder(self, overwrite: bool) -> None:
        wanted = asdict(self.cfg)
        recipes = json.loads(json.dumps(self.recipes()))  # as stored: tuples become lists
        if self.out.exists() and any(self.out.iterdir()):
            if overwrite:
                shutil.rmtree(self.out)
            elif not self.state_file.exists():
                raise ConfigError(f"{self.out} is not empty and holds no demo; choose another --out or pass "
                                  "--overwrite to delete it")
            else:
                state = json.loads(self.state_file.read_text())
                previous = state["config"]
                if previous != wanted:
                    changed = sorted(k for k in wanted if previous.get(k) != wanted[k])
                    raise ConfigError(f"{self.out} holds a demo run with other settings ({', '.join(changed)}); "
                                      "pass --overwrite to redo it from scratch, or another --out")
                if state.get("recipes") != recipes:
                    old = state.get("recipes") or {}
                    changed = [k for k in recipes if old.get(k) != recipes[k]]
                    raise ConfigError(f"{self.out} holds a demo run made with other training recipes "
                                      f"({' and '.join(changed)}: an earlier version of larp); pass --overwrite "
                                      "to redo it from scratch, or another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.state_file.exists():
            self.state_file.write_text(json.dumps({"config": wanted, "recipes": recipes, "done": {}}, indent=2))

    def _done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def _finish(self, stage: str, info: dict[str, Any]) -> None:
        self.state["done"][stage] = info
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------------------------ stages
    def run(self) -> dict[str, Any]:
        stages = [("data", self.stage_data), ("tokenizer", self.stage_tokenizer), ("recon", self.stage_recon),
                  ("tokens", self.stage_tokens), ("ar", self.stage_ar), ("samples", self.stage_samples),
                  ("score", self.stage_score), ("report", self.stage_report)]
        for i, (name, fn) in enumerate(stages, 1):
            if self._done(name):
                tqdm.write(f"[{i}/{len(stages)}] {name}: done earlier, skipped")
                continue
            tqdm.write(f"[{i}/{len(stages)}] {name}")
            t0 = time.perf_counter()
            info = fn() or {}
            info["seconds"] = time.perf_counter() - t0
            self._finish(name, info)
        return json.loads((self.out / "metrics.json").read_text())

    def stage_data(self) -> dict[str, Any]:
        from larp.data.synthetic import write_synthetic_dataset

        c = self.cfg
        paths = write_synthetic_dataset(self.out / "data", classes=c.classes, clips_per_class=c.clips_per_class,
                                        frames=c.frames, size=c.size, seed=c.seed)
        return {k: str(v) for k, v in paths.items()}

    def _data(self) -> dict[str, str]:
        return self.state["done"]["data"]

    def stage_tokenizer(self) -> dict[str, Any]:
        from larp.train.config import TokenizerTrainConfig, load_recipe
        from larp.train.run import train
        from larp.train.tokenizer_task import TokenizerTask

        d = self._data()
        run_dir = self.out / "tokenizer"
        recipe = load_recipe(TokenizerTrainConfig, None, self.cfg.tokenizer_overrides() + [
            f"data.train_csv={d['train']}", f"data.val_csv={d['val']}", f"run.out_dir={run_dir}"])
        resume = (run_dir / "checkpoints").is_dir()
        metrics = train(recipe, TokenizerTask, resume=resume, overwrite=not resume)
        return {"model": str(run_dir / "model"), "final_eval": metrics}

    def _tokenizer(self):
        from larp.models.tokenizer import LARPTokenizer

        return LARPTokenizer.from_pretrained(self.state["done"]["tokenizer"]["model"])

    @torch.no_grad()
    def stage_recon(self) -> dict[str, Any]:
        from larp.data.datasets import VideoCSVDataset
        from larp.data.synthetic import classify_clips
        from larp.data.video_io import write_gif, write_png_grid
        from larp.eval.metrics import psnr, ssim
        from larp.train.codebook import CodebookMonitor

        tok = self._tokenizer()
        val = VideoCSVDataset(self._data()["val"], num_frames=self.cfg.frames, size=self.cfg.size, seed=self.cfg.seed)
        monitor = CodebookMonitor(tok.codebook_size, window=10**6)
        psnrs, ssims, kept = [], [], []
        for start in tqdm(range(0, len(val), 16), desc="reconstruct"):
            items = [val[i] for i in range(start, min(start + 16, len(val)))]
            video = torch.stack([it["video"] for it in items])
            idx = tok.encode(video)
            monitor.update(idx)
            recon = tok.decode(idx).clamp(0, 1)
            psnrs += psnr(recon, video).tolist()
            ssims += ssim(recon, video).tolist()
            labels = np.array([it["label"] for it in items])
            kept += (classify_clips(recon, self.cfg.classes) == labels).tolist()
        # One clip of each of the first six classes (the CSV is ordered by class), over its reconstruction.
        firsts = [val.labels.index(k) for k in range(min(6, self.cfg.classes)) if k in val.labels]
        real = torch.stack([val[i]["video"] for i in firsts])
        shown = torch.cat([real, tok.decode(tok.encode(real)).clamp(0, 1)])
        stats = monitor.stats()
        pics = self.out / "pictures"
        write_png_grid(pics / "recon.png", shown)
        write_gif(pics / "recon.gif", shown)
        return {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims)),
                "codebook_usage": stats["codebook_usage"], "codebook_perplexity": stats["codebook_perplexity"],
                "recon_class_accuracy": float(np.mean(kept)), "val_clips": len(val)}

    def stage_tokens(self) -> dict[str, Any]:
        from larp.data.datasets import VideoCSVDataset
        from larp.train.token_cache import build_token_cache

        tok = self._tokenizer()
        cache = self.out / "tokens"
        shutil.rmtree(cache, ignore_errors=True)  # an interrupted build left no meta.json: start it again
        ds = VideoCSVDataset(self._data()["train"], num_frames=self.cfg.frames, size=self.cfg.size)
        meta = build_token_cache(tok, ds, cache, tokenizer_id=self.state["done"]["tokenizer"]["model"],
                                 windows_per_video=self.cfg.windows_per_video,
                                 flip=True, seed=self.cfg.seed, batch_size=16)
        return {"cache": str(cache), "entries": meta.num_entries}

    def stage_ar(self) -> dict[str, Any]:
        from larp.train.ar_task import ARTask
        from larp.train.config import ARTrainConfig, load_recipe
        from larp.train.run import train

        tok = self._tokenizer()
        run_dir = self.out / "ar"
        recipe = load_recipe(ARTrainConfig, None, self.cfg.ar_overrides() + [
            f"model.config.vocab_size={tok.codebook_size}", f"model.config.max_seq_len={tok.num_tokens}",
            f"tokenizer.path={self.state['done']['tokenizer']['model']}",
            f"data.token_cache={self.state['done']['tokens']['cache']}", f"data.val_csv={self._data()['val']}",
            f"run.out_dir={run_dir}"])
        resume = (run_dir / "checkpoints").is_dir()
        metrics = train(recipe, ARTask, resume=resume, overwrite=not resume)
        return {"model": str(run_dir / "model"), "final_eval": metrics}

    @torch.no_grad()
    def stage_samples(self) -> dict[str, Any]:
        from larp.data.video_io import write_gif, write_mp4, write_png_grid
        from larp.models.ar import LARPAR
        from larp.sample.generate import generate

        tok = self._tokenizer()
        ar = LARPAR.from_pretrained(self.state["done"]["ar"]["model"])
        c = self.cfg
        folder = self.out / "samples"
        labels = torch.arange(c.classes).repeat_interleave(c.samples_per_class)
        g = torch.Generator().manual_seed(c.seed)
        videos = []
        for start in tqdm(range(0, len(labels), 20), desc="sample"):
            cond = labels[start:start + 20]
            tokens = generate(ar, cond, cfg_scale=c.cfg_scale, temperature=c.temperature, generator=g)
            videos.append(tok.decode(tokens).clamp(0, 1))
        videos = torch.cat(videos)
        files = []
        for i, (v, y) in enumerate(zip(videos, labels.tolist(), strict=True)):
            files.append(str(write_mp4(folder / f"{i:04d}_class{y}.mp4", v)))
        from safetensors.torch import save_file  # the samples, for scoring: no pickle

        save_file({"videos": videos.contiguous(), "labels": labels}, str(folder / "samples.safetensors"))
        pics = self.out / "pictures"
        for k in range(c.classes):
            rows = videos[labels == k]
            write_gif(pics / f"class{k}.gif", rows)
        write_png_grid(pics / "samples.png", videos[:: c.samples_per_class])
        return {"count": len(files), "folder": str(folder)}

    def stage_score(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        from larp.data.synthetic import classify_clips

        data = load_file(str(self.out / "samples" / "samples.safetensors"))
        pred = classify_clips(data["videos"], self.cfg.classes)
        labels = data["labels"].numpy()
        per_class = {int(k): float((pred[labels == k] == k).mean()) for k in np.unique(labels)}
        return {"sample_class_accuracy": float((pred == labels).mean()), "per_class": per_class,
                "chance": 1.0 / self.cfg.classes}

    def stage_report(self) -> dict[str, Any]:
        from larp.data.synthetic import synthetic_classes
        from larp.demo.report import plot_curves, write_report

        done = self.state["done"]
        recon, score = done["recon"], done["score"]
        metrics = {
            "val_psnr_db": recon["val_psnr"], "val_ssim": recon["val_ssim"],
            "codebook_usage": recon["codebook_usage"], "codebook_perplexity": recon["codebook_perplexity"],
            "recon_class_accuracy": recon["recon_class_accuracy"],
            "sample_class_accuracy": score["sample_class_accuracy"], "chance_accuracy": score["chance"],
            "tokenizer_train_seconds": done["tokenizer"]["seconds"], "ar_train_seconds": done["ar"]["seconds"],
            "total_seconds": sum(v.get("seconds", 0.0) for v in done.values()),
            "quick": self.cfg.quick,
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        pics = self.out / "pictures"
        curves = [p for p in (
            plot_curves({"tokenizer": self.out / "tokenizer" / "metrics.jsonl"},
                        ["train/loss", "train/prior_ce", "val/psnr", "train/codebook_usage"],
                        pics / "tokenizer_curves.png", "tokenizer training"),
            plot_curves({"ar": self.out / "ar" / "metrics.jsonl"}, ["train/loss", "val/loss"],
                        pics / "ar_curves.png", "AR training")) if p is not None]
        names = [s.name for s in synthetic_classes(self.cfg.classes)]
        sections = [
            ("Real (top rows) vs reconstructed (bottom rows) validation clips",
             [("animated", pics / "recon.gif"), ("frames over time", pics / "recon.png")]),
            (f"Generated clips per class (guidance {self.cfg.cfg_scale:.2g})",
             [(f"class {k}: {names[k]} ({score['per_class'].get(k, score['per_class'].get(str(k), 0)):.0%} "
               "classified correctly)", pics / f"class{k}.gif") for k in range(self.cfg.classes)]),
            ("Loss curves", [(p.stem, p) for p in curves]),
        ]
        report = write_report(self.out / "report.html", "larp demo: LARP on synthetic videos", metrics, sections,
                              notes=["A LARP tokenizer (holistic queries, stochastic VQ, AR prior) and a "
                                     "class-conditional AR model trained from scratch on this machine."])
        return {"report": str(report)}


def run_demo(out: str | Path, config: DemoConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    return Demo(out, config or DemoConfig(), overwrite).run()


def _demo_command(args: Any) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the report's plots; say so now, not after the run
        raise LarpError("the demo's report needs matplotlib, which is not installed: pip install -e '.[report]'")
    cfg = DemoConfig.smoke(args.seed) if args.quick else DemoConfig(seed=args.seed)
    metrics = run_demo(args.out, cfg, overwrite=args.overwrite)  # errors: one line from larp.cli.main
    print(json.dumps(metrics, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole method on the synthetic dataset (CPU, minutes)",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    from larp.utils import cli as opts

    opts.add_output(p, required=False, default="runs/demo", metavar="FOLDER", help="demo folder")
    opts.add_overwrite(p, help="delete an earlier demo in the folder first")
    opts.add_option(p, "quick", action="store_true", help="a few steps per stage (a smoke run, figures meaningless)")
    opts.add_seed(p, help="seed of the data, the training runs and the samples")
    p.set_defaults(func=_demo_command)
