"""Benchmark suite: prints one JSON document (and writes it with --out).

    python benchmarks/run.py                    # everything, CPU
    python benchmarks/run.py --only generation  # one area
    python benchmarks/run.py --device cuda      # the same on a GPU

Areas: tokenizer (encode / decode clips per second), generation (AR tokens per second by batch, guidance and
sequence length, with and without the KV cache), training (tokenizer and AR steps per second, AR from the
token cache vs re-encoding every batch; the demo's presets, as its shipped recipes name them), data
(training data pipeline clips per second). Each area runs in its own process so that its peak memory (max
RSS, or CUDA max allocated) is its own."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
AREAS = ("tokenizer", "generation", "training", "data")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def demo_pair() -> tuple[str, str, list[str]]:
    """The demo's tokenizer preset, AR preset and AR config overrides, as its shipped recipes name them."""
    from larp.demo.pipeline import AR_RECIPE, TOKENIZER_RECIPE, recipe_file
    from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe

    tok = load_recipe(TokenizerTrainConfig, recipe_file(TOKENIZER_RECIPE), []).model
    ar = load_recipe(ARTrainConfig, recipe_file(AR_RECIPE), []).model
    return tok.preset, ar.preset, [f"model.config.{k}={v}" for k, v in ar.config.items()]


def bench_tokenizer(device: torch.device, quick: bool) -> dict:
    from larp import LARPTokenizer, tokenizer_preset

    out = {}
    demo = demo_pair()[0]
    # The demo's tokenizer, its earlier one (16x16x4 patches), and the released shape.
    presets = [demo] if quick else [demo, "larp-synthetic-64", "larp-l-long"]
    for name in presets:
        torch.manual_seed(0)
        tok = LARPTokenizer(tokenizer_preset(name)).to(device).eval()
        batch = 8 if "synthetic" in name else 2
        video = torch.rand(batch, *tok.video_shape, device=device)
        with torch.no_grad():
            idx = tok.encode(video)
            enc = timed(lambda: tok.encode(video), device, repeat=3)  # noqa: B023 (called right here)
            dec = timed(lambda: tok.decode(idx), device, repeat=3)  # noqa: B023
        out[name] = {"batch": batch, "encode_clips_per_s": batch / enc, "decode_clips_per_s": batch / dec,
                     "encode_decode_clips_per_s": batch / (enc + dec)}
    return out


def bench_generation(device: torch.device, quick: bool) -> dict:
    from larp import LARPAR, ARConfig
    from larp.sample.generate import generate, generate_without_cache

    results = []
    lengths = [256, 1024] if quick else [256, 1024, 4096]
    for length in lengths:
        torch.manual_seed(0)
        cfg = ARConfig(dim=256, n_layer=4, n_head=4, num_classes=10, vocab_size=1024, max_seq_len=length)
        model = LARPAR(cfg).to(device).eval()
        torch.nn.init.normal_(model.output.weight, std=0.02)
        for batch in (1, 4, 32):
            for cfg_scale in (1.0, 1.5):
                if length > 1024 and (batch == 32 or cfg_scale == 1.0):
                    continue  # minutes each on a CPU; batch 1 and 4 with guidance show the per-token trend
                cond = torch.arange(batch, device=device) % 10
                sec = timed(lambda: generate(model, cond, cfg_scale=cfg_scale,  # noqa: B023
                                             generator=torch.Generator(device).manual_seed(0)),
                            device, repeat=1, warmup=1 if length == lengths[0] else 0)
                results.append({"seq_len": length, "batch": batch, "cfg": cfg_scale != 1.0,
                                "tokens_per_s": batch * length / sec, "ms_per_step": 1000 * sec / length})
    # The KV cache against recomputing the prefix for every token, on a short sequence.
    cfg = ARConfig(dim=256, n_layer=4, n_head=4, num_classes=10, vocab_size=1024, max_seq_len=256)
    model = LARPAR(cfg).to(device).eval()
    cond = torch.arange(4, device=device)
    cached = timed(lambda: generate(model, cond, cfg_scale=1.5, top_k=1), device, repeat=1)
    uncached = timed(lambda: generate_without_cache(model, cond, cfg_scale=1.5, top_k=1), device, repeat=1, warmup=0)
    return {"model": "AR dim 256, 4 layers, vocab 1024", "runs": results,
            "kv_cache_speedup_256_tokens_batch4_cfg": uncached / cached}


def bench_training(device: torch.device, quick: bool) -> dict:
    """Steps per second of both trainings on the tiny synthetic presets, and the token-cache speed-up."""
    from larp.data.synthetic import write_synthetic_dataset
    from larp.train.config import TokenizerTrainConfig, load_recipe
    from larp.train.engine import SeededItems, setup_context
    from larp.train.tokenizer_task import TokenizerTask

    tmp = Path(tempfile.mkdtemp(prefix="larp_bench_"))
    data = write_synthetic_dataset(tmp / "data", classes=4, clips_per_class=8, frames=16, size=64, seed=0)
    dev = f"run.device={device.type}"
    tok_preset, ar_preset, ar_config = demo_pair()
    tok_recipe = load_recipe(TokenizerTrainConfig, None, [
        f"model.preset={tok_preset}", f"data.train_csv={data['train']}", "data.batch_size=8",
        "loss.perceptual_weight=0", "loss.gan_weight=0", "data.size=64", dev])
    tok_task = TokenizerTask(tok_recipe, setup_context(tok_recipe.run))
    items = SeededItems(tok_task.train_set)
    batch = torch.utils.data.default_collate([items[(i, i)] for i in range(8)])
    steps = 3 if quick else 10
    tok_sec = timed(lambda: tok_task.train_step(batch, 0), device, repeat=steps)
    folder = tok_task.model.save_pretrained(tmp / "tok")

    speedups = {"synthetic": _token_cache_speedup(tmp, folder, data, ar_preset, 16, 64, steps, device, ar_config)}
    # The criterion: the tiny presets (larp-tiny 32x32x8 -> 32 tokens, ar-tiny).
    from larp import LARPTokenizer, tokenizer_preset

    tiny_data = write_synthetic_dataset(tmp / "data_tiny", classes=4, clips_per_class=8, frames=8, size=32, seed=0)
    tiny = LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(tmp / "tok_tiny")
    speedups["tiny"] = _token_cache_speedup(tmp / "tiny", tiny, tiny_data, "ar-tiny", 8, 32, steps, device)
    out = {"tokenizer_preset": tok_preset, "ar_preset": ar_preset, "ar_config": ar_config,
           "tokenizer_train_steps_per_s": 1 / tok_sec, "tokenizer_batch": 8, "ar_batch": 16}
    for pair, rates in speedups.items():  # tiny: larp-tiny + ar-tiny; synthetic: the demo's pair
        out.update({f"ar_{pair}_clips_per_s_reencode": rates["reencode"],
                    f"ar_{pair}_clips_per_s_token_cache": rates["token_cache"],
                    f"ar_{pair}_token_cache_speedup": rates["token_cache"] / rates["reencode"]})
    return out


def _token_cache_speedup(tmp: Path, folder: Path, data: dict, ar_preset: str, frames: int, size: int, steps: int,
                         device: torch.device, ar_config: list[str] | None = None) -> dict[str, float]:
    """Clips/s of AR training that re-encodes every batch against training from a token cache (same model,
    batch 16), data loading included, as training runs it."""
    from larp import LARPTokenizer
    from larp.data.datasets import VideoCSVDataset
    from larp.train.ar_task import ARTask
    from larp.train.config import ARTrainConfig, load_recipe
    from larp.train.engine import SeededItems, setup_context
    from larp.train.token_cache import build_token_cache

    tok = LARPTokenizer.from_pretrained(folder)
    build_token_cache(tok, VideoCSVDataset(data["train"], num_frames=frames, size=size), tmp / "cache",
                      tokenizer_id=str(folder), progress=False, device=device)
    common = [f"model.preset={ar_preset}", f"tokenizer.path={folder}", f"data.size={size}",
              f"data.num_frames={frames}", "data.batch_size=16", f"run.device={device.type}"] + (ar_config or [])
    online = load_recipe(ARTrainConfig, None, common + [f"data.train_csv={data['train']}"])
    cached = load_recipe(ARTrainConfig, None, common + [f"data.token_cache={tmp / 'cache'}"])
    rates = {}
    for name, recipe in (("reencode", online), ("token_cache", cached)):
        task = ARTask(recipe, setup_context(recipe.run))
        ds = SeededItems(task.train_set)
        loader = torch.utils.data.DataLoader(ds, batch_size=16, sampler=[(i % len(ds), i) for i in range(16 * steps)])

        def run_epoch(task=task, loader=loader) -> None:
            for b in loader:  # data loading + encoding (if any) + the step, as training does
                task.train_step(b, 0)

        rates[name] = 16 * steps / timed(run_epoch, device, repeat=1)
    return rates


def bench_data(device: torch.device, quick: bool) -> dict:
    script = HERE / "data_pipeline.py"
    if not script.exists():
        return {"skipped": "benchmarks/data_pipeline.py not found"}
    out = subprocess.run([sys.executable, str(script)] + (["--quick"] if quick else []), capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def run_area(area: str, device: torch.device, quick: bool) -> dict:
    fn = {"tokenizer": bench_tokenizer, "generation": bench_generation, "training": bench_training,
          "data": bench_data}[area]
    t0 = time.perf_counter()
    result = fn(device, quick)
    result["seconds"] = time.perf_counter() - t0
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=AREAS, action="append", help="run only these areas")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        print(json.dumps(run_area(args._child, device, args.quick)))
        return
    report = {"machine": machine(device), "quick": args.quick, "results": {}}
    for area in args.only or AREAS:
        cmd = [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads), "--_child", area]
        cmd += ["--quick"] if args.quick else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            report["results"][area] = {"error": proc.stderr.strip().splitlines()[-1:]}
        else:
            report["results"][area] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{area}: done", file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
