"""Throughput of the training data pipeline, printed as JSON.

Writes 320x240 H.264 mp4 files to a temporary folder (short and long ones, a key frame every
`--keyframe-seconds`, as in camera and YouTube files), then times a DataLoader over a training
`VideoCSVDataset` (random 16-frame clips, resize + centre crop to 128, random flip). Clip reading seeks
to the key frame before each clip, so clips/second should not fall with the length of the files.

    .venv/bin/python benchmarks/data_pipeline.py [--batches 30 --workers 2 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from larp.data.datasets import VideoCSVDataset
from larp.data.prepare import VideoRow, write_csv
from larp.data.video_io import MP4Writer


def write_source(path: Path, frames: int, fps: int, keyframe_interval: int, seed: int) -> None:
    """A moving textured scene (drifting gratings and two moving discs) with mild noise, 320x240."""
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


def measure(csv_path: Path, args: argparse.Namespace) -> float:
    dataset = VideoCSVDataset(csv_path, num_frames=16, size=128, train=True, seed=0)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    clips, elapsed = 0, 0.0
    batches = 0
    while batches < args.warmup + args.batches:
        start = time.perf_counter()
        for batch in loader:
            assert batch["video"].shape[1:] == (3, 16, 128, 128)
            batches += 1
            if batches > args.warmup:
                clips += batch["video"].shape[0]
                elapsed += time.perf_counter() - start
            if batches >= args.warmup + args.batches:
                break
            start = time.perf_counter()
    return clips / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short-frames", type=int, default=48, help="frames of each short source file")
    parser.add_argument("--long-frames", type=int, default=750, help="frames of each long source file")
    parser.add_argument("--files", type=int, default=4, help="source files of each length")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--keyframe-seconds", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="timed batches per length")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches (worker start-up)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    keyint = max(1, round(args.keyframe_seconds * args.fps))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="larp_data_bench_") as tmp:
        for name, frames in (("short", args.short_frames), ("long", args.long_frames)):
            rows = []
            for i in range(args.files):
                path = Path(tmp) / name / f"{i}.mp4"
                write_source(path, frames, args.fps, keyint, seed=i)
                rows.append(VideoRow(f"{name}{i}", str(path), name, 0))
            csv_path = write_csv(Path(tmp) / f"{name}.csv", rows)
            # Repeat the rows so that an epoch covers the timed batches without restarting workers.
            repeat = math.ceil((args.warmup + args.batches) * args.batch_size / len(rows)) + 1
            write_csv(csv_path, rows * repeat)
            results[name] = {
                "source_frames": frames,
                "source_seconds": frames / args.fps,
                "clips_per_second": round(measure(csv_path, args), 2),
            }
    report = {
        "benchmark": "training data pipeline (VideoCSVDataset train=True + DataLoader)",
        "clip": {"frames": 16, "height": 128, "width": 128, "random_flip": True},
        "source": {
            "size": "320x240",
            "codec": "H.264 yuv420p crf 23",
            "fps": args.fps,
            "keyframe_interval": keyint,
        },
        "dataloader": {"workers": args.workers, "batch_size": args.batch_size, "timed_batches": args.batches},
        "short": results["short"],
        "long": results["long"],
        "long_over_short": round(
            results["long"]["clips_per_second"] / results["short"]["clips_per_second"], 3
        ),
        "host": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
