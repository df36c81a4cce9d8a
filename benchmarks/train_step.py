"""One optimizer step of larp's training and of the reference implementation's, side by side.

    python benchmarks/train_step.py --reference <checkout> --reference-deps <deps> \\
        --out benchmarks/results/train_step_cpu.json

Same config, same weights, same batch on both sides. The weights are random and written once by larp in
the released checkpoint format (the tokenizer's or AR model's folder, plus the discriminator's tensors under
the reference's names and the LPIPS network's), then loaded by both. Every measurement is a fresh process
(its own peak RSS); runs are interleaved and repeated (--repeat), each with the load average before and
after. In a process, one warm-up step, then --steps timed steps of each kind; a kind's time is the median.

Workloads (--workloads):
- tok-S64: the larp-l-long tokenizer at width 384 (6 heads, 12+12 layers) on 16x64x64 clips, 256 tokens,
  gptc-S prior, batch 2; the discriminator of cfgs/larp_tokenizer.yaml (384 wide, 12 heads, 8 layers).
- tok-L128: larp-l-long (16x128x128, 1024 tokens), batch 1; the released recipe's discriminator (512, 8,
  12 layers: scripts/train_larp_tokenizer_reproduce.sh).
- tok-tiny: larp-tiny, batch 1 (a smoke test).
- ar-S: the class-conditional AR model of size S, 1024 tokens of 8192 codes, batch 4 (given tokens).

A tokenizer step with LPIPS, GAN and prior on, timed as two kinds: "g" (a step without a discriminator
update, step numbers 6, 11, ...) and "gd" (with one: 10, 15, ...; the warm-up step is 5); "amortised" =
(4 g + gd) / 5, as the discriminator is updated every 5th step on both sides.
- larp: `TokenizerTask.train_step` (larp.train.tokenizer_task), the real one: learning rates, forward
  (codes, reconstruction, VQ loss, prior CE), on a D step the discriminator's update (its two forwards,
  smoothed BCE + LeCam, backward, Adam), the generator loss (L1 + LPIPS + GAN through D + VQ + prior),
  backward, Adam, codebook monitoring. It is built from a recipe (`model.init_from` = the written folder)
  with a 4-clip synthetic dataset that the steps do not read; the batch is given.
- reference: `LARPTokenizerTrainer.train_step` (trainers/larp_tokenizer_trainer.py), its real method on a
  trainer built without __init__ (no distributed set-up, wandb, datasets or FVD network): its own make_loss,
  configure_optimizers and configure_scalers with cfgs/larp_tokenizer.yaml and the reproduce script's
  overrides (D 512/8/12, D lr 3e-5, cosine), and, as its train_epoch does before each step,
  global_step += 1 and adjust_learning_rate_stepwise. Its step also computes PSNR, SSIM (pytorch_msssim),
  code usage and perplexity, and the prior's top-k accuracy.
An AR step: forward, cross-entropy, backward, AdamW (weight decay 0.05 on Linear weights).
- larp: `ARTask.train_step` on a batch from a token cache (a one-shard cache written for it).
- reference: `LARPARTrainer.train_step`, its real method, with the tokenizer replaced by a stub whose
  encode returns the given tokens (so no tokenizer work on either side); it also computes top-1/5 accuracy.

Precision (--variants): fp32, and "mixed" = bfloat16 autocast on both sides. The official recipes are fp16
autocast + GradScaler (tokenizer) and bf16 autocast (AR), but float16 matrix products on a CPU without
AVX512-FP16/AMX are ~75x slower than float32, so the tokenizer's mixed variant is bf16 too (GradScaler off,
as the reference has it for bf16). The reference's autocast is CUDA's (`torch.autocast('cuda', ...)`, its
fp32 islands too): in its process 'cuda' is mapped to 'cpu'. larp's `setup_context` allows bf16 on CUDA only:
its TrainContext is built directly. No torch.compile (the released scripts compile on CUDA). LPIPS: no VGG-16
download here, so both use the same random VGG-16 trunk of lpips 0.1 with the package's linear heads (the
compute of the pretrained network). --profile: torch.profiler's operators of 2 more steps (g, gd) per run
and those where larp spends more time than the reference."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from fresh_process import child_result, emit, parse_args, reference_on_path, spawn  # noqa: E402
from speed import machine, write_ar  # noqa: E402

DISC_EVERY = 5
S64 = {"input_size": 64, "bottleneck_token_num": 256, "encoder_hidden_size": 384, "decoder_hidden_size": 384,
       "encoder_num_heads": 6, "decoder_num_heads": 6}
WORKLOADS: dict[str, dict[str, Any]] = {
    "tok-S64": {"preset": "larp-l-long", "overrides": S64, "batch": 2, "disc": (384, 12, 8)},
    "tok-L128": {"preset": "larp-l-long", "overrides": {}, "batch": 1, "disc": (512, 8, 12)},
    "tok-tiny": {"preset": "larp-tiny", "overrides": {}, "batch": 1, "disc": (64, 4, 2)},
    "ar-S": {"shape": "S", "tokens": 1024, "vocab": 8192, "classes": 101, "batch": 4},
}
MAX_STEPS = 1000  # the schedules' length (scheduled sampling, cosine): the same on both sides


# ------------------------------------------------------------------------------------------- weights
def write_tokenizer_workload(folder: Path, w: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer (save_pretrained), its discriminator under the reference's names, the LPIPS network."""
    from larp import LARPTokenizer, tokenizer_preset
    from larp.data.synthetic import write_synthetic_dataset
    from larp.models.config import TokenizerConfig
    from larp.train import losses
    from larp.utils.config import to_dict
    from larp.utils.files import write_safetensors

    torch.manual_seed(0)
    cfg = TokenizerConfig.from_json_dict({**to_dict(tokenizer_preset(w["preset"])), **w["overrides"]})
    model = LARPTokenizer(cfg)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)  # zero-initialised: a constant output
    model.save_pretrained(folder)
    width, heads, depth = w["disc"]
    disc = losses.VideoDiscriminator(losses.DiscriminatorConfig(
        width=width, heads=heads, depth=depth, temporal_patch=cfg.temporal_patch_size, patch=cfg.patch_size,
        frames=cfg.frame_num, size=cfg.input_size))
    back = {new: old for old, new in losses._REFERENCE_DISC_NAMES}
    named = {}
    for name, value in disc.state_dict().items():
        prefix = next((p for p in back if name.startswith(p)), "")
        named[(back[prefix] + name[len(prefix):]) if prefix else name] = value.contiguous()
    write_safetensors(folder / "disc.safetensors", named)
    lpips_state = losses.PerceptualLoss(pretrained_trunk=False).lpips.state_dict()  # a random VGG-16 trunk
    write_safetensors(folder / "lpips.safetensors", {k: v.clone() for k, v in lpips_state.items()})
    data = write_synthetic_dataset(folder / "data", classes=2, clips_per_class=2, frames=cfg.frame_num,
                                   size=cfg.input_size, seed=0)
    return {"folder": str(folder), "csv": str(data["train"]), "frames": cfg.frame_num, "size": cfg.input_size}


def write_ar_workload(folder: Path, w: dict[str, Any]) -> dict[str, Any]:
    """The AR model (save_pretrained) and a one-shard token cache of the batch for larp."""
    from dataclasses import asdict

    from larp.train.token_cache import META, CacheMeta
    from larp.utils.files import write_safetensors

    write_ar(folder, w["shape"], w["tokens"], w["vocab"])
    g = torch.Generator().manual_seed(0)
    n = w["batch"]
    tokens = torch.randint(0, w["vocab"], (n, w["tokens"]), generator=g)
    labels = torch.randint(0, w["classes"], (n,), generator=g)
    cache = folder / "cache"
    cache.mkdir()
    write_safetensors(cache / "shard_00000.safetensors", {
        "tokens": tokens, "labels": labels, "video": torch.arange(n), "start": torch.zeros(n, dtype=torch.long),
        "flip": torch.zeros(n, dtype=torch.bool)})
    meta = CacheMeta(tokenizer="benchmark", num_tokens=w["tokens"], codebook_size=w["vocab"], num_frames=16,
                     size=128, windows_per_video=1, flip=False, seed=0, source="benchmark", fp_context_frames=0,
                     num_entries=n, shards=("shard_00000.safetensors",))
    (cache / META).write_text(json.dumps(asdict(meta)))
    return {"folder": str(folder), "cache": str(cache)}


# -------------------------------------------------------------------------------------- child process
def _load_reference(path: str, deps: str | None) -> None:
    """The reference on sys.path, its CUDA autocast regions mapped to the CPU (before it is imported:
    it uses torch.autocast('cuda', enabled=False) as a decorator)."""
    reference_on_path(path, deps)
    base = torch.autocast

    class CPUAutocast(base):  # type: ignore[misc, valid-type]
        def __init__(self, device_type: str, *args: Any, **kwargs: Any):
            super().__init__("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    torch.autocast = CPUAutocast
    torch.amp.autocast = CPUAutocast
    import lpips
    import models.loss  # registers the reference's models

    # Its LPIPS(net='vgg') downloads torchvision's VGG-16: a random trunk instead, loaded from the file.
    models.loss.lpips = SimpleNamespace(LPIPS=functools.partial(lpips.LPIPS, pnet_rand=True, verbose=False))


def _bare(cls: type, spec: dict[str, Any], cfg: dict[str, Any]) -> Any:
    """A reference trainer without its __init__ (distributed set-up, logging, FVD network)."""
    t = cls.__new__(cls)
    t.cfg, t.rank, t.is_master, t.distributed, t.compile = cfg, 0, False, False, False
    t.log, t.device, t.ema_model_dict = (lambda *a, **k: None), torch.device("cpu"), {}
    t.use_amp = spec["variant"] == "mixed"
    t.amp_dtype = torch.bfloat16 if t.use_amp else torch.float32
    t.epoch, t.global_step, t.max_steps, t.lr_mult_epochwise = 1, 0, MAX_STEPS, 0.0
    t.n_steps_per_epoch = MAX_STEPS // cfg["max_epoch"]
    return t


def _reference_cfg(spec: dict[str, Any], name: str) -> dict[str, Any]:
    import yaml

    text = (Path(spec["reference"]) / "cfgs" / name).read_text()
    for key in ("input_size", "frame_num"):
        text = text.replace(f"${key}$", str(spec.get(key, 0)))
    return yaml.safe_load(text)


def reference_tokenizer(spec: dict[str, Any]):
    from safetensors.torch import load_file

    _load_reference(spec["reference"], spec.get("reference_deps"))
    from models.larp_tokenizer import LARPTokenizer as Reference
    from trainers.larp_tokenizer_trainer import LARPTokenizerTrainer

    folder = Path(spec["folder"])
    cfg = _reference_cfg({**spec, "input_size": spec["size"], "frame_num": spec["frames"]}, "larp_tokenizer.yaml")
    width, heads, depth = spec["disc"]  # the reproduce script's overrides
    cfg["loss"]["args"].update(disc_tran_hidden_size=width, disc_tran_n_heads=heads, disc_tran_n_layers=depth)
    cfg["optimizer"].update(lr_type="cosine", warmup_epoch=0, min_lr_mult=0.01, prior_lr_mult=50.0)
    cfg["optimizer"]["loss_args"]["lr"] = 3e-5
    cfg["max_epoch"] = 10
    t = _bare(LARPTokenizerTrainer, spec, cfg)
    t.loss_q_starting_ratio, t.loss_q_warmup_epochs = 1.0, 1
    t.loss_q_weight, t.clip_grad_max_norm = float(cfg["loss_q_weight"]), float(cfg["clip_grad_max_norm"])
    t.loss_latent_ce_weight, t.set_sqt_every_step = float(cfg["loss_latent_ce_weight"]), False
    model = Reference(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    t.model = t.model_ddp = model
    t.make_loss()
    missing, unexpected = t.loss.discriminator.load_state_dict(load_file(str(folder / "disc.safetensors")),
                                                               strict=False)
    assert missing == ["encoder_pos_embed"] and not unexpected, (missing, unexpected)
    t.loss.perceptual_loss.load_state_dict(load_file(str(folder / "lpips.safetensors")))
    t.configure_optimizers(cfg["optimizer"])
    t.configure_scalers()
    model.train().requires_grad_(True)  # what its train_epoch does

    def step(video: torch.Tensor, number: int) -> dict[str, Any]:
        t.global_step = number  # its train_epoch: global_step += 1, the learning rates, then train_step
        t.adjust_learning_rate_stepwise()
        return t.train_step({"gt": video})
    return step


def larp_tokenizer(spec: dict[str, Any]):
    from safetensors.torch import load_file

    from larp.train import tokenizer_task
    from larp.train.config import TokenizerTrainConfig, load_recipe
    from larp.train.engine import TrainContext

    folder = Path(spec["folder"])
    width, heads, depth = spec["disc"]
    recipe = load_recipe(TokenizerTrainConfig, None, [
        f"model.init_from={folder}", f"data.train_csv={spec['csv']}", f"data.num_frames={spec['frames']}",
        f"data.size={spec['size']}", f"data.batch_size={spec['batch']}", "data.num_workers=0",
        f"discriminator.width={width}", f"discriminator.heads={heads}", f"discriminator.depth={depth}",
        "optim.min_lr_ratio=0.01", f"run.max_steps={MAX_STEPS}", "run.device=cpu", f"run.out_dir={spec['tmp']}/run"])
    # No VGG-16 file here: a random trunk, then the shared LPIPS weights.
    tokenizer_task.PerceptualLoss = functools.partial(tokenizer_task.PerceptualLoss, pretrained_trunk=False)
    ctx = TrainContext(torch.device("cpu"), precision="bf16" if spec["variant"] == "mixed" else "fp32")
    task = tokenizer_task.TokenizerTask(recipe, ctx)
    task.disc.load_reference_state_dict(load_file(str(folder / "disc.safetensors")))
    task.perceptual.lpips.load_state_dict(load_file(str(folder / "lpips.safetensors")))
    return lambda video, number: task.train_step({"video": video}, number - 1)


def reference_ar(spec: dict[str, Any]):
    import dataclasses

    from safetensors.torch import load_file

    _load_reference(spec["reference"], spec.get("reference_deps"))
    from models.larp_ar import LARP_AR, ModelArgs
    from trainers.larp_ar_trainer import LARPARTrainer

    folder = Path(spec["folder"])
    cfg = _reference_cfg(spec, "larp_ar.yaml")
    cfg["optimizer"]["args"].update(lr=6e-4, weight_decay=0.05)  # the released scripts' values
    cfg["optimizer"]["warmup_epoch"], cfg["max_epoch"] = 0, 10
    t = _bare(LARPARTrainer, spec, cfg)
    config = json.loads((folder / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(ModelArgs)}
    model = LARP_AR(ModelArgs(**{k: v for k, v in config.items() if k in fields}))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    t.model = t.model_ddp = model.train()
    t.vae = SimpleNamespace(encode=lambda x: {"bottleneck_rep": x})  # the batch's tokens
    t.vae_force_fp32 = False
    t.configure_optimizers(cfg["optimizer"])
    t.configure_scalers()

    def step(batch: dict[str, torch.Tensor], number: int) -> dict[str, Any]:
        t.global_step = number
        t.adjust_learning_rate_stepwise()
        return t.train_step({"gt": batch["tokens"], "label": batch["label"]})
    return step


def larp_ar(spec: dict[str, Any]):
    from larp.train.ar_task import ARTask
    from larp.train.config import ARTrainConfig, load_recipe
    from larp.train.engine import TrainContext

    recipe = load_recipe(ARTrainConfig, None, [
        f"model.init_from={spec['folder']}", f"data.token_cache={spec['cache']}", f"data.batch_size={spec['batch']}",
        "data.num_workers=0", "optim.lr=6e-4", "optim.min_lr_ratio=0.01", f"run.max_steps={MAX_STEPS}",
        "run.device=cpu", f"run.out_dir={spec['tmp']}/run"])
    task = ARTask(recipe, TrainContext(torch.device("cpu"), precision="bf16" if spec["variant"] == "mixed" else "fp32"))
    return lambda batch, number: task.train_step(batch, number - 1)


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    is_ar = spec["workload"].startswith("ar")
    make = {(True, "larp"): larp_ar, (True, "reference"): reference_ar,
            (False, "larp"): larp_tokenizer, (False, "reference"): reference_tokenizer}[is_ar, spec["impl"]]
    step = make(spec)
    g = torch.Generator().manual_seed(0)
    if is_ar:
        from safetensors.torch import load_file

        shard = load_file(str(Path(spec["cache"]) / "shard_00000.safetensors"))
        batch: Any = {"tokens": shard["tokens"], "label": shard["labels"]}
        plan = [("step", n) for n in range(2, 2 + spec["steps"])]
    else:
        batch = torch.rand(spec["batch"], 3, spec["frames"], spec["size"], spec["size"], generator=g)
        plan = [(kind, DISC_EVERY * (i + 1) + (1 if kind == "g" else DISC_EVERY))
                for i in range(spec["steps"]) for kind in ("g", "gd")]
    torch.manual_seed(0)

    checks: dict[str, Any] = {}

    def run(number: int, kind: str = "warmup") -> None:  # a fresh copy: the reference pops the batch's entries
        metrics = step(dict(batch) if is_ar else batch, number)
        checks.setdefault(kind, {"loss": float(metrics["loss"]), "d_update": "d_loss" in metrics})

    load = os.getloadavg()
    t0 = time.perf_counter()
    run(1 if is_ar else DISC_EVERY)  # warm-up (tokenizer: a step with the discriminator's update)
    out: dict[str, Any] = {"warmup_seconds": time.perf_counter() - t0, "loadavg_before": load}
    times: dict[str, list[tuple[float, float]]] = {}
    for kind, number in plan:
        t0, c0 = time.perf_counter(), time.process_time()
        run(number, kind)
        times.setdefault(kind, []).append((time.perf_counter() - t0, time.process_time() - c0))
    out["loadavg_after"], out["checks"] = os.getloadavg(), checks  # the first loss, D updated or not
    out["timings"] = {kind: {"seconds": statistics.median(s for s, _ in v), "cpu_seconds": statistics.median(
        c for _, c in v), "all_seconds": [s for s, _ in v]} for kind, v in times.items()}
    if not is_ar:
        g_t, gd_t = out["timings"]["g"], out["timings"]["gd"]
        out["timings"]["amortised"] = {k: ((DISC_EVERY - 1) * g_t[k] + gd_t[k]) / DISC_EVERY
                                       for k in ("seconds", "cpu_seconds")}
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for kind, number in plan[-2:]:
                run(number + 100, kind)
        out["profile_ms"] = {e.key: [round(e.self_cpu_time_total / 1e3, 2), round(e.cpu_time_total / 1e3, 2),
                                     e.count] for e in prof.key_averages() if e.self_cpu_time_total >= 500}
    child_result(spec, out)


# ------------------------------------------------------------------------------------------- parent
def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"runs": runs}
    out: dict[str, Any] = {}
    for kind in ok[0]["timings"]:
        secs = [r["timings"][kind]["seconds"] for r in ok]
        out[kind] = {"median_seconds": statistics.median(secs), "min_seconds": min(secs), "max_seconds": max(secs),
                     "median_cpu_seconds": statistics.median(r["timings"][kind]["cpu_seconds"] for r in ok)}
    return {**out, "max_peak_rss_mib": max(r["peak_rss_mib"] for r in ok), "runs": runs}


def compare(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Reference / larp per step kind: of the medians, and of the same-repeat pairs (wall and CPU time)."""
    out = {}
    for kind in ours:
        if not isinstance(ours[kind], dict) or "median_seconds" not in ours[kind] or kind not in ref:
            continue
        pairs = [(a["timings"][kind], b["timings"][kind]) for a, b in zip(ours["runs"], ref["runs"], strict=False)
                 if "error" not in a and "error" not in b]
        out[kind] = {"median": ref[kind]["median_seconds"] / ours[kind]["median_seconds"],
                     "paired_wall": [b["seconds"] / a["seconds"] for a, b in pairs],
                     "paired_cpu": [b["cpu_seconds"] / a["cpu_seconds"] for a, b in pairs]}
    return out


def profile_diff(ours: list[dict[str, Any]], ref: list[dict[str, Any]], top: int = 20) -> list[list[Any]]:
    """Operators by how much more self time larp spends in them than the reference (each side's least over
    its runs): [operator, larp ms, reference ms, difference, larp calls, reference calls]."""
    def least(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
        tables = [r["profile_ms"] for r in runs if "profile_ms" in r]
        return {k: min((t.get(k, [0, 0, 0]) for t in tables), key=lambda v: v[0]) for t in tables for k in t}
    a, b = least(ours), least(ref)
    rows = [[k, a.get(k, [0])[0], b.get(k, [0])[0], round(a.get(k, [0])[0] - b.get(k, [0])[0], 2),
             a.get(k, [0, 0, 0])[2], b.get(k, [0, 0, 0])[2]] for k in {*a, *b}]
    return sorted(rows, key=lambda r: -r[3])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="tok-S64,tok-L128,ar-S", help=f"comma-separated, of {list(WORKLOADS)}")
    ap.add_argument("--variants", default="fp32,mixed", help="fp32, mixed (bfloat16 autocast)")
    ap.add_argument("--reference", help="a checkout of the reference implementation: time it too")
    ap.add_argument("--reference-deps", help="a folder of extra packages the reference imports (wandb, ...)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps of each kind per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, help="instead of each workload's batch size")
    ap.add_argument("--profile", action="store_true", help="also profile the operators of 2 more steps per run")
    args = parse_args(ap, child_main, timeout=3600)
    if args is None:  # a child process: it has measured
        return
    names, variants = args.workloads.split(","), args.variants.split(",")
    sides = ["larp"] + (["reference"] if args.reference else [])
    tmp = Path(tempfile.mkdtemp(prefix="larp_train_step_"))
    report: dict[str, Any] = {
        "task": "train_step", "machine": machine(args.threads), "steps": args.steps, "repeat": args.repeat,
        "notes": [
            "mixed = bfloat16 autocast on both sides (official tokenizer recipe: fp16 + GradScaler, ~75x slower "
            "matrix products than float32 on this kind of CPU); reference autocast 'cuda' mapped to 'cpu'",
            "LPIPS: the same random VGG-16 trunk on both sides (no download); no torch.compile",
            "tokenizer: g = step without the discriminator's update, gd = with it, amortised = (4 g + gd) / 5",
            "AR: tokens given on both sides; speedup = reference seconds / larp seconds (> 1: larp faster)"],
        "workloads": {}}
    specs: dict[str, dict[str, Any]] = {}
    for name in names:
        w = dict(WORKLOADS[name], batch=args.batch or WORKLOADS[name]["batch"])
        files = (write_ar_workload if name.startswith("ar") else write_tokenizer_workload)(tmp / name, w)
        specs[name] = {**w, **files, "workload": name, "threads": args.threads, "steps": args.steps,
                       "reference": args.reference, "reference_deps": args.reference_deps}
        report["workloads"][name] = {"settings": dict(w),
                                     **{s: {v: [] for v in variants} for s in sides}}
    for r in range(args.repeat):  # interleaved, so that load bursts hit every run alike
        for name in names:
            for v in variants:
                for side in (sides if r % 2 == 0 else sides[::-1]):
                    spec = {**specs[name], "impl": side, "variant": v, "profile": args.profile}
                    result = spawn(__file__, spec, tmp, args.timeout, env={"WANDB_MODE": "disabled"})
                    report["workloads"][name][side][v].append(result)
                    shown = {k: result[k] for k in ("timings", "peak_rss_mib", "error") if k in result}
                    print(f"repeat {r}: {name} {side} {v}: {shown}", file=sys.stderr)
    for name in names:
        entry = report["workloads"][name]
        for side in sides:
            entry[side] = {v: summary(runs) for v, runs in entry[side].items()}
        if args.reference:
            entry["speedup"] = {v: compare(entry["larp"][v], entry["reference"][v]) for v in variants}
            if args.profile:
                entry["profile_larp_minus_reference_ms"] = {
                    v: profile_diff(entry["larp"][v]["runs"], entry["reference"][v]["runs"]) for v in variants}
    shutil.rmtree(tmp, ignore_errors=True)
    emit(report, args.out)


if __name__ == "__main__":
    main()
