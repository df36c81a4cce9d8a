"""`larp demo`: the whole method on the built-in synthetic dataset, on a laptop CPU, in minutes.

Stages, each resumable (a finished stage is skipped when the demo runs again in the same folder):
  1. data        write the synthetic dataset (train / val mp4 clips and CSVs)
  2. tokenizer   train the small LARP tokenizer with its prior loss (recipe: larp/configs/tiny_synthetic.yaml)
  3. recon       reconstruct every validation clip: PSNR, SSIM, codebook usage, object IoU and PSNR, strict
                 class accuracy, sFVD (larp.eval.reconstruction, larp.eval.synthetic)
  4. tokens      encode the training clips once (token cache)
  5. ar          train a small class-conditional AR model on the tokens (larp/configs/tiny_synthetic_ar.yaml)
  6. samples     sample videos per class with classifier-free guidance
  7. score       score the samples: strict class accuracy, coherent fraction, sFVD
  8. report      report.html, metrics.json and pictures

Presets: cpu (the default: a 2-core CPU, about 16 minutes) and gpu (`--device cuda`: one GPU, five times
the tokenizer's steps)."""

from __future__ import annotations

import argparse
import importlib.resources
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from larp.utils.config import ConfigError
from larp.utils.errors import LarpError
from larp.utils.files import write_safetensors
from larp.utils.outputs import LOCK_NAME, MANIFEST, Manifest, exclusive_output

# Everything the demo writes at the top of its folder; `--overwrite` deletes these (as recorded in the
# folder's manifest) and nothing else.
DEMO_ENTRIES = ("demo.json", "demo.tmp", "data", "tokenizer", "recon", "tokens", "ar", "samples", "pictures",
                "metrics.json", "report.html")
HOUSEKEEPING = (MANIFEST, LOCK_NAME)
TOKENIZER_RECIPE = "tiny_synthetic.yaml"  # files of the package's `configs` folder (configs/ links to them)
AR_RECIPE = "tiny_synthetic_ar.yaml"


def recipe_file(name: str) -> Path:
    """A recipe shipped with the package (`larp/configs/<name>`), wherever larp is installed."""
    path = Path(str(importlib.resources.files("larp") / "configs" / name))
    if not path.is_file():
        raise ConfigError(f"the recipe {name} is missing from the installed package ({path})")
    return path


@dataclass
class DemoConfig:
    classes: int = 10
    clips_per_class: int = 256  # 192 training + 64 validation per class; at 128 the AR validation loss rose past 1,000 steps
    frames: int = 16
    size: int = 64
    samples_per_class: int = 20  # 200 samples: strict accuracy to about +-3 points
    cfg_scale: float = 1.5  # against 3: half the sample sFVD, more coherent and strictly right samples (docs/studies/demo.md)
    temperature: float = 0.5  # against 0.7: more coherent samples, lower sFVD, paths a little less varied (docs/studies/demo.md)
    top_k: int = 0
    seed: int = 0
    tokenizer_steps: int | None = None  # None: the tokenizer recipe's (1,200)
    device: str = "cpu"  # where every stage trains and runs its models
    quick: bool = False  # a few steps per stage (tests, smoke runs)

    @classmethod
    def smoke(cls, seed: int = 0) -> DemoConfig:
        """A few steps per stage on a few clips: checks the pipeline, not the figures."""
        return demo_config("cpu", seed=seed, quick=True)

    def tokenizer_overrides(self) -> list[str]:
        """The demo's changes to the shipped tokenizer recipe: its seed and device, its steps when the preset
        sets them, and few steps when quick."""
        extra = [f"run.seed={self.seed}", f"run.device={self.device}"]
        if self.quick:
            extra += ["run.max_steps=4", "run.eval_every=2", "run.ckpt_every=2", "data.val_clips=8"]
        elif self.tokenizer_steps is not None:  # the recipe evaluates and saves four times a run
            every = max(1, self.tokenizer_steps // 4)
            extra += [f"run.max_steps={self.tokenizer_steps}", f"run.eval_every={every}", f"run.ckpt_every={every}"]
        return extra

    def ar_overrides(self) -> list[str]:
        extra = ["run.max_steps=4", "run.eval_every=2", "run.ckpt_every=2", "data.val_clips=4"] if self.quick else []
        return [f"run.seed={self.seed}", f"run.device={self.device}", f"model.config.num_classes={self.classes}"] + extra


# The demo's presets, chosen with `larp demo --preset` (by default from `--device`). "gpu" spends one GPU's
# minutes on what the CPU study measured to help most: five times the tokenizer's steps (coherent
# reconstructions 36 -> 62 %, coherent samples 17.5 -> 34.5 % on the CPU). Its time is estimated from the
# step's kernel count (docs/studies/demo.md, "A GPU preset"), not yet measured on a GPU.
DEMO_PRESETS: dict[str, DemoConfig] = {
    "cpu": DemoConfig(),
    "gpu": DemoConfig(tokenizer_steps=6000, device="cuda"),
}


def demo_config(preset: str = "cpu", *, seed: int = 0, device: str | None = None, quick: bool = False) -> DemoConfig:
    """A preset of DEMO_PRESETS with its seed, its device (None: the preset's) and, when quick, the smoke
    settings: a few steps per stage on a few clips, which check the pipeline, not the figures."""
    if preset not in DEMO_PRESETS:
        raise ConfigError(f"unknown demo preset {preset!r}; expected one of {', '.join(DEMO_PRESETS)}")
    cfg = replace(DEMO_PRESETS[preset], seed=seed, device=device or DEMO_PRESETS[preset].device)
    return replace(cfg, clips_per_class=4, samples_per_class=1, quick=True) if quick else cfg


class Demo:
    def __init__(self, out: str | Path, config: DemoConfig, overwrite: bool = False):
        self.out, self.cfg = Path(out), config
        self.state_file = self.out / "demo.json"
        self._claim_folder(overwrite)
        self.state: dict[str, Any] = json.loads(self.state_file.read_text())

    # ------------------------------------------------------------------------------------ folder
    def tokenizer_recipe(self, extra: list[str] | None = None) -> Any:
        from larp.train.config import TokenizerTrainConfig, load_recipe

        return load_recipe(TokenizerTrainConfig, recipe_file(TOKENIZER_RECIPE),
                           self.cfg.tokenizer_overrides() + (extra or []))

    def ar_recipe(self, extra: list[str] | None = None) -> Any:
        from larp.train.config import ARTrainConfig, load_recipe

        return load_recipe(ARTrainConfig, recipe_file(AR_RECIPE), self.cfg.ar_overrides() + (extra or []))

    def recipes(self) -> dict[str, Any]:
        """The resolved training recipes (presets included, paths left out): what a finished stage's results
        depend on beyond DemoConfig, so that a demo folder from another version of them is never resumed."""
        from larp.utils.config import to_dict

        tok, ar = to_dict(self.tokenizer_recipe()), to_dict(self.ar_recipe())
        for recipe in (tok, ar):
            recipe["run"].pop("out_dir", None)
            for key in ("train_csv", "val_csv", "token_cache"):
                recipe["data"].pop(key, None)
            recipe.get("tokenizer", {}).pop("path", None)
        return {"tokenizer": {**tok, "model_config": to_dict(self.tokenizer_recipe().model_config())},
                "ar": {**ar, "model_config": to_dict(self.ar_recipe().model_config())}}

    def _claim_folder(self, overwrite: bool) -> None:
        wanted = asdict(self.cfg)
        recipes = json.loads(json.dumps(self.recipes()))  # as stored: tuples become lists
        manifest = Manifest(self.out)
        others = [p for p in self.out.iterdir() if p.name not in HOUSEKEEPING] if self.out.is_dir() else []
        if others:
            if overwrite:
                if self.state_file.exists() and not manifest.entries():  # a demo written before manifests
                    manifest.record(*(self.out / e for e in DEMO_ENTRIES if (self.out / e).exists()))
                manifest.clear()  # the demo's own files only: anything else in the folder stays
            elif not self.state_file.exists():
                raise ConfigError(f"{self.out} is not empty and holds no demo; choose another --out, or pass "
                                  "--overwrite to write the demo beside those files (nothing of them is deleted)")
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
            manifest.claim(*(self.out / e for e in DEMO_ENTRIES))  # refused if the user has a file of that name
            self.state_file.write_text(json.dumps({"config": wanted, "recipes": recipes, "done": {}}, indent=2))
        elif not manifest.entries():
            manifest.record(*(self.out / e for e in DEMO_ENTRIES if (self.out / e).exists()))

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
            t0, c0 = time.perf_counter(), time.process_time()
            info = fn() or {}
            info["seconds"] = time.perf_counter() - t0
            info["cpu_seconds"] = time.process_time() - c0
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
        from larp.train.run import train
        from larp.train.tokenizer_task import TokenizerTask

        d = self._data()
        run_dir = self.out / "tokenizer"
        recipe = self.tokenizer_recipe([f"data.train_csv={d['train']}", f"data.val_csv={d['val']}",
                                        f"run.out_dir={run_dir}"])
        resume = (run_dir / "checkpoints").is_dir()
        metrics = train(recipe, TokenizerTask, resume=resume, overwrite=not resume)
        return {"model": str(run_dir / "model"), "final_eval": metrics}

    def _tokenizer(self):
        from larp.models.tokenizer import LARPTokenizer

        return LARPTokenizer.from_pretrained(self.state["done"]["tokenizer"]["model"])

    def _clips(self, split: str, count: int | None = None, batch: int = 16):
        """(videos (B, 3, T, H, W), labels) batches of the first `count` clips of a split (all by default)."""
        from larp.data.datasets import VideoCSVDataset

        ds = VideoCSVDataset(self._data()[split], num_frames=self.cfg.frames, size=self.cfg.size, seed=self.cfg.seed)
        n = len(ds) if count is None else min(count, len(ds))
        for start in range(0, n, batch):
            items = [ds[i] for i in range(start, min(start + batch, n))]
            yield torch.stack([it["video"] for it in items]), [int(it["label"]) for it in items]

    @torch.no_grad()
    def stage_recon(self) -> dict[str, Any]:
        from larp.eval.reconstruction import reconstruction_metrics
        from larp.eval.synthetic import SyntheticReference, attribute_scores, path_spread

        c = self.cfg
        # The CSV lists clip 0 of every class, then clip 1...: the first `classes` clips are one per class.
        result = reconstruction_metrics(tqdm(self._clips("val"), desc="reconstruct", unit="batch"),
                                        self._tokenizer(), synthetic=True, num_classes=c.classes,
                                        keep_examples=c.classes, device=c.device)
        m, objects = result.metrics, result.objects
        reference = SyntheticReference(np.stack(objects.real_features))
        # The finite-sample floor of sFVD: real training clips (never reconstructed) against the reference.
        train_real = torch.cat([v for v, _ in self._clips("train", 20 * c.classes)])
        real = attribute_scores(objects.real_analyses, result.labels, c.classes)
        folder = self.out / "recon"
        folder.mkdir(parents=True, exist_ok=True)
        real_ex, recon_ex = result.examples
        write_safetensors(folder / "recon.safetensors", {
            "real_features": torch.from_numpy(reference.features),
            "real": torch.from_numpy(_uint8(real_ex)), "recon": torch.from_numpy(_uint8(recon_ex))})
        return {"val_psnr": m["psnr"], "val_ssim": m["ssim"], "codebook_usage": m["codebook_usage"],
                "codebook_perplexity": m["codebook_perplexity"], "val_clips": int(m["clips"]),
                "recon_class_accuracy": m["class_accuracy"], "recon_strict_accuracy": m["strict_accuracy"],
                "recon_colour_accuracy": m["colour_accuracy"], "recon_shape_accuracy": m["shape_accuracy"],
                "recon_motion_accuracy": m["motion_accuracy"], "recon_object_iou": m["object_iou"],
                "recon_object_iou_median": m["object_iou_median"], "recon_object_psnr": m["object_psnr"],
                "recon_background_psnr": m["background_psnr"], "recon_coherent_fraction": m["coherent_fraction"],
                "recon_sfvd": m["sfvd"], "sfvd_real_floor": reference.sfvd(train_real),
                "real_strict_accuracy": real["strict_accuracy"],
                "real_path_spread": path_spread(objects.real_analyses, result.labels),
                "file": str(folder / "recon.safetensors")}

    def stage_tokens(self) -> dict[str, Any]:
        from larp.data.datasets import VideoCSVDataset
        from larp.train.token_cache import build_token_cache

        tok = self._tokenizer()
        cache = self.out / "tokens"
        shutil.rmtree(cache, ignore_errors=True)  # an interrupted build left no meta.json: start it again
        ds = VideoCSVDataset(self._data()["train"], num_frames=self.cfg.frames, size=self.cfg.size)
        # Clips are exactly `frames` long: one window each, and its mirror image.
        meta = build_token_cache(tok, ds, cache, tokenizer_id=self.state["done"]["tokenizer"]["model"],
                                 windows_per_video=1, flip=True, seed=self.cfg.seed, batch_size=16,
                                 device=self.cfg.device)
        return {"cache": str(cache), "entries": meta.num_entries}

    def stage_ar(self) -> dict[str, Any]:
        from larp.train.ar_task import ARTask
        from larp.train.run import train

        tok = self._tokenizer()
        run_dir = self.out / "ar"
        recipe = self.ar_recipe(ar_data_overrides(tok, self.state["done"]["tokenizer"]["model"],
                                                  self.state["done"]["tokens"]["cache"], self._data()["val"], run_dir))
        resume = (run_dir / "checkpoints").is_dir()
        metrics = train(recipe, ARTask, resume=resume, overwrite=not resume)
        return {"model": str(run_dir / "model"), "final_eval": metrics}

    @torch.no_grad()
    def stage_samples(self) -> dict[str, Any]:
        from larp.data.video_write import write_mp4
        from larp.models.ar import LARPAR

        tok = self._tokenizer()
        ar = LARPAR.from_pretrained(self.state["done"]["ar"]["model"])
        folder = self.out / "samples"
        videos, labels = sample_videos(ar, tok, self.cfg)
        for i, (v, y) in enumerate(zip(videos, labels.tolist(), strict=True)):
            write_mp4(folder / f"{i:04d}_class{y}.mp4", v.numpy())
        write_safetensors(folder / "samples.safetensors", {"videos": videos.contiguous(), "labels": labels})
        return {"count": len(labels), "folder": str(folder)}

    def stage_score(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        samples = load_file(str(self.out / "samples" / "samples.safetensors"))
        scores = score_samples(samples["videos"], samples["labels"], Path(self.state["done"]["recon"]["file"]),
                               self.cfg.classes)
        return {**scores, "chance": 1.0 / self.cfg.classes}

    def stage_report(self) -> dict[str, Any]:
        from larp.demo.figures import write_demo_cards, write_demo_report

        info = write_demo_report(self)
        write_demo_cards(self)  # the models' cards carry the figures just written
        return info


def ar_data_overrides(tok: Any, tokenizer_path: str | Path, token_cache: str | Path, val_csv: str | Path,
                      out_dir: str | Path) -> list[str]:
    """Recipe overrides that pair the AR recipe with a trained tokenizer (its codes and token count), its token
    cache and the validation clips."""
    return [f"model.config.vocab_size={tok.codebook_size}", f"model.config.max_seq_len={tok.num_tokens}",
            f"tokenizer.path={tokenizer_path}", f"data.token_cache={token_cache}", f"data.val_csv={val_csv}",
            f"run.out_dir={out_dir}"]


@torch.no_grad()
def sample_videos(ar: Any, tok: Any, cfg: DemoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's samples: `cfg.samples_per_class` per class with its guidance, temperature, top-k and seed,
    decoded -> (uint8 (N, T, H, W, 3), what the mp4 files and the pictures show; labels (N,))."""
    from larp.sample.generate import generate

    device = torch.device(cfg.device)
    ar, tok = ar.to(device), tok.to(device)
    labels = torch.arange(cfg.classes).repeat_interleave(cfg.samples_per_class)
    g = torch.Generator(device).manual_seed(cfg.seed)
    videos = []
    for start in tqdm(range(0, len(labels), 50), desc="sample", unit="batch"):
        tokens = generate(ar, labels[start:start + 50].to(device), cfg_scale=cfg.cfg_scale,
                          temperature=cfg.temperature, top_k=cfg.top_k, generator=g)
        videos.append(torch.from_numpy(_uint8(tok.decode(tokens))))
    return torch.cat(videos), labels


def score_samples(videos: torch.Tensor, labels: torch.Tensor, recon_file: Path, classes: int) -> dict[str, Any]:
    """Sample metrics of uint8 (N, T, H, W, 3) clips against the real validation clips' features, which the
    recon stage stored in `recon_file` (`larp.eval.synthetic.sample_metrics`)."""
    from safetensors.torch import load_file

    from larp.eval.synthetic import SyntheticReference, sample_metrics

    reference = SyntheticReference(load_file(str(recon_file))["real_features"].numpy())
    clips = videos.permute(0, 4, 1, 2, 3).float() / 255
    return sample_metrics(clips, labels.tolist(), reference, num_classes=classes)


def _uint8(videos: torch.Tensor) -> np.ndarray:
    """float (B, 3, T, H, W) -> uint8 (B, T, H, W, 3), clamped and rounded (as written to files)."""
    from larp.data.video_write import to_uint8

    return to_uint8(videos)


def run_demo(out: str | Path, config: DemoConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    with exclusive_output(out, "demo"):  # one demo per folder at a time
        return Demo(out, config or DemoConfig(), overwrite).run()


def config_from_args(args: Any) -> DemoConfig:
    """The demo's settings from its command line: the preset (by default gpu on a CUDA device, else cpu),
    the seed, the device, and the smoke settings with --quick. A device that is not there fails now, not
    after the data stage."""
    from larp.utils.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise LarpError(f"--device: {exc}") from exc
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    return demo_config(preset, seed=args.seed, device=str(device), quick=args.quick)


def _demo_command(args: Any) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the report's plots; say so now, not after the run
        raise LarpError("the demo's report needs matplotlib, which is not installed: pip install -e '.[report]'")
    metrics = run_demo(args.out, config_from_args(args), overwrite=args.overwrite)  # errors: one line from larp.cli.main
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
    opts.add_device(p, default="cpu")
    opts.add_option(p, "preset", choices=sorted(DEMO_PRESETS), default=None,
                    help="the demo's size: cpu (a 2-core CPU, ~16 minutes) or gpu (one GPU, five times the "
                         "tokenizer's steps); default: gpu on a CUDA device, else cpu")
    opts.add_seed(p, help="seed of the data, the training runs and the samples")
    p.set_defaults(func=_demo_command)
