"""Sampling jobs (`larp sample`): class-conditional or frame-prediction videos, sharded, with FVD.

A job makes `num_samples_total` samples; each run makes one shard [starting_index, starting_index +
num_samples) of it. Sample i follows real clip i of the job: the clips are non-overlapping T-frame chunks
of the dataset CSV's videos drawn with `random.Random(dataset_split_seed)` (the paper's gFVD protocol,
`larp.eval.protocols.ucf_gfvd_chunks`). The clip gives the sample's class label (class-conditional) or its
context frames (frame prediction), and is the real sample of the FVD.

Reproducibility: batches lie on a grid over the whole job, [k*B, (k+1)*B), and batch k samples with a
generator seeded from (seed, k*B). A shard starting inside a grid batch computes that whole batch and keeps
its own rows, so every sample comes out of the same computation however the job is sharded. The batch
size is therefore part of the job, like the seed and the sampling settings.

output_dir/
  job.json                 the job's settings; every shard must match them
  clips.json               the real clips (cache of the chunk index)
  samples/{i:06d}_class{label}.mp4
  overview/shard_{s}_{e}.gif, .png   the shard's first samples (frame prediction: real above generated)
  tokens/shard_{s}_{e}.npz  index, label, cond, tokens of the shard
  stats/shard_{s}_{e}_{real|fake}.npz, then stats/shard_{s}_{e}.done.json (written last)
  fvd.lock, fvd.json, stats/real.npz, stats/fake.npz, fvd_report.csv   once all shards are done
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from larp.data.datasets import read_video_csv
from larp.data.manifest import verify_manifest
from larp.data.video_io import write_gif, write_mp4, write_png_grid
from larp.eval import fvd as fvd_lib
from larp.eval.protocols import Chunk, ChunkDataset, ucf_gfvd_chunks
from larp.models.ar import LARPAR
from larp.models.tokenizer import LARPTokenizer
from larp.sample.condition import check_pair, frame_prediction_condition
from larp.sample.defaults import DEFAULT_CFG_SCALE, DEFAULT_COND_FRAMES
from larp.sample.generate import check_sampling_args, generate
from larp.sample.shards import (
    LOCK_STALE_SECONDS,
    MergeLock,
    ShardRecord,
    batch_seed,
    check_coverage,
    create_exclusive,
    finished_shards,
    grid_batches,
    shard_paths,
)
from larp.utils.device import autocast, resolve_device, resolve_dtype
from larp.utils.files import atomic_write_bytes, write_json
from larp.utils.outputs import Manifest

FPS = 25  # the reference release writes its samples at 25 fps (UCF-101's and Kinetics' native rate)
FP_FVD_SIZE = 64  # frame prediction protocol: prediction and ground truth go to 64x64 before the detector
OVERVIEW_SAMPLES = 8
REPORT_COLUMNS = ("finished", "ar_model", "tokenizer", "num_samples", "fp", "num_cond_frames", "cfg_scale",
                  "cfg_interval", "temperature", "top_k", "top_p", "dtype", "seed", "dataset_csv",
                  "dataset_split_seed", "nll_sampled", "fvd")


@dataclass
class SampleConfig:
    """The options of `larp sample` (the reference `sample.py` names)."""

    ar_model: str
    tokenizer: str
    output_dir: str
    dataset_csv: str
    num_samples: int = 1024
    sample_batch_size: int = 32
    cfg_scale: float | None = None  # None: 1.25 (the UCF-101 protocol's guidance), 1 with fp (no guidance)
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    dtype: str | None = None  # None: bfloat16 on CUDA (the reference's choice), float32 elsewhere
    dataset_split_seed: int = 42
    fp: bool = False
    num_cond_frames: int | None = None  # None: 5 with fp (the released setup)
    num_samples_total: int | None = None  # None: this run is the whole job
    starting_index: int = 0
    seed: int = 0
    device: str = "auto"
    i3d_path: str | None = None
    no_fvd: bool = False
    manifest: str | None = None  # a `larp data check` manifest that must list the CSV's files
    overwrite: bool = False  # replace a job with other settings in output_dir (a job with these settings resumes)

    def __post_init__(self) -> None:
        # The same defaults as `larp generate`; the job records the resolved values.
        if self.cfg_scale is None:
            self.cfg_scale = 1.0 if self.fp else DEFAULT_CFG_SCALE
        if self.fp and self.num_cond_frames is None:
            self.num_cond_frames = DEFAULT_COND_FRAMES

    @property
    def total(self) -> int:
        return self.num_samples if self.num_samples_total is None else self.num_samples_total

    @property
    def shard(self) -> tuple[int, int]:
        return self.starting_index, self.starting_index + self.num_samples


@dataclass
class SamplePlan:
    """Everything a shard needs, checked: models, clips, detector, the resolved job."""

    cfg: SampleConfig
    out: Path
    device: torch.device
    dtype: torch.dtype
    tokenizer: LARPTokenizer
    ar: LARPAR
    clips: list[Chunk]
    extractor: fvd_lib.I3DFeatureExtractor | None
    job: dict[str, Any]
    done: bool  # this shard finished in an earlier run


# ------------------------------------------------------------------------------------------ small helpers
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_id(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


# ------------------------------------------------------------------------------------------ checks
def check_numbers(cfg: SampleConfig) -> None:
    """Sample counts, shard bounds and sampling settings; raises ValueError naming the option."""
    start, end = cfg.shard
    if cfg.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {cfg.num_samples}")
    if cfg.starting_index < 0:
        raise ValueError(f"--starting_index must be >= 0, got {cfg.starting_index}")
    if end > cfg.total:
        raise ValueError(f"this shard [{start}, {end}) (--starting_index {start} + --num_samples "
                         f"{cfg.num_samples}) is not covered by --num_samples_total {cfg.total}: the job's "
                         f"samples are [0, {cfg.total})")
    if cfg.sample_batch_size < 1:
        raise ValueError(f"--sample_batch_size must be >= 1, got {cfg.sample_batch_size}")
    if cfg.seed < 0 or cfg.dataset_split_seed < 0:
        raise ValueError(f"seeds must be >= 0, got --seed {cfg.seed}, --dataset_split_seed "
                         f"{cfg.dataset_split_seed}")
    if cfg.cfg_scale < 0 or cfg.temperature < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise ValueError(f"expected --cfg_scale >= 0, --temperature >= 0, --top_k >= 0 and 0 < --top_p <= 1, "
                         f"got {cfg.cfg_scale}, {cfg.temperature}, {cfg.top_k}, {cfg.top_p}")
    check_sampling_args(cfg.cfg_scale, cfg.temperature, cfg.top_k, cfg.top_p)  # NaN, infinity, overflow
    if not cfg.no_fvd and cfg.total < 2:
        raise ValueError(f"FVD needs at least 2 samples, the job has {cfg.total}; pass --no_fvd to skip it")
    if cfg.fp:
        if cfg.cfg_scale != 1.0:
            raise ValueError(f"frame prediction has no classifier-free guidance: --cfg_scale must be 1, "
                             f"got {cfg.cfg_scale}")
    elif cfg.num_cond_frames is not None:
        raise ValueError("--num_cond_frames is for frame prediction; add --fp or leave it out")


def check_models_fit(tokenizer: LARPTokenizer, ar: LARPAR, cfg: SampleConfig) -> None:
    """The AR model must predict this tokenizer's codes, as many as it makes, in the asked mode."""
    check_pair(tokenizer, ar, f"(AR model {cfg.ar_model}, tokenizer {cfg.tokenizer})")
    a = ar.config
    if a.frame_prediction and not cfg.fp:
        raise ValueError(f"{cfg.ar_model} is a frame-prediction model; pass --fp")
    if cfg.fp and not a.frame_prediction:
        raise ValueError(f"--fp needs a frame-prediction AR model, but {cfg.ar_model} is class-conditional")
    frames = tokenizer.video_shape[1]
    if cfg.fp and not 1 <= cfg.num_cond_frames < frames:
        raise ValueError(f"--num_cond_frames must be in [1, {frames - 1}] for this {frames}-frame tokenizer, "
                         f"got {cfg.num_cond_frames}")
    if not cfg.fp and cfg.cfg_scale != 1.0 and not a.has_null_class:
        raise ValueError(f"--cfg_scale {cfg.cfg_scale} needs a model trained with a null class "
                         f"(class_dropout_prob > 0); {cfg.ar_model} has none, use --cfg_scale 1")


def _check_autocast_works(ar: LARPAR, cond: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
    """Autocast support differs between devices and torch builds: try one token before the real work."""
    if dtype == torch.float32:
        return
    try:
        with autocast(device, dtype):
            generate(ar, cond[:1], num_tokens=1)
    except RuntimeError as exc:
        raise ValueError(f"--dtype {str(dtype).removeprefix('torch.')} does not work on {device} with torch "
                         f"{torch.__version__} ({exc}); use --dtype float32") from exc


# ------------------------------------------------------------------------------------------ plan
def _load_clips(cfg: SampleConfig, out: Path, csv_path: Path, csv_sha: str, frames: int) -> list[Chunk]:
    """The job's real clips, from `clips.json` when it was made for this CSV and these settings."""
    key = {"dataset_csv_sha256": csv_sha, "dataset_split_seed": cfg.dataset_split_seed,
           "num_samples_total": cfg.total, "chunk_frames": frames}
    cache = out / "clips.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return [Chunk(**c) for c in data["clips"]]
    try:
        clips = ucf_gfvd_chunks(csv_path, cfg.total, seed=cfg.dataset_split_seed, chunk_frames=frames)
    except ValueError as exc:
        raise ValueError(f"{csv_path}: {exc} (--num_samples_total {cfg.total})") from exc
    write_json(cache, {"key": key, "clips": [asdict(c) for c in clips]})
    return clips


def _job_record(cfg: SampleConfig, csv_path: Path, csv_sha: str, dtype: torch.dtype,
                manifest_sha: str | None = None) -> dict[str, Any]:
    """The settings that decide the samples; all shards of a job must agree on them."""
    return {"ar_model": _model_id(cfg.ar_model), "tokenizer": _model_id(cfg.tokenizer),
            "num_samples_total": cfg.total, "sample_batch_size": cfg.sample_batch_size,
            "cfg_scale": cfg.cfg_scale, "cfg_interval": cfg.cfg_interval, "temperature": cfg.temperature,
            "top_k": cfg.top_k, "top_p": cfg.top_p, "dtype": str(dtype).removeprefix("torch."),
            "dataset_csv": str(csv_path.resolve()), "dataset_csv_sha256": csv_sha,
            "dataset_manifest_sha256": manifest_sha,
            "dataset_split_seed": cfg.dataset_split_seed, "fp": cfg.fp, "num_cond_frames": cfg.num_cond_frames,
            "seed": cfg.seed, "compute_fvd": not cfg.no_fvd}


def _job_diff(out: Path, job: dict[str, Any]) -> list[str]:
    path = out / "job.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    return [f"{k}: {old.get(k)!r} there, {job[k]!r} here" for k in job if old.get(k) != job[k]]


def _check_job(out: Path, job: dict[str, Any]) -> None:
    diff = _job_diff(out, job)
    if diff:
        raise ValueError(f"{out} holds a sampling job with other settings ({'; '.join(diff)}); its shards "
                         "cannot be merged with this run's. Use another --output_dir, the same settings, or "
                         "--overwrite to replace it")


# What a job writes in its folder besides its samples (other files there are left alone). Its samples are
# listed in the folder's manifest (larp.utils.outputs) as they are written.
JOB_FILES = ("job.json", "clips.json", "fvd.json", "fvd.lock", "tokens/shard_*.npz", "stats/*.npz",
             "stats/shard_*.done.json", "overview/shard_*.gif", "overview/shard_*.png")
_SAMPLE_NAME = re.compile(r"\d{6}_class\d+\.mp4")


def clear_job(out: Path) -> None:
    """Remove what an earlier job wrote in `out` (fvd_report.csv, a log of results, stays), never a file
    of the user's: samples are removed as the manifest lists them (a folder from before manifests: the
    exact names a job gives its samples)."""
    manifest = Manifest(out)
    if manifest.entries():
        manifest.clear()
    elif (out / "samples").is_dir():
        for path in (out / "samples").iterdir():
            if _SAMPLE_NAME.fullmatch(path.name) and path.is_file():
                path.unlink()
    for pattern in JOB_FILES:
        for path in out.glob(pattern):
            path.unlink()
    for sub in ("samples", "tokens", "stats", "overview"):
        if (out / sub).is_dir() and not any((out / sub).iterdir()):
            (out / sub).rmdir()


def prepare(cfg: SampleConfig) -> SamplePlan:
    """Every check of a shard, before any sample is made: numbers, models, dataset, job folder, detector."""
    check_numbers(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, allowed=("float32", "bfloat16"))
    csv_path = Path(cfg.dataset_csv)
    if not csv_path.is_file():
        raise FileNotFoundError(f"--dataset_csv {csv_path} does not exist")
    manifest_sha = None
    if cfg.manifest is not None:
        manifest_sha = verify_manifest(cfg.manifest, read_video_csv(csv_path), csv_path)["sha256"]
    tokenizer = LARPTokenizer.from_pretrained(cfg.tokenizer, map_location=device).eval()
    ar = LARPAR.from_pretrained(cfg.ar_model, map_location=device).eval()
    check_models_fit(tokenizer, ar, cfg)
    out = Path(cfg.output_dir)
    csv_sha = _sha256(csv_path)
    job = _job_record(cfg, csv_path, csv_sha, dtype, manifest_sha)
    if cfg.overwrite and _job_diff(out, job):
        clear_job(out)
    _check_job(out, job)

    start, end = cfg.shard
    finished = finished_shards(out)
    for s in finished:
        if s.start < end and start < s.end and (s.start, s.end) != (start, end):
            raise ValueError(f"this shard [{start}, {end}) overlaps the finished shard [{s.start}, {s.end}) in "
                             f"{out}; shards of one job must not overlap")
    done = any((s.start, s.end) == (start, end) for s in finished)

    extractor = None
    if not cfg.no_fvd:
        extractor = fvd_lib.I3DFeatureExtractor(fvd_lib.load_detector(cfg.i3d_path, device),
                                                cfg.sample_batch_size)
    frames = tokenizer.video_shape[1]
    clips = _load_clips(cfg, out, csv_path, csv_sha, frames)
    if not cfg.fp:
        # every row, not only the drawn clips: other labels mean a model of another dataset
        bad = sorted({r.label for r in read_video_csv(csv_path) if not 0 <= r.label < ar.config.num_classes})
        if bad:
            raise ValueError(f"{csv_path} gives class labels {bad[:10]} but {cfg.ar_model} knows "
                             f"{ar.config.num_classes} classes (0..{ar.config.num_classes - 1})")
        _check_autocast_works(ar, torch.tensor([clips[0].label], device=device), device, dtype)
    else:
        cond = torch.zeros(1, ar.cond_length, dtype=torch.long, device=device)
        cond[:, -1] = ar.config.separator_id
        _check_autocast_works(ar, cond, device, dtype)
    if not create_exclusive(out / "job.json", job):
        _check_job(out, job)  # a parallel shard may have written it since the first check
    return SamplePlan(cfg, out, device, dtype, tokenizer, ar, clips, extractor, job, done)


# ------------------------------------------------------------------------------------------ one shard
def _resize(video: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, 3, T, size, size), bilinear with antialiasing, frame by frame."""
    t = video.shape[2]
    frames = F.interpolate(rearrange(video, "b c t h w -> (b t) c h w"), size=(size, size), mode="bilinear",
                           antialias=True, align_corners=False)
    return rearrange(frames, "(b t) c h w -> b c t h w", t=t)


def _fvd_view(plan: SamplePlan, video: torch.Tensor) -> torch.Tensor:
    # Clamped, then resized, in the reference's order (a resize of unclamped values would differ at the edges).
    return _resize(video.clamp(0, 1), FP_FVD_SIZE) if plan.cfg.fp else video


@torch.no_grad()
def run_shard(plan: SamplePlan, progress: bool = True) -> ShardRecord:
    """Sample, decode, write and measure one shard; its marker is written last."""
    cfg, out, device = plan.cfg, plan.out, plan.device
    start, end = cfg.shard
    paths = shard_paths(out, start, end)
    frames, size = plan.tokenizer.video_shape[1], plan.tokenizer.video_shape[2]
    real_clips = ChunkDataset(plan.clips, num_frames=frames, size=size)
    stats: dict[str, fvd_lib.FeatureStats] = {}  # sized by the detector's first output (I3D: 400)
    kept: dict[str, list[torch.Tensor]] = {"index": [], "label": [], "cond": [], "tokens": []}
    overview: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    nll_sum = 0.0
    manifest = Manifest(out)
    batches = grid_batches(start, end, cfg.total, cfg.sample_batch_size)
    for b0, b1 in tqdm(batches, desc=f"sampling [{start}, {end})", unit="batch", disable=not progress):
        k0, k1 = max(b0, start), min(b1, end)  # rows of this shard within the grid batch
        labels = torch.tensor([c.label for c in plan.clips[b0:b1]], device=device)
        need_real = range(b0, b1) if cfg.fp else (range(k0, k1) if plan.extractor else range(0))
        real = {i: real_clips[i]["video"] for i in need_real}
        if cfg.fp:
            context = torch.stack([real[i] for i in range(b0, b1)]).to(device)[:, :, :cfg.num_cond_frames]
            cond = frame_prediction_condition(plan.tokenizer, context)
        else:
            cond = labels
        generator = torch.Generator(device).manual_seed(batch_seed(cfg.seed, b0))
        with autocast(device, plan.dtype):
            tokens = generate(plan.ar, cond, cfg_scale=cfg.cfg_scale, cfg_interval=cfg.cfg_interval,
                              temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                              generator=generator)
            logits = plan.ar.logits(tokens, cond)
        nll = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none").mean(1)
        videos = plan.tokenizer.decode(tokens).float().clamp(0, 1)  # whole batch: same numerics in any shard
        rows = slice(k0 - b0, k1 - b0)
        videos, nll_sum = videos[rows], nll_sum + float(nll[rows].sum())
        for name, value in (("index", torch.arange(k0, k1)), ("label", labels[rows]), ("cond", cond[rows]),
                            ("tokens", tokens[rows])):
            kept[name].append(value.cpu())
        names = [out / "samples" / f"{i:06d}_class{plan.clips[i].label}.mp4" for i in range(k0, k1)]
        manifest.record(*names)  # before writing: an interrupted shard's files are listed too
        for j, i in enumerate(range(k0, k1)):
            write_mp4(names[j], videos[j], fps=FPS)
            if len(overview) < OVERVIEW_SAMPLES:
                overview.append((videos[j].cpu(), real[i].cpu() if cfg.fp else None))
        if plan.extractor is not None:
            for name, batch in (("fake", videos), ("real", torch.stack([real[i] for i in range(k0, k1)]))):
                features = plan.extractor(_fvd_view(plan, batch))
                if name not in stats:
                    stats[name] = fvd_lib.FeatureStats(dim=features.shape[1])
                stats[name].add(features)

    _write_overview(overview, paths["gif"], paths["png"])
    arrays = {name: torch.cat(v).numpy() for name, v in kept.items()}
    paths["tokens"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths["tokens"], lambda tmp: _save_npz(tmp, arrays))
    if plan.extractor is not None:
        stats["real"].save(paths["real"])
        stats["fake"].save(paths["fake"])
    record = ShardRecord(start, end, nll_sum)
    write_json(paths["marker"], {**asdict(record), "finished": datetime.now(timezone.utc).isoformat()})
    return record


def _save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a temp name
        np.savez(f, **arrays)


def _write_overview(items: list[tuple[torch.Tensor, torch.Tensor | None]], gif: Path, png: Path) -> None:
    fake = torch.stack([f for f, _ in items])
    if items[0][1] is None:
        write_gif(gif, fake, fps=FPS)
        write_png_grid(png, fake)
        return
    real = torch.stack([r for _, r in items])
    write_gif(gif, torch.cat([real, fake], dim=3), fps=FPS)  # real clip above its prediction
    write_png_grid(png, rearrange(torch.stack([real, fake], 1), "b two c t h w -> (b two) c t h w"))


# ------------------------------------------------------------------------------------------ merge
def merge_if_complete(out: str | os.PathLike, job: dict[str, Any] | None = None,
                      stale_after: float = LOCK_STALE_SECONDS) -> tuple[str, dict[str, Any] | None]:
    """When the finished shards cover the job, merge their statistics (sums) and report the FVD once.

    `job` defaults to the folder's job.json. Returns (status, the fvd.json record if this call wrote it)."""
    out = Path(out)
    if job is None:
        job = json.loads((out / "job.json").read_text())
    total = job["num_samples_total"]
    shards = finished_shards(out)
    covered = check_coverage(shards, total)
    if covered < total:
        return f"waiting for other shards: {covered} of {total} samples finished", None
    if not job["compute_fvd"]:
        return "all shards finished (no FVD: --no_fvd)", None
    if (out / "fvd.json").is_file():
        return "already merged (fvd.json exists)", None
    lock = MergeLock(out / "fvd.lock", stale_after)
    with lock:
        if not lock.held:
            return f"another process is merging (lock {lock.path}, owner {lock.owner or 'unknown'})", None
        if (out / "fvd.json").is_file():
            return "already merged (fvd.json exists)", None
        merged: dict[str, fvd_lib.FeatureStats] = {}
        for s in shards:
            for name in ("real", "fake"):
                part = fvd_lib.FeatureStats.load(shard_paths(out, s.start, s.end)[name])
                merged[name] = merged[name].merge(part) if name in merged else part
        for name, stats in merged.items():
            if stats.count != total:
                raise ValueError(f"the {name} statistics of the shards hold {stats.count} clips; the job has "
                                 f"{total} samples")
            stats.save(out / "stats" / f"{name}.npz")
        record = {**job, "fvd": fvd_lib.fvd(merged["real"], merged["fake"]),
                  "nll_sampled": sum(s.nll_sum for s in shards) / total,
                  "shards": [[s.start, s.end] for s in shards],
                  "finished": datetime.now(timezone.utc).isoformat()}
        if not create_exclusive(out / "fvd.json", record):
            return "already merged (fvd.json exists)", None
        append_report_row(out / "fvd_report.csv", record)
    return f"merged {len(shards)} shard(s): FVD {record['fvd']:.4f}", record


def append_report_row(path: Path, record: dict[str, Any]) -> None:
    """Append one row (header first in a new file) to the CSV report."""
    row = {k: record[k] if k != "num_samples" else record["num_samples_total"] for k in REPORT_COLUMNS}
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def run_sample_job(cfg: SampleConfig, progress: bool = True) -> dict[str, Any]:
    """Check everything, make this shard (unless finished before), then merge if the job is complete."""
    plan = prepare(cfg)
    start, end = cfg.shard
    if plan.done:
        shard_status = f"shard [{start}, {end}) finished in an earlier run; skipped"
    else:
        began = time.time()
        run_shard(plan, progress)
        shard_status = f"shard [{start}, {end}): {end - start} samples in {time.time() - began:.1f} s"
    merge_status, record = merge_if_complete(plan.out, plan.job)
    return {"shard": shard_status, "merge": merge_status, "fvd": record["fvd"] if record else None,
            "output_dir": str(plan.out)}
