"""Adam's update alone on a CPU: torch's per-parameter loop (its default on a CPU, and the reference's) against
the fused kernel larp's training takes (`larp.train.optim.fused_adam`), on the parameters of the tokenizer and
the discriminator at the 64x64 width-384 shape of benchmarks/train_step.py (tok-S64) and of the demo's
tokenizer. Prints JSON (and writes it with --out).

    python benchmarks/optimizer_step.py --threads 2 --repeat 5 --out benchmarks/results/optimizer_step_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fresh_process import emit  # noqa: E402
from speed import machine  # noqa: E402
from train_step import S64  # noqa: E402

from larp.models.config import tokenizer_preset  # noqa: E402
from larp.models.tokenizer import LARPTokenizer  # noqa: E402
from larp.train.losses import DiscriminatorConfig, VideoDiscriminator  # noqa: E402


def parameter_sets() -> dict[str, list[torch.Tensor]]:
    cfg = dataclasses.replace(tokenizer_preset("larp-l-long"), **S64)
    disc = VideoDiscriminator(DiscriminatorConfig(width=384, heads=12, depth=8, temporal_patch=cfg.temporal_patch_size,
                                                  patch=cfg.patch_size, frames=cfg.frame_num, size=cfg.input_size))
    demo = LARPTokenizer(tokenizer_preset("larp-synthetic-64-clip"))
    return {"tok-S64 tokenizer": list(LARPTokenizer(cfg).parameters()), "tok-S64 discriminator": list(disc.parameters()),
            "demo tokenizer": list(demo.parameters())}


def time_steps(params: list[torch.Tensor], fused: bool, steps: int) -> float:
    """Seconds per Adam step (after one untimed step that creates the state)."""
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.99), foreach=None if fused else False, fused=fused)
    opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved measurements of each kind")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for name, params in parameter_sets().items():
        params = [p.detach().requires_grad_() for p in params]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        times: dict[str, list[float]] = {"loop": [], "fused": []}
        for _ in range(args.repeat):  # interleaved: drift hits both alike
            for kind in times:
                times[kind].append(time_steps(params, kind == "fused", args.steps))
        loop, fused = statistics.median(times["loop"]), statistics.median(times["fused"])
        results[name] = {"tensors": len(params), "parameters_millions": round(sum(p.numel() for p in params) / 1e6, 2),
                         "loop_ms": round(1000 * loop, 1), "fused_ms": round(1000 * fused, 1),
                         "speedup": round(loop / fused, 2),
                         "all_ms": {k: [round(1000 * t, 1) for t in v] for k, v in times.items()}}
        print(name, results[name], file=sys.stderr)
    emit({"task": "optimizer_step", "machine": machine(args.threads), "threads": args.threads,
          "repeat": args.repeat, "steps": args.steps, "results": results}, args.out)


if __name__ == "__main__":
    main()
