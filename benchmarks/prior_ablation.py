"""Prior ablation: does training the tokenizer with its AR prior make its tokens easier to generate?

For each token count x prior {off: loss.prior_weight=0, on: the recipe's weight} x seed, one *cell* trains the
small synthetic tokenizer, encodes the training clips (token cache), trains the same AR model on them, samples
20 clips per class with guidance and measures: reconstruction PSNR and object metrics, the prior's top-1 and
cross-entropy on the validation tokens, the AR model's validation NLL (nats per token), the samples' sFVD and
strict accuracy, and times. The two arms differ only in the prior's loss weight: with weight 0 the prior
still runs (the same random draws, the same compute) but nothing learns from it.

    python benchmarks/prior_ablation.py run [--tokens 64 48 32] [--seeds 0 1] [--workers 1] [--git-commit]
    python benchmarks/prior_ablation.py rerun n64-prior-s0        # the same cell again, in its own folder
    python benchmarks/prior_ablation.py probe NAME --tokens 64 --set model.config.prior_model.name=gptc-XS
    python benchmarks/prior_ablation.py report                    # markdown table + docs/images plot

Pinned: the recipe is defined here (`BASE`), not read from configs/ or the presets, and every row records the
hash of the resolved recipes (`recipe_hash`): rows of another base recipe are refused. The library code is
taken from one git commit (HEAD at the first launch), extracted under <root>/code/<commit>, so that edits in
the working tree during the hours of a run change nothing; the commit is in every row. Resumable: every cell
keeps its runs (the trainers resume from their checkpoints) and the stages it finished; a killed run
continues where it stopped. Results: benchmarks/results/prior_ablation.json (see docs/studies/prior_ablation.md)."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# siblings in this folder, which is on sys.path when the script runs
from prior_ablation_state import CellState, Results, run_stages, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "prior_ablation.json"
PLOT = REPO / "docs" / "images" / "prior_ablation.png"
CHILD_ENV = "PRIOR_ABLATION_COMMIT"  # set in the re-executed process that imports the pinned library

# ------------------------------------------------------------------------------------------- the recipe
# The demo's recipes (configs/tiny_synthetic*.yaml and the presets larp-synthetic-64, with its gptc-XXXS
# prior, and ar-synthetic, as of commit f30f836), spelled out, with fewer steps so that 12 cells fit in a few hours of a
# shared 2-core CPU. The architecture's keys are the presets' values written out in full.
TOKENIZER_MODEL: dict[str, Any] = {
    "bottleneck": {"name": "bottleneck", "args": {"bottleneck_dim": 16, "norm": "none", "regularizer": {
        "name": "vq", "args": {"codebook_size": 4096, "stochastic": True, "stochastic_temperature": 0.03,
                               "l2_normalized": True, "commitment_loss_weight": 0.25, "codebook_loss_weight": 1.0,
                               "entropy_loss_weight": 0.0, "entropy_loss_temperature": 0.01}}}},
    "prior_model": {"name": "gptc-XXXS", "args": {"l2_normalized": True}, "n_rounds": 2,
                    "no_grad_before_last_round": False, "avg_loss_over_rounds": True, "use_mix_ss": True,
                    "mix_ss_max_ratio": 0.5, "mix_ss_peak_steps_ratio": 0.3, "latent_ce_temperature": 1.0,
                    "no_dropout": False},
    "bottleneck_token_num": 64, "input_size": 64, "frame_num": 16, "temporal_patch_size": 4, "patch_size": 16,
    "decoder_temporal_patch_size": 4, "decoder_patch_size": 16, "in_channels": 3,
    "transformer_name": "transformer_encoder_parallel", "encoder_name": "none", "decoder_name": "none",
    "latent_pe_scale_factor": 0.1, "query_init_std": 0.02, "encoder_hidden_size": 128, "decoder_hidden_size": 128,
    "encoder_num_heads": 4, "decoder_num_heads": 4, "encoder_depth": 2, "decoder_depth": 2,
    "learned_encoder_patch_pe": False, "learned_encoder_latent_query_embed": True, "learned_decoder_latent_pe": False,
    "learned_decoder_patch_query_embed": False, "use_encoder_patch_token_type_embed": False,
    "use_encoder_latent_query_token_type_embed": False, "use_decoder_latent_token_type_embed": False,
    "use_decoder_patch_query_token_type_embed": True, "encoder_query_gaussian_init": True,
}
AR_MODEL: dict[str, Any] = {
    "dim": 256, "n_layer": 4, "n_head": 4, "n_kv_head": None, "multiple_of": 256, "ffn_dim_multiplier": None,
    "rope_base": 10000, "norm_eps": 1e-05, "initializer_range": 0.02, "token_dropout_p": 0.1, "attn_dropout_p": 0.0,
    "resid_dropout_p": 0.1, "ffn_dropout_p": 0.1, "drop_path_rate": 0.0, "num_classes": 10,
    "class_dropout_prob": 0.1, "model_type": "class_cond", "vocab_size": 4096, "cls_token_num": 1,
    "max_batch_size": 32, "max_seq_len": 64, "use_fixed_pe": False, "frame_prediction": False,
}
TOKENIZER_STEPS, AR_STEPS = 500, 500
BASE: dict[str, Any] = {
    "data": {"classes": 10, "clips_per_class": 128, "frames": 16, "size": 64, "seed": 0},
    "prior_weight_on": 0.06,
    "tokenizer": [
        "data.num_frames=16", "data.size=64", "data.batch_size=8", "data.num_workers=0", "data.val_clips=64",
        "data.cache_mb=512", "optim.lr=3e-4", "optim.betas=[0.9, 0.99]", "optim.warmup_steps=20",
        "optim.min_lr_ratio=0.1", "optim.grad_clip=1.0", "optim.prior_lr_mult=1.0", "optim.embed_lr_mult=0.01",
        "loss.pixel=l1", "loss.l2_weight=1.0", "loss.perceptual_weight=0", "loss.gan_weight=0",
        "loss.vq_weight=0.1", "codebook.local_linear_init=true", "codebook.init_from_encoder=true",
        "codebook.init_kmeans_iters=10", "codebook.dead_code_steps=50", "run.threads=1",
        f"run.max_steps={TOKENIZER_STEPS}", "run.log_every=10", f"run.eval_every={TOKENIZER_STEPS}",
        f"run.ckpt_every={TOKENIZER_STEPS // 4}", "run.keep_last=1", "run.best_metric=''", "run.device=cpu",
    ],
    "ar": [
        "data.num_frames=16", "data.size=64", "data.batch_size=16", "data.num_workers=0", "data.val_clips=16",
        "optim.lr=1e-3", "optim.betas=[0.9, 0.95]", "optim.weight_decay=0.05", "optim.warmup_steps=50",
        "optim.min_lr_ratio=0.1", "optim.grad_clip=1.0", "run.threads=1", f"run.max_steps={AR_STEPS}",
        "run.log_every=10", f"run.eval_every={AR_STEPS}", f"run.ckpt_every={AR_STEPS // 4}", "run.keep_last=1",
        "run.device=cpu",
    ],
    "token_cache": {"windows_per_video": 4, "flip": True, "batch_size": 16},
    "sampling": {"per_class": 20, "cfg_scale": 3.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch": 50},
}
# Keys of the resolved recipes that a cell sets; everything else must be equal in all cells of one ablation.
CELL_KEYS = {"tokenizer": ["run.seed", "run.out_dir", "data.train_csv", "data.val_csv", "loss.prior_weight",
                           "model.config.bottleneck_token_num", "model_config.bottleneck_token_num"],
             "ar": ["run.seed", "run.out_dir", "tokenizer.path", "data.token_cache", "data.val_csv",
                    "model.config.max_seq_len", "model_config.max_seq_len"]}


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


def _flatten(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flatten(f"{prefix}.{k}", v)]
    return [f"{prefix}={json.dumps(value)}"]


def cell_overrides(cell: Cell, base: dict[str, Any], folder: Path, data: dict[str, str],
                   extra: list[str] = ()) -> tuple[list[str], list[str]]:
    """The `key=value` overrides of the cell's tokenizer and AR recipes (model keys written out in full)."""
    weight = base["prior_weight_on"] if cell.prior else 0.0
    tok = (["model.preset=''"] + _flatten("model.config", TOKENIZER_MODEL) + base["tokenizer"]
           + [f"model.config.bottleneck_token_num={cell.tokens}", f"loss.prior_weight={weight}",
              f"run.seed={cell.seed}", f"data.train_csv={data['train']}", f"data.val_csv={data['val']}",
              f"run.out_dir={folder / 'tokenizer'}"] + [e for e in extra if not e.startswith("ar.")])
    ar = (["model.preset=''"] + _flatten("model.config", AR_MODEL) + base["ar"]
          + [f"model.config.max_seq_len={cell.tokens}", f"run.seed={cell.seed}",
             f"tokenizer.path={folder / 'tokenizer' / 'model'}", f"data.token_cache={folder / 'tokens'}",
             f"data.val_csv={data['val']}", f"run.out_dir={folder / 'ar'}"]
          + [e[3:] for e in extra if e.startswith("ar.")])
    return tok, ar


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.get(p, {})
    tree.pop(last, None) if isinstance(tree, dict) else None


def resolved_recipes(tok_overrides: list[str], ar_overrides: list[str]) -> dict[str, Any]:
    """Both recipes resolved by the library (defaults included) with their model configs, as plain dicts."""
    from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe
    from larp.utils.config import to_dict

    out = {}
    for name, cls, overrides in (("tokenizer", TokenizerTrainConfig, tok_overrides),
                                 ("ar", ARTrainConfig, ar_overrides)):
        recipe = load_recipe(cls, None, overrides)
        out[name] = json.loads(json.dumps({**to_dict(recipe), "model_config": to_dict(recipe.model_config())}))
    return out


def recipe_hash(recipes: dict[str, Any], base: dict[str, Any]) -> str:
    """Hash of everything a cell does not set: equal hashes mean the cells differ only in tokens, arm, seed."""
    shared = json.loads(json.dumps(recipes))
    for name, keys in CELL_KEYS.items():
        for key in keys:
            _drop(shared[name], key)
    rest = {k: v for k, v in base.items() if k not in ("tokenizer", "ar")}
    text = json.dumps({"recipes": shared, "settings": rest}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- the stages
class Evaluation:
    """The validation clips and the real clips' sFVD reference, loaded once per process."""

    def __init__(self, root: Path, data: dict[str, str], base: dict[str, Any]):
        import numpy as np
        import torch

        from larp.data.datasets import VideoCSVDataset
        from larp.eval.synthetic import SyntheticReference, clip_sfvd_features

        d = base["data"]
        val = VideoCSVDataset(data["val"], num_frames=d["frames"], size=d["size"])
        self.videos = torch.stack([val[i]["video"] for i in range(len(val))])
        self.labels = torch.tensor([val[i]["label"] for i in range(len(val))])
        ref_file = root / "reference_features.npy"
        if not ref_file.exists():  # (workers may race here: each writes its own file, the results are equal)
            tmp = ref_file.with_name(f".{os.getpid()}.{ref_file.name}")
            np.save(tmp, np.stack([clip_sfvd_features(v) for v in self.videos]))
            tmp.replace(ref_file)
        self.reference = SyntheticReference(np.load(ref_file))


def stage_train(kind: str, overrides: list[str]) -> dict[str, Any]:
    from larp.train.ar_task import ARTask
    from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe
    from larp.train.run import train
    from larp.train.tokenizer_task import TokenizerTask

    cls, task = (TokenizerTrainConfig, TokenizerTask) if kind == "tokenizer" else (ARTrainConfig, ARTask)
    recipe = load_recipe(cls, None, overrides)
    resume = (Path(recipe.run.out_dir) / "checkpoints").is_dir()
    final = train(recipe, task, resume=resume, overwrite=not resume)
    rows = [json.loads(line) for line in (Path(recipe.run.out_dir) / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if any(k.startswith("train/") for k in r)][-1]
    return {"final_eval": final, "last_train": {k: v for k, v in last.items() if k.startswith("train/")}}


def stage_recon(folder: Path, ev: Evaluation) -> dict[str, Any]:
    """Deterministic codes of every validation clip: PSNR, object metrics, the prior's CE and top-1."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from larp.eval.metrics import psnr, ssim
    from larp.eval.synthetic import ObjectScores
    from larp.models.tokenizer import LARPTokenizer

    tok = LARPTokenizer.from_pretrained(folder / "tokenizer" / "model").eval()
    scores, psnrs, ssims, codes = ObjectScores.empty(), [], [], []
    ce_sum, top1_sum, cos_sum, floor_sum, count = 0.0, 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ev.videos), 32):
            video = ev.videos[start:start + 32]
            idx = tok.encode(video, deterministic=True)
            recon = tok.decode(idx).clamp(0, 1)
            psnrs += psnr(recon, video).tolist()
            ssims += ssim(recon, video).tolist()
            scores.add(video, recon)
            codes.append(idx)
            if tok.prior_model is not None:
                logits = tok.prior_logits(idx).float()
                labels = idx[:, 1:]
                ce_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                reduction="sum"))
                top1_sum += float((logits.argmax(-1) == labels).sum())
                count += labels.numel()
                # The logits are cosines / temperature: even a prediction equal to the next code cannot
                # bring the CE below logsumexp_j(cos(code, code_j) / tau) - 1 / tau (the floor).
                vectors = tok.bottleneck.regularizer.lookup(idx)
                pred = tok.prior_predict(vectors)[:, 1:]
                cos_sum += float(F.cosine_similarity(pred, vectors[:, 1:], dim=-1).sum())
                tau = tok.config.prior_model.latent_ce_temperature
                self_logits = vectors[:, 1:] @ tok.bottleneck.regularizer.codebook.t() / tau
                floor_sum += float((self_logits.logsumexp(-1) - 1 / tau).sum())
    codes = torch.cat(codes)
    save_file({"tokens": codes.to(torch.int32).contiguous(), "labels": ev.labels.contiguous()},
              str(folder / "val_tokens.safetensors"))
    out = {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims),
           **scores.summary(ev.labels.tolist(), reference=ev.reference),
           "codes_used": int(codes.unique().numel()), "codebook_size": tok.codebook_size}
    if count:
        out.update(prior_ce=ce_sum / count, prior_top1=top1_sum / count, prior_cos=cos_sum / count,
                   prior_ce_floor=floor_sum / count, uniform_ce=math.log(tok.codebook_size))
    return out


def stage_tokens(folder: Path, data: dict[str, str], base: dict[str, Any], seed: int) -> dict[str, Any]:
    from larp.data.datasets import VideoCSVDataset
    from larp.models.tokenizer import LARPTokenizer
    from larp.train.token_cache import build_token_cache

    tok = LARPTokenizer.from_pretrained(folder / "tokenizer" / "model").eval()
    cache = folder / "tokens"
    shutil.rmtree(cache, ignore_errors=True)  # an interrupted build: start it again
    d, c = base["data"], base["token_cache"]
    ds = VideoCSVDataset(data["train"], num_frames=d["frames"], size=d["size"])
    meta = build_token_cache(tok, ds, cache, tokenizer_id=str(folder / "tokenizer" / "model"),
                             windows_per_video=c["windows_per_video"], flip=c["flip"], seed=seed,
                             batch_size=c["batch_size"])
    return {"entries": meta.num_entries}


def _cache_tokens(folder: Path) -> Any:
    import torch
    from safetensors.torch import load_file

    from larp.train.token_cache import read_cache_meta

    meta = read_cache_meta(folder / "tokens")
    return torch.cat([load_file(str(folder / "tokens" / s))["tokens"].long() for s in meta.shards])


def stage_ar_eval(folder: Path) -> dict[str, Any]:
    """The AR model's teacher-forced NLL (nats per token) on the validation clips' deterministic codes, next
    to a unigram model of the training codes (add-1/2 smoothing): how much of the codes' entropy the AR
    model removes beyond their frequencies."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from larp.models.ar import LARPAR

    val = load_file(str(folder / "val_tokens.safetensors"))
    tokens, labels = val["tokens"].long(), val["labels"].long()
    ar = LARPAR.from_pretrained(folder / "ar" / "model").eval()
    nll = []
    correct = 0
    with torch.no_grad():
        for start in range(0, len(tokens), 64):
            t, y = tokens[start:start + 64], labels[start:start + 64]
            logits = ar.logits(t, y).float()
            nll.append(F.cross_entropy(logits.transpose(1, 2), t, reduction="none"))  # (B, N)
            correct += int((logits.argmax(-1) == t).sum())
    nll = torch.cat(nll)
    train_codes = _cache_tokens(folder)
    k = ar.config.vocab_size
    freq = torch.bincount(train_codes.flatten(), minlength=k).double() + 0.5
    unigram = float(-(freq / freq.sum()).log()[tokens.flatten()].mean())
    return {"val_nll": float(nll.mean()), "val_token_acc": correct / tokens.numel(), "unigram_nll": unigram,
            "uniform_nll": math.log(k), "nll_by_position": [round(float(v), 3) for v in nll.mean(0)]}


def stage_samples(folder: Path, ev: Evaluation, base: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from larp.data.video_io import write_png_grid
    from larp.eval.synthetic import sample_metrics
    from larp.models.ar import LARPAR
    from larp.models.tokenizer import LARPTokenizer
    from larp.sample.generate import generate

    s, classes = base["sampling"], base["data"]["classes"]
    tok = LARPTokenizer.from_pretrained(folder / "tokenizer" / "model").eval()
    ar = LARPAR.from_pretrained(folder / "ar" / "model").eval()
    labels = torch.arange(classes).repeat_interleave(s["per_class"])
    g = torch.Generator().manual_seed(10_000 + seed)
    videos = []
    with torch.no_grad():
        for start in range(0, len(labels), s["batch"]):
            tokens = generate(ar, labels[start:start + s["batch"]], cfg_scale=s["cfg_scale"],
                              temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], generator=g)
            videos.append(tok.decode(tokens).clamp(0, 1))
    videos = torch.cat(videos)
    save_file({"videos": (videos * 255).round().to(torch.uint8).contiguous(), "labels": labels},
              str(folder / "samples.safetensors"))
    write_png_grid(folder / "samples.png", videos[:: s["per_class"]])
    m = sample_metrics(videos, labels, ev.reference)
    m.pop("per_class_strict")
    return m


# ---------------------------------------------------------------------------------------------- cells
def run_cell(cell: Cell, folder: Path, root: Path, base: dict[str, Any], data: dict[str, str], ev: Evaluation,
             extra: list[str] = (), until: str = "samples") -> dict[str, Any]:
    """Run (or resume) one cell in `folder`; returns its row."""
    import torch

    torch.set_num_threads(1)
    tok_o, ar_o = cell_overrides(cell, base, folder, data, list(extra))
    recipes = resolved_recipes(tok_o, ar_o)
    h = recipe_hash(recipes, base)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "recipes.json", recipes)
    state = CellState(folder, h)
    stages = [("tokenizer", lambda: stage_train("tokenizer", tok_o)), ("recon", lambda: stage_recon(folder, ev)),
              ("tokens", lambda: stage_tokens(folder, data, base, cell.seed)),
              ("ar", lambda: stage_train("ar", ar_o)), ("ar_eval", lambda: stage_ar_eval(folder)),
              ("samples", lambda: stage_samples(folder, ev, base, cell.seed))]
    stages = stages[:[n for n, _ in stages].index(until) + 1]
    done = run_stages(state, stages)
    return make_row(cell, h, done, base)


def make_row(cell: Cell, h: str, done: dict[str, dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    def pick(stage: str, keys: list[str]) -> dict[str, Any]:
        info = done.get(stage) or {}
        return {k: info[k] for k in keys if k in info}

    row = {"cell": cell.id, "tokens": cell.tokens, "prior": "on" if cell.prior else "off",
           "prior_weight": base["prior_weight_on"] if cell.prior else 0.0, "seed": cell.seed, "recipe_hash": h,
           "commit": os.environ.get(CHILD_ENV, "working-tree"),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "recon": pick("recon", ["psnr", "ssim", "object_psnr", "background_psnr", "object_iou",
                                   "strict_accuracy", "coherent_fraction", "sfvd", "codes_used"]),
           "prior_eval": pick("recon", ["prior_ce", "prior_top1", "prior_cos", "prior_ce_floor", "uniform_ce"]),
           "ar": pick("ar_eval", ["val_nll", "val_token_acc", "unigram_nll", "uniform_nll", "nll_by_position"]),
           "samples": pick("samples", ["sfvd", "strict_accuracy", "colour_accuracy", "shape_accuracy",
                                       "motion_accuracy", "coherent_fraction", "count"]),
           "train": {"tokenizer": (done.get("tokenizer") or {}).get("last_train", {}),
                     "ar": (done.get("ar") or {}).get("last_train", {})},
           "seconds": {k: v["seconds"] for k, v in done.items() if v},
           "cpu_seconds": {k: v["cpu_seconds"] for k, v in done.items() if v}}
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


def prepare_data(root: Path, base: dict[str, Any]) -> dict[str, str]:
    from larp.data.synthetic import write_synthetic_dataset

    folder, marker = root / "data", root / "data" / "done.json"
    if marker.exists() and json.loads(marker.read_text())["settings"] == base["data"]:
        return json.loads(marker.read_text())["paths"]
    if marker.exists():
        raise SystemExit(f"{folder} holds a dataset of other settings: use another --root")
    paths = write_synthetic_dataset(folder, **base["data"])
    info = {"settings": base["data"], "paths": {k: str(v) for k, v in paths.items()}}
    write_json(marker, info)
    return info["paths"]


def cells_of(args: argparse.Namespace) -> list[Cell]:
    """Seed by seed, so that a first full seed comes early; arms alternate (workers take one arm each)."""
    return [Cell(n, prior, s) for s in args.seeds for n in args.tokens for prior in (False, True)]


def command_run(args: argparse.Namespace) -> None:
    root, base = Path(args.root), BASE
    data = prepare_data(root, base)
    cells = [Cell.parse(c) for c in args.only] if args.only else cells_of(args)
    # The results file's hash: the base recipe (with --set for `run`, e.g. smoke runs into another file;
    # a probe's row records its own hash).
    extra = [] if args.kind == "probes" else args.set
    template = resolved_recipes(*cell_overrides(cells[0], base, root / "x", data, extra))
    results = Results(Path(args.results), recipe_hash(template, base), base)
    if args.workers > 1 and args.worker is None:  # one process per worker, cells dealt round-robin
        procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", str(i)])
                 for i in range(args.workers)]
        codes = [p.wait() for p in procs]
        raise SystemExit(max(codes))
    mine = cells[args.worker::args.workers] if args.worker is not None else cells
    ev = Evaluation(root, data, base)
    for cell in mine:
        name = args.name if args.kind == "probes" else cell.id
        if results.done(args.kind, name):
            continue
        folder = root / args.kind / name
        print(f"[{cell.id}] {folder}", flush=True)
        row = run_cell(cell, folder, root, base, data, ev, args.set, args.until)
        if args.kind == "probes":
            row.update(cell=args.name, overrides=args.set, of=cell.id, stages_run=args.until)
        results.add(args.kind, row, args.git_commit)
        print(f"[{cell.id}] row: {json.dumps(row)[:400]}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "rerun", "probe"):
        q = sub.add_parser(name)
        q.add_argument("cells", nargs="*" if name == "run" else "?", default=None,
                       help="run: cells to run (default: all); rerun: the cell; probe: its name")
        q.add_argument("--root", default=str(REPO / "runs" / "prior_ablation"), help="working folder")
        q.add_argument("--results", default=str(RESULTS))
        q.add_argument("--tokens", type=int, nargs="+", default=[64, 48, 32])
        q.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
        q.add_argument("--prior", choices=["on", "off"], default="on", help="probe: the arm it starts from")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="probe: tokenizer recipe overrides (ar.KEY=VALUE for the AR recipe)")
        q.add_argument("--until", default="samples",
                       choices=["tokenizer", "recon", "tokens", "ar", "ar_eval", "samples"])
        q.add_argument("--workers", type=int, default=1, help="cells run in this many processes at once")
        q.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
        q.add_argument("--commit", default=None, help="library commit to run (default: pinned, else HEAD)")
        q.add_argument("--git-commit", action="store_true", help="commit the results file after every row")
    r = sub.add_parser("report")
    r.add_argument("--results", default=str(RESULTS))
    r.add_argument("--plot", default=str(PLOT))
    r.add_argument("--no-plot", action="store_true")
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
    args.kind, args.only, args.name = {"run": "cells", "rerun": "reruns", "probe": "probes"}[args.command], [], ""
    if args.command == "run":
        args.only = args.cells or []
    elif args.command == "rerun":
        args.only = [args.cells]
    else:
        if not args.cells or not args.set:
            raise SystemExit("probe needs a name and at least one --set KEY=VALUE")
        args.name = args.cells
        args.only = [Cell(args.tokens[0], args.prior == "on", args.seeds[0]).id]
    command_run(args)


if __name__ == "__main__":
    main()
