"""Small-scale study: does a tokenizer preset learn on this CPU within minutes?

Trains a tokenizer preset (plus init / optimiser / anti-collapse options) for a fixed number of steps on
in-memory clips and prints one JSON object: validation PSNR (deterministic codes), codebook usage and
perplexity, seconds and seconds per step. Two data sets:
  solid      clips of one random solid colour each (the sanity case), fresh clips every step
  synthetic  coloured shapes moving over a textured background, 10 classes (larp.data.synthetic)

Example (the sanity recipe that reaches 30 dB in 500 steps, see docs/studies/small_scale_recipes.md):
  python benchmarks/small_scale_study.py --data solid --preset larp-sanity-32 --steps 500 --threads 1 \
      --final-init-std 0.02 --query-std 1.0 --init-from-encoder --dead-code-steps 20 --l2 1.0 --cosine
Timing: `seconds` is wall time (shared CPU), `cpu_seconds` the process CPU time, which is what the run would
take alone with one thread; evaluation time is excluded from both.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from larp import LARPTokenizer, TokenizerConfig, tokenizer_preset
from larp.data.synthetic import solid_color_clips, synthetic_clip
from larp.train.codebook import AntiCollapse, CodebookOptions
from larp.utils.config import apply_overrides, to_dict


# ------------------------------------------------------------------------------------------------- data
def _to_tensor(clips: np.ndarray) -> torch.Tensor:
    """uint8 (n, T, H, W, 3) -> float (n, 3, T, H, W) in [0, 1]."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255


def solid_clips(n: int, frames: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """(n, 3, T, H, W) clips, each one random solid colour."""
    return _to_tensor(solid_color_clips(n, frames, size, seed=int(rng.integers(2**31))))


def synthetic_clips(n: int, frames: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """(n, 3, T, H, W) clips of the synthetic data set, classes in turn."""
    return _to_tensor(np.stack([synthetic_clip(i % 10, rng, frames, size) for i in range(n)]))


# ------------------------------------------------------------------------------------------------ model
def build_model(args: argparse.Namespace) -> LARPTokenizer:
    data = to_dict(tokenizer_preset(args.preset))
    data = apply_overrides(data, args.set)
    return LARPTokenizer(TokenizerConfig.from_json_dict(data))


def param_groups(model: LARPTokenizer, lr: float, mult: dict[str, float]) -> list[dict]:
    """Parameters split into embed / encoder / codebook / decoder / prior, each with its own lr multiplier."""
    groups: dict[str, list] = {"embed": [], "encoder": [], "codebook": [], "decoder": [], "prior": []}
    for name, p in model.named_parameters():
        if name.startswith("x_embedder."):
            groups["embed"].append(p)
        elif name.startswith("prior_model."):
            groups["prior"].append(p)
        elif name.startswith("bottleneck.regularizer."):
            groups["codebook"].append(p)
        elif name.startswith(("encoder", "bottleneck.in_linear.")):
            groups["encoder"].append(p)
        else:
            groups["decoder"].append(p)
    return [{"params": ps, "lr": lr * mult.get(k, 1.0), "name": k} for k, ps in groups.items() if ps]


def psnr(recon: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR per video of the clamped reconstruction."""
    mse = (recon.clamp(0, 1) - video).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate(model: LARPTokenizer, val: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    model.eval()
    scores, codes = [], []
    for i in range(0, len(val), args.batch):
        v = val[i:i + args.batch]
        h = model.encode_continuous(v)
        if args.continuous:
            recon = model.decode_latents(model.bottleneck.project(h))
        else:
            q = model.quantize(h, deterministic=True)
            recon = model.decode_latents(q.quantized)
            codes.append(q.indices.reshape(-1))
        scores.append(psnr(recon, v))
    model.train()
    out = {"val_psnr": float(torch.cat(scores).mean())}
    if codes:
        used = torch.unique(torch.cat(codes)).numel()
        out["val_codes_used"] = used
        out["val_usage"] = used / model.codebook_size
    return out


# --------------------------------------------------------------------------------------------- training
def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build_model(args)
    c = model.config
    make = solid_clips if args.data == "solid" else synthetic_clips
    val = make(args.n_val, c.frame_num, c.input_size, np.random.default_rng(10_000 + args.seed))
    train_set = None if args.data == "solid" else make(args.n_train, c.frame_num, c.input_size, rng)

    def batch() -> torch.Tensor:
        if train_set is None:
            return make(args.batch, c.frame_num, c.input_size, rng)
        v = train_set[torch.randint(0, len(train_set), (args.batch,), generator=gen)]
        return torch.where(torch.rand(()) < 0.5, v, v.flip(-1)) if args.flip else v

    options = CodebookOptions(final_layer_init_std=args.final_init_std, query_init_std=args.query_std,
                              local_linear_init=args.local_init,
                              init_from_encoder=args.init_from_encoder, dead_code_steps=args.dead_code_steps,
                              temperature_start=args.temp_start, temperature_anneal_steps=args.temp_anneal_steps,
                              monitor_window=args.window)
    ac = AntiCollapse(model, options, generator=gen)
    n_init = max(64 if args.local_init else 1, 2048 // c.bottleneck_token_num + 1)  # clips for data-dependent init
    ac.setup(torch.cat([batch() for _ in range(math.ceil(n_init / args.batch))])
             if args.init_from_encoder or args.local_init else None)
    routing = {k: round(v, 3) for k, v in ac.init_report.items()}
    mult = dict(kv.split("=") for kv in args.lr_mult)
    opt = torch.optim.Adam(param_groups(model, args.lr, {k: float(v) for k, v in mult.items()}),
                           betas=tuple(args.betas))
    base_lrs = [g["lr"] for g in opt.param_groups]
    history, stats = [], {}
    t0, c0 = time.perf_counter(), time.process_time()  # CPU time: what a run costs on an idle machine
    model.train()
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
        decay = 0.5 * (1 + math.cos(math.pi * step / args.steps)) if args.cosine else 1.0
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * warm * (0.1 + 0.9 * decay)
        ac.before_step(step)
        v = batch()
        if args.continuous:
            recon = model.decode_latents(model.bottleneck.project(model.encode_continuous(v)))
            vq_loss = prior_loss = torch.zeros(())
            indices = None
        else:
            out = model(v, step, args.steps, generator=gen)
            recon, vq_loss, indices = out.recon, out.vq_loss, out.indices
            prior_loss = out.prior.loss if out.prior is not None else torch.zeros(())
        l2_w = args.l2 if step < args.l2_steps or args.l2_steps <= 0 else 0.0
        loss = (args.l1 * F.l1_loss(recon, v) + l2_w * F.mse_loss(recon, v) + args.vq_weight * vq_loss
                + args.prior_weight * prior_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        if indices is not None:
            stats = ac.after_step(step, indices, optimizer=opt)
        if args.eval_every and ((step + 1) % args.eval_every == 0) and step + 1 < args.steps:
            e0, ec0 = time.perf_counter(), time.process_time()
            ev = evaluate(model, val, args)
            t0, c0 = t0 + time.perf_counter() - e0, c0 + time.process_time() - ec0  # evaluation is not training
            history.append({"step": step + 1, "seconds": round(time.perf_counter() - t0, 1),
                            "cpu_seconds": round(time.process_time() - c0, 1),
                            "loss": round(loss.item(), 4), "prior_loss": round(prior_loss.item(), 3),
                            **{k: round(x, 4) for k, x in {**ev, **stats}.items()}})
            if args.verbose:
                print(json.dumps(history[-1]), flush=True)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    ev = evaluate(model, val, args)
    ac.close()
    result = {
        "data": args.data, "preset": args.preset, "overrides": args.set, "steps": args.steps,
        "batch": args.batch, "threads": torch.get_num_threads(),
        "options": {k: getattr(args, k) for k in ("lr", "betas", "lr_mult", "warmup", "cosine", "l1", "l2",
                                                  "l2_steps", "vq_weight", "prior_weight", "final_init_std",
                                                  "query_std", "init_from_encoder", "dead_code_steps",
                                                  "temp_start", "temp_anneal_steps", "continuous", "grad_clip",
                                                  "local_init")},
        **routing,
        **{k: round(x, 4) for k, x in ev.items()},
        "train_usage": round(stats.get("codebook_usage", float("nan")), 4),
        "train_perplexity": round(stats.get("codebook_perplexity", float("nan")), 1),
        "codes_reinitialised": ac.reinitialised,
        "final_loss": round(loss.item(), 4), "final_prior_loss": round(prior_loss.item(), 4),
        "seconds": round(seconds, 1), "seconds_per_step": round(seconds / args.steps, 3),
        "cpu_seconds": round(cpu_seconds, 1), "cpu_seconds_per_step": round(cpu_seconds / args.steps, 3),
        "history": history,
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["solid", "synthetic"], default="solid")
    p.add_argument("--preset", default="larp-sanity-32")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a tokenizer config key, e.g. bottleneck_token_num=64")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--flip", action="store_true", help="random horizontal flips of training clips")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--betas", type=float, nargs=2, default=[0.5, 0.9])
    p.add_argument("--lr-mult", action="append", default=[], metavar="PART=X",
                   help="lr multiplier of encoder / codebook / decoder / prior")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--cosine", action="store_true", help="cosine decay of the lr to 0.1x")
    p.add_argument("--grad-clip", type=float, default=0.0)
    p.add_argument("--l1", type=float, default=1.0)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--l2-steps", type=int, default=0, help="use the L2 term for this many steps (0: always)")
    p.add_argument("--vq-weight", type=float, default=0.1)
    p.add_argument("--prior-weight", type=float, default=0.0)
    p.add_argument("--final-init-std", type=float, default=None)
    p.add_argument("--query-std", type=float, default=None)
    p.add_argument("--init-from-encoder", action="store_true")
    p.add_argument("--dead-code-steps", type=int, default=0)
    p.add_argument("--temp-start", type=float, default=None)
    p.add_argument("--temp-anneal-steps", type=int, default=0)
    p.add_argument("--continuous", action="store_true", help="bypass the quantiser (diagnosis only)")
    p.add_argument("--local-init", action="store_true", help="larp.train.local_init.local_linear_init")
    p.add_argument("--window", type=int, default=50, help="codebook usage window in steps")
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--no-history", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(args)
    if args.no_history:
        result.pop("history")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
