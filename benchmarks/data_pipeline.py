"""Clips/s of the tokenizer-training DataLoader, larp's and (--reference) the reference's, as JSON.

Writes 320x240 H.264 mp4 files (one set per `--lengths`, a key frame every `--keyframe-seconds`) and times,
for each `--shapes` shape and worker count, larp's loader (`training_videos` in `Engine._loader`, what
`larp train tokenizer` builds, without the decoded-video cache) and the reference's (its `video_dataset`
from cfgs/larp_tokenizer.yaml in its trainer's DataLoader; `--reference` a checkout of
github.com/hywang66/LARP, `--reference-deps` a `pip install --target` folder with decord and easydict).
Each measurement runs in a fresh process (its own peak RSS; the files stay in the OS page cache, as after a
first epoch), interleaved and repeated, with the load average; warm-up batches are not timed. A check on
one video compares larp's clip with its whole-file decode and with decord's, and both pipelines' clips.
`--step-clips-per-s` / `--step-json` say whether the loaders keep up with a training step. docs/speed.md.

    python benchmarks/data_pipeline.py --reference <checkout> --reference-deps <deps> --out FILE.json
    python benchmarks/data_pipeline.py --quick        # larp only, 2 workers, one short run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_process import emit, parse_args, reference_on_path, spawn  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_STEP_JSON = HERE / "results" / "train_step_cpu.json"


def write_source(path: Path, frames: int, fps: int, keyframe_interval: int, seed: int) -> None:
    """A moving textured scene (drifting gratings and two moving discs) with mild noise, 320x240."""
    from larp.data.video_io import MP4Writer

    rng = np.random.default_rng(seed)
    h, w = 240, 320
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    centres = rng.uniform([40, 40], [w - 40, h - 40], size=(2, 2))
    velocities = rng.uniform(-3, 3, size=(2, 2))
    colours = rng.uniform(40, 230, size=(2, 3)).astype(np.float32)
    with MP4Writer(path, fps, crf=23, keyframe_interval=keyframe_interval) as writer:
        for t in range(frames):
            grating = 110 + 50 * np.sin((x + 2.0 * t) / 17.0) * np.cos((y - 1.3 * t) / 23.0)
            img = np.repeat(grating[..., None], 3, axis=-1)
            for c, v, col in zip(centres, velocities, colours, strict=True):
                cx = (c[0] + v[0] * t) % w
                cy = (c[1] + v[1] * t) % h
                img[(x - cx) ** 2 + (y - cy) ** 2 < 30**2] = col
            img += rng.normal(0, 4, size=img.shape).astype(np.float32)
            writer.write(np.clip(img, 0, 255).astype(np.uint8))


def parse_shape(text: str) -> tuple[int, int]:
    t, h, w = (int(v) for v in text.lower().split("x"))
    if h != w:
        raise argparse.ArgumentTypeError(f"square clips only (TxSxS), got {text}")
    return t, h


# ----------------------------------------------------------------------------------------- child process
def _load_reference(path: str, deps: str | None) -> None:
    reference_on_path(path, deps)  # (decord, easydict)
    import datasets  # noqa: F401  (the reference's package: registers video_dataset, sets decord's torch bridge)


def larp_loader(spec: dict[str, Any]) -> torch.utils.data.DataLoader:
    from larp.train.config import DataConfig
    from larp.train.data import training_videos
    from larp.train.engine import Engine, ResumableSampler

    data = DataConfig(train_csv=spec["larp_csv"], num_frames=spec["frames"], size=spec["size"],
                      batch_size=spec["batch"], num_workers=spec["workers"])
    dataset = training_videos(data, seed=0)
    # Engine._loader as `larp train` calls it, on a stand-in engine holding only what it reads (it pins
    # batches when training on CUDA, as the reference always asks to).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    engine = SimpleNamespace(task=SimpleNamespace(train_dataset=lambda: dataset),
                             ctx=SimpleNamespace(device=device), run=SimpleNamespace(seed=0))
    return Engine._loader(engine, ResumableSampler(len(dataset), seed=0), spec["batch"], spec["workers"])


def reference_dataset(spec: dict[str, Any], frames: int, size: int) -> Any:
    """The reference's training dataset: its official config's train_dataset with the $...$ placeholders
    filled as its train.py fills them (frame_num, input_size, csv_file) and root_path at our file list."""
    import yaml

    _load_reference(spec["reference"], spec.get("reference_deps"))
    import datasets

    cfg = yaml.safe_load((Path(spec["reference"]) / "cfgs" / "larp_tokenizer.yaml").read_text())["train_dataset"]
    cfg["args"].update(frame_num=frames, crop_size=size, csv_file=Path(spec["ref_csv"]).name,
                       root_path=str(Path(spec["ref_csv"]).parent))
    return datasets.make(cfg)


def reference_loader(spec: dict[str, Any]) -> torch.utils.data.DataLoader:
    dataset = reference_dataset(spec, spec["frames"], spec["size"])
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # no accelerator: pinning is skipped
    w = spec["workers"]  # BaseTrainer.make_datasets' make_distributed_loader with one GPU, no sampler
    return torch.utils.data.DataLoader(dataset, spec["batch"], drop_last=True, sampler=None, shuffle=True,
                                       num_workers=w, persistent_workers=w > 0, pin_memory=True)


def child_time(spec: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)  # as the reference's train.py (--manualSeed); larp's draws come from run.seed
    np.random.seed(0)
    loader = larp_loader(spec) if spec["impl"] == "larp" else reference_loader(spec)
    key = "video" if spec["impl"] == "larp" else "gt"
    want = (spec["batch"], 3, spec["frames"], spec["size"], spec["size"])
    it = iter(loader)
    # Each worker's first batch carries its start-up; workers decode batches one at a time, so after these
    # none is left waiting and the timed batches are made at the steady rate.
    for _ in range(max(spec["warmup"], spec["workers"])):
        next(it)
    load, t0 = os.getloadavg(), time.perf_counter()
    for _ in range(spec["batches"]):
        batch = next(it)[key]
        if tuple(batch.shape) != want or batch.dtype != torch.float32:
            raise AssertionError(f"batch {tuple(batch.shape)} {batch.dtype}, expected {want} float32")
    seconds = time.perf_counter() - t0
    out = {"clips_per_s": spec["batches"] * spec["batch"] / seconds, "seconds": seconds,
           "loadavg_before": load, "loadavg_after": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    del it, loader  # joins the workers: their peak RSS is then in RUSAGE_CHILDREN
    gc.collect()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_rss_worker_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if spec["workers"] else 0
    return out


def _mad(a: Any, b: Any) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().mean())


def child_verify(spec: dict[str, Any]) -> dict[str, Any]:
    """One video: larp's clip at a fixed start against other decodes, and both training items' layout.
    Differences are in 8-bit levels (0-255)."""
    from larp.data.transforms import ClipTransform
    from larp.data.video_io import probe_video, read_clip, read_video
    from larp.train.config import DataConfig
    from larp.train.data import training_videos

    path, frames, size = spec["path"], spec["frames"], spec["size"]
    n = probe_video(path).num_frames
    start = min(n - frames - 1, 31)  # not a key frame, not the first: the seek has to decode on to it
    clip = read_clip(path, frames, start=start)
    whole, _ = read_video(path)
    out: dict[str, Any] = {
        "video": Path(path).name, "frames_in_file": n, "start": start, "clip": f"{frames}x{size}x{size}",
        "larp_seek_read_equals_whole_decode": bool(np.array_equal(clip, whole[start:start + frames]))}
    items = {"larp": training_videos(DataConfig(train_csv=spec["larp_csv"], num_frames=frames, size=size),
                                     0).sample(0, np.random.default_rng(0))["video"]}
    if spec.get("reference"):
        items["reference"] = reference_dataset(spec, frames, size)[0]["gt"]  # puts the reference on sys.path
        import decord
        from datasets.video_dataset import VideoTransform

        vr = decord.VideoReader(path)
        out["decord_len_equals_larp_probe"] = len(vr) == n
        dec = vr.get_batch(list(range(start - 1, start + frames + 1))).numpy()
        # larp's frames against decord's at the same index and one frame off: the same index must be closest
        out["larp_vs_decord_frames_mean_abs"] = {f"offset_{k:+d}": _mad(clip, dec[1 + k:1 + k + frames])
                                                 for k in (-1, 0, 1)}
        out["larp_vs_decord_frames_max_abs"] = float(np.abs(clip.astype(int) - dec[1:1 + frames]).max())
        ref_tfm = VideoTransform(crop_size=size, eval_tfm=True)  # the train transform without its flip
        ours = ClipTransform(size, train=False)(clip)
        theirs = ref_tfm(torch.from_numpy(dec[1:1 + frames]).permute(3, 0, 1, 2).float() / 255)
        same_frames = ref_tfm(torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 255)
        out["clip_larp_vs_reference_mean_abs_255"] = 255 * _mad(ours, theirs)
        out["clip_transform_only_mean_abs_255"] = 255 * _mad(ours, same_frames)  # same frames, both resizes
        out["clip_transform_only_max_abs_255"] = 255 * float((ours - same_frames).abs().max())
    out["items"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "min": float(v.min()), "max": float(v.max())}
                    for k, v in items.items()}
    out["items_same_shape_and_dtype"] = len({(tuple(v.shape), v.dtype) for v in items.values()}) == 1
    out["items_in_0_1"] = all(0 <= float(v.min()) and float(v.max()) <= 1 for v in items.values())
    return out


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    out = child_verify(spec) if spec["task"] == "verify" else child_time(spec)
    Path(spec["result"]).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------- parent
def make_sources(tmp: Path, args: argparse.Namespace, keyint: int, rows_needed: int) -> dict[int, dict[str, str]]:
    """Per length: the videos, larp's metadata CSV and the reference's file list (rows repeated so that one
    epoch covers every timed batch: no epoch restart is timed)."""
    from larp.data.prepare import VideoRow, write_csv

    sets = {}
    for frames in args.lengths:
        paths = [tmp / f"len{frames}" / f"{i}.mp4" for i in range(args.files)]
        for i, p in enumerate(paths):
            write_source(p, frames, args.fps, keyint, seed=i)
        rows = [VideoRow(f"len{frames}_{i}", str(p), "synthetic", 0) for i, p in enumerate(paths)]
        rows *= math.ceil(rows_needed / len(rows))
        larp_csv = write_csv(tmp / f"len{frames}.csv", rows)
        # The reference's CSV format without its label column: with one, its groupby(...).apply drops the
        # grouping column under pandas >= 3 and it fails; without, it takes the `path` column as it is.
        ref_csv = tmp / f"ref_len{frames}.csv"
        ref_csv.write_text("id,path,action\n" + "".join(f"{r.id},{r.path},{r.action}\n" for r in rows))
        sets[frames] = {"larp_csv": str(larp_csv), "ref_csv": str(ref_csv), "first": str(paths[0])}
    return sets


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"runs": runs}
    rates = [r["clips_per_s"] for r in good]
    return {"clips_per_s_median": statistics.median(rates), "clips_per_s_min": min(rates),
            "clips_per_s_max": max(rates), "peak_rss_mib": max(r["peak_rss_mib"] for r in good),
            "peak_rss_worker_mib": max(r["peak_rss_worker_mib"] for r in good), "runs": runs}


def step_figures(args: argparse.Namespace) -> tuple[dict[str, float], str | None]:
    """Training-step clips/s to compare with: `--step-clips-per-s LABEL=VALUE`, and every number under a key
    holding "clips_per_s" (or "clips_per_second") in --step-json, labelled by its JSON path; and the file."""
    figures: dict[str, float] = {}
    for item in args.step_clips_per_s or []:
        label, _, value = item.rpartition("=")
        figures[label or "given"] = float(value)
    path = Path(args.step_json) if args.step_json else DEFAULT_STEP_JSON
    if path.is_file():
        def walk(node: Any, where: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if ("clips_per_s" in str(k) or "clips_per_second" in str(k)) and isinstance(v, int | float) \
                            and not isinstance(v, bool):
                        figures[f"{path.name}:{where}{k}"] = float(v)
                    walk(v, f"{where}{k}.")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{where}{i}.")
        walk(json.loads(path.read_text()), "")
        return figures, str(path)
    if args.step_json:
        raise SystemExit(f"--step-json {path} not found")
    return figures, None


def starvation(report: dict[str, Any], figures: dict[str, float]) -> dict[str, Any]:
    """Per step figure: whether each loader's median clips/s keeps up (>=). A label holding a shape
    (16x64x64=...) is compared with that shape only; others with every shape."""
    out = {}
    for label, step in figures.items():
        cells = {}
        named = re.search(r"\d+x\d+x\d+", label.lower())
        for impl, shapes in report["results"].items():
            for shape, lengths in shapes.items():
                if named and shape != named.group():
                    continue
                for length, workers in lengths.items():
                    for w, s in workers.items():
                        if "clips_per_s_median" in s:
                            m = s["clips_per_s_median"]
                            cells[f"{impl}/{shape}/{length}/{w}"] = {"keeps_up": m >= step,
                                                                     "loader_over_step": m / step}
        out[label] = {"step_clips_per_s": step, "loaders": cells}
    return out


def machine(threads: int) -> dict[str, Any]:
    import av

    return {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "torch": torch.__version__, "pyav": av.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": threads or torch.get_num_threads(), "loadavg_at_start": os.getloadavg()}


PIPELINES = {
    "larp": "PyAV seek to the key frame + decode on, rgb24 -> resize uint8 frames (shorter side, antialiased) -> "
            "centre crop -> flip (numpy Generator per item) -> float /255; SeededItems + ResumableSampler, "
            "persistent_workers=False, pin_memory on CUDA only",
    "reference": "decord VideoReader + get_batch -> float /255 at full size -> torchvision Resize (antialiased) + "
                 "CenterCrop + RandomHorizontalFlip; shuffle, persistent_workers, pin_memory=True (a no-op "
                 "without an accelerator); a file list without its label column (see make_sources)",
}


def measure(args: argparse.Namespace, tmp: Path, shapes: list[str], workers: list[int],
            steps: tuple[dict[str, float], str | None]) -> dict[str, Any]:
    batch_sizes = dict(zip(shapes, (int(b) for b in args.batch_sizes.split(",")), strict=False))
    impls = ["larp", "reference"] if args.reference else ["larp"]
    keyint = max(1, round(args.keyframe_seconds * args.fps))
    t_start = time.perf_counter()
    rows_needed = (max(args.warmup, *workers) + args.batches + 2) * max(batch_sizes.values())
    sources = make_sources(tmp, args, keyint, rows_needed)
    common = {"threads": args.threads, "reference": args.reference, "reference_deps": args.reference_deps}
    settings = {"shapes": shapes, "batch_size": batch_sizes, "workers": workers,
                "warmup_batches": f"max({args.warmup}, workers)", "timed_batches": args.batches,
                "repeat": args.repeat, "source_frames": args.lengths, "files_per_length": args.files,
                "threads": args.threads or "torch default",
                "source": {"size": "320x240", "codec": "H.264 yuv420p crf 23", "fps": args.fps,
                           "keyframe_interval": keyint}}
    report: dict[str, Any] = {
        "benchmark": "tokenizer-training data pipeline: random clips/s through a DataLoader",
        "command": " ".join(["python", _in_repo(sys.argv[0]), *sys.argv[1:]]), "machine": machine(args.threads),
        "settings": settings, "pipelines": {k: PIPELINES[k] for k in impls}}
    cells = [(n, shape, w) for n in args.lengths for shape in shapes for w in workers]
    runs: dict[tuple, list] = {(impl, *c): [] for c in cells for impl in impls}
    for r in range(args.repeat):  # interleaved, so that a burst of load hits every cell alike
        for (impl, n, shape, w), done in runs.items():
            frames, size = parse_shape(shape)
            spec = {**common, **sources[n], "task": "time", "impl": impl, "frames": frames, "size": size,
                    "batch": batch_sizes[shape], "workers": w, "warmup": args.warmup, "batches": args.batches}
            done.append(spawn(__file__, spec, tmp, args.timeout))
            print(f"repeat {r} len{n} {shape} workers{w} {impl}: "
                  f"{done[-1].get('clips_per_s', done[-1].get('error'))}", file=sys.stderr)
    results: dict[str, Any] = {}
    for (impl, n, shape, w), done in runs.items():
        results.setdefault(impl, {}).setdefault(shape, {}).setdefault(f"len{n}", {})[f"workers{w}"] = summary(done)
    report["results"] = results
    if args.reference:  # median over median, and per repeat (the pair ran back to back, under the same load)
        report["larp_over_reference_clips_per_s"] = {
            f"{shape}/len{n}/workers{w}": {
                "median": a["clips_per_s_median"] / b["clips_per_s_median"],
                "paired": [x["clips_per_s"] / y["clips_per_s"] for x, y in zip(a["runs"], b["runs"], strict=True)
                           if "error" not in x and "error" not in y]}
            for n, shape, w in cells
            for a, b in [(results["larp"][shape][f"len{n}"][f"workers{w}"],
                          results["reference"][shape][f"len{n}"][f"workers{w}"])]
            if "clips_per_s_median" in a and "clips_per_s_median" in b}
    frames, size = parse_shape(shapes[0])
    first = sources[args.lengths[0]]
    verify = {**common, **first, "task": "verify", "path": first["first"], "frames": frames, "size": size}
    report["verify"] = spawn(__file__, verify, tmp, args.timeout)
    figures, step_file = steps
    report["step_comparison"] = {"step_json": step_file and _in_repo(step_file), "note": (
        "loader clips/s measured alone: where the step runs on the same CPU cores (no GPU) the two share them, "
        "so keeping up here is necessary, not sufficient") if figures else
        "no training-step clips/s given (--step-clips-per-s) or found (--step-json)", **starvation(report, figures)}
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["wall_seconds"] = time.perf_counter() - t_start
    return report


def _in_repo(path: str) -> str:
    """A path as the repository names it (no folder of this machine in the report)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="a checkout of the reference implementation: time its loader too")
    ap.add_argument("--reference-deps", help="a folder of extra packages the reference imports (decord, easydict)")
    ap.add_argument("--shapes", default="16x128x128,16x64x64", help="clip shapes TxSxS (the L recipe's, the demo's)")
    ap.add_argument("--batch-sizes", default="4,8", help="batch size per shape, in order")
    ap.add_argument("--workers", default="0,1,2", help="DataLoader worker counts")
    ap.add_argument("--lengths", default="175", help="frames of the source files, one file set each (175 at 25 "
                                                     "fps: 7 s, UCF-101's mean; 48,750 shows seeking)")
    ap.add_argument("--files", type=int, default=4, help="source files per length")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--keyframe-seconds", type=float, default=2.0)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first (at least one per worker)")
    ap.add_argument("--repeat", type=int, default=3, help="fresh-process repeats of every cell")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the loading process (0: torch's)")
    ap.add_argument("--step-clips-per-s", action="append", metavar="[LABEL=]VALUE",
                    help="a training step's clips/s to compare the loaders with (a LABEL holding a "
                         "shape, 16x64x64=28: with that shape only)")
    ap.add_argument("--step-json", help=f"the train-step benchmark's JSON (default: {DEFAULT_STEP_JSON} if present)")
    ap.add_argument("--quick", action="store_true", help="larp only, 2 workers, the first shape, 6 batches, once")
    args = parse_args(ap, child_main, timeout=900)
    if args is None:  # a child process: it has measured
        return
    shapes = [s.strip().lower() for s in args.shapes.split(",")]
    if len(args.batch_sizes.split(",")) != len(shapes):
        ap.error("--batch-sizes needs one batch size per shape of --shapes")
    workers = [int(w) for w in args.workers.split(",")]
    args.lengths = [int(n) for n in args.lengths.split(",")]
    steps = step_figures(args)  # before the runs: a missing file or a bad value fails now
    if args.quick:
        args.reference, shapes, workers, args.batches, args.repeat = None, shapes[:1], [2], 6, 1
    with tempfile.TemporaryDirectory(prefix="larp_data_bench_") as folder:
        report = measure(args, Path(folder), shapes, workers, steps)
    emit(report, args.out)


if __name__ == "__main__":
    main()
