"""How well can a per-patch linear code reconstruct the synthetic clips' objects?

The demo's tokenizer starts as a per-patch PCA autoencoder (`larp.train.local_init`) and, in the demo's
training time, stays close to one. This script measures the ceiling of that regime: every patch of a clip is
replaced by its projection on the top-k principal components of the training clips' patches (fitted on
`--train` fresh synthetic clips, scored on `--val` others), for several patch geometries and k, with the
demo's object metrics (`larp.eval.synthetic.object_fidelity`, `larp.data.synthetic.analyse_clip`). The
continuous coefficients are kept exactly, so a quantised code of the same size can only do worse. The
coherent fraction (`ClipAnalysis.coherent`) says whether the reconstructed object moves smoothly: a code that
keeps few coefficients per patch tends to hold the object still within a temporal patch and jump between them.

    python benchmarks/local_code_bound.py [--train 400] [--val 80] [--out benchmarks/results/local_code_bound.json]

Prints one JSON object (and writes it to --out): a row per (patch geometry, k) with the numbers of patches
and of coefficients per clip, PSNR, object IoU, object and background PSNR, the shape accuracy and the
fraction of coherent reconstructions."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from larp.data.synthetic import analyse_clip, synthetic_class, synthetic_clip
from larp.eval.synthetic import object_fidelity

GEOMETRIES = ((16, 4), (16, 2), (8, 16), (8, 8), (8, 4), (16, 16))  # (spatial, temporal) patch sizes on 64x64x16 clips
COMPONENTS = (8, 16, 32, 64, 128)


def clips(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([synthetic_clip(i % 10, rng) for i in range(n)])  # uint8 (n, T, H, W, 3)


def to_patches(x: np.ndarray, p: int, t: int) -> torch.Tensor:
    v = torch.from_numpy(x).float() / 255
    return rearrange(v, "n (T t) (H p) (W q) c -> (n T H W) (t p q c)", t=t, p=p, q=p)


def from_patches(y: torch.Tensor, n: int, p: int, t: int, frames: int, size: int) -> np.ndarray:
    return rearrange(y, "(n T H W) (t p q c) -> n c (T t) (H p) (W q)", n=n, T=frames // t, H=size // p,
                     W=size // p, t=t, p=p, q=p, c=3).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=400, help="clips the principal components are fitted on")
    ap.add_argument("--val", type=int, default=80, help="clips scored (8 per class at the default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/local_code_bound.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, val = clips(args.train, seed=1), clips(args.val, seed=2)
    n, frames, size = val.shape[0], val.shape[1], val.shape[2]
    real = val.transpose(0, 4, 1, 2, 3).astype(np.float32) / 255
    analyses = [analyse_clip(v) for v in real]
    shapes = [synthetic_class(i % 10).shape for i in range(n)]
    rows = []
    for p, t in GEOMETRIES:
        x = to_patches(train, p, t)
        mean = x.mean(0)
        cov = torch.cov((x - mean).T.double())
        directions = torch.linalg.eigh(cov)[1].flip(1).float()  # columns by decreasing variance
        v = to_patches(val, p, t)
        patches = (frames // t) * (size // p) ** 2
        for k in COMPONENTS:
            if k > x.shape[1]:
                continue
            u = directions[:, :k]
            recon_patches = (((v - mean) @ u) @ u.T + mean).clamp(0, 1)
            recon = from_patches(recon_patches, n, p, t, frames, size)
            scores = []
            for i in range(n):
                b = analyse_clip(recon[i])
                scores.append((*object_fidelity(real[i], recon[i], analyses[i], b), b.shape == shapes[i], b.coherent()))
            s = np.array(scores, dtype=np.float64)
            mse = float(((recon - real) ** 2).mean())
            rows.append({"patch": f"{p}x{p}x{t}", "patches_per_clip": patches, "components": k,
                         "coefficients_per_clip": patches * k, "psnr": round(-10 * math.log10(mse), 2),
                         "object_iou": round(float(s[:, 0].mean()), 3),
                         "object_psnr": round(float(np.nanmean(s[:, 1])), 2),
                         "background_psnr": round(float(np.nanmean(s[:, 2])), 2),
                         "shape_accuracy": round(float(s[:, 3].mean()), 3),
                         "coherent_fraction": round(float(s[:, 4].mean()), 3)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "local_code_bound", "train_clips": args.train, "val_clips": args.val,
              "commit": commit or None, "torch": torch.__version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
