"""Seconds per request of the `larp app` page at the demo's sizes; prints one JSON document.

    python benchmarks/app_requests.py                # one torch thread
    python benchmarks/app_requests.py --threads 2

The models are the demo's presets (the larp-synthetic-64-clip tokenizer, the ar-synthetic generator over its
8,192 codes) with random weights, sampled with the demo's guidance and temperature: the work per request does
not depend on the weights. Each figure is the fastest of a few runs of
`larp.app.core` (what the page calls), files written included; `load1` is the machine's load when it started."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
from larp.app import core
from larp.data.synthetic import synthetic_clip
from larp.data.video_io import write_mp4
from larp.demo.pipeline import DemoConfig


def fastest(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "load1": round(os.getloadavg()[0], 2), "torch": torch.__version__}
    tok = LARPTokenizer(tokenizer_preset("larp-synthetic-64-clip")).eval()
    ar = LARPAR(dataclasses.replace(ar_preset("ar-synthetic"), vocab_size=tok.codebook_size)).eval()
    names, synthetic = core.class_names(ar.config.num_classes, "synthetic")
    demo = DemoConfig()
    models = core.AppModels(tok, "larp-synthetic-64-clip", ar=ar, class_names=names, synthetic=synthetic,
                            sampling=core.SamplingSettings(demo.cfg_scale, demo.temperature))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        demo_clip = core.demo_clips(models, out / "examples")[0]  # 32 frames of 64x64
        rng = np.random.default_rng(0)
        # 128 frames of 320x240 at 25 fps: a 5-second upload, the page's default frame limit.
        frames = np.concatenate([synthetic_clip(k, rng, frames=16, size=320)[:, 40:280] for k in range(8)])
        upload = write_mp4(out / "upload.mp4", frames, fps=25)
        runs = {
            "reconstruct_demo_clip_32x64x64": lambda: core.reconstruct(models, demo_clip, out / "r"),
            "reconstruct_128x240x320": lambda: core.reconstruct(models, upload, out / "r"),
            "reconstruct_128x240x320_tiled": lambda: core.reconstruct(models, upload, out / "r", tile=True),
            "generate_1_sample": lambda: core.generate_clips(models, 0, out / "g", num_samples=1),
            "generate_4_samples": lambda: core.generate_clips(models, 0, out / "g", num_samples=4),
        }
        result["seconds"] = {name: fastest(fn, args.repeat) for name, fn in runs.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
