"""GPU benchmark: AR decode steps at the released LP size and tokenizer-L throughput (one JSON document).

    python benchmarks/gpu_bench.py --out gpu_bench.json      # on a CUDA machine (about 3 minutes on an H200)
    python benchmarks/gpu_bench.py --dry                     # tiny models on the CPU: checks the script runs

AR: the LP model (632M parameters, random weights) cast to bfloat16; for batch 1, 16 and 64 (rows of one
step; classifier-free guidance doubles them) the milliseconds of one decode step at position 512 of a
1,024-token request, three ways: eager (attention over the filled prefix), the static step replayed as a
CUDA graph (the whole cache, masked), and torch.compile's "reduce-overhead" at batch 1. Each is set against
the memory-bandwidth limit: the bytes a step must read (weights, plus the KV cache it attends to) over the
card's bandwidth (--bandwidth, 4.8 TB/s for an H200). Tokenizer: the L preset (768 wide, 12 + 12 layers,
16x128x128 clips, random weights), encode + decode clips per second in float32 and under bfloat16 autocast."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _events_ms(fn, iters: int, device: torch.device) -> float:
    """Median milliseconds of `fn()` (device time with CUDA events; wall time on a CPU)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def random_ar(preset: str, device: torch.device, dtype: torch.dtype):
    from larp import LARPAR, ar_preset

    with torch.device("meta"):
        model = LARPAR(ar_preset(preset))
    model = model.to_empty(device=device).to(dtype)
    g = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # never time on zeros: N(0, 0.02) everywhere, norms at 1
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).mul_(0.02))
    return model.eval()


def bench_ar(preset: str, batches: list[int], position: int, device: torch.device, dtype: torch.dtype,
             bandwidth: float, iters: int, compile_batch: int | None, out: dict[str, Any] | None = None,
             save=lambda: None) -> dict[str, Any]:
    """Fills and returns `out` (a new dict by default), calling `save()` after each batch size."""
    model = random_ar(preset, device, dtype)
    # A step reads one row of the embeddings and position table: count the layers, the norm and the head.
    weight_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                       if name.startswith(("layers.", "norm.", "output.")))
    length = model.cond_length + model.num_tokens - 1
    out = {} if out is None else out
    out.update({"preset": preset, "dtype": str(dtype).removeprefix("torch."),
                "parameters": sum(p.numel() for p in model.parameters()), "weight_bytes": weight_bytes,
                "position": position, "cache_length": length, "bandwidth_bytes_per_s": bandwidth,
                "weights_limit_ms": 1000 * weight_bytes / bandwidth, "runs": []})
    for b in batches:
        row = _bench_batch(model, b, position, length, weight_bytes, bandwidth, iters, compile_batch == b)
        out["runs"].append(row)
        print(f"AR {preset} batch {b}: {row}", file=sys.stderr, flush=True)
        save()  # what is measured so far survives a timeout of what follows
    return out


def _bench_batch(model, b: int, position: int, length: int, weight_bytes: int, bandwidth: float, iters: int,
                 compiled: bool) -> dict[str, Any]:
    from larp.sample.generate import compiled_decode_step

    device = model.output.weight.device
    attn = model.layers[0].attention
    caches = model.new_caches(b, length)
    for c in caches:
        c.k.normal_()
        c.v.normal_()
    tokens = torch.randint(0, model.config.vocab_size, (b,), device=device)
    kv_row = 2 * len(model.layers) * attn.n_kv_head * attn.head_dim * caches[0].k.element_size()
    row: dict[str, Any] = {"batch": b}
    with torch.no_grad():
        row["eager_ms"] = _events_ms(lambda: model.decode_step(tokens, caches, position), iters, device)
        row["eager_limit_ms"] = 1000 * (weight_bytes + b * (position + 1) * kv_row) / bandwidth
        if device.type == "cuda":
            pos = torch.tensor(position, device=device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the capture, as CUDA graphs require
                for _ in range(2):
                    model.decode_step(tokens, caches, pos)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model.decode_step(tokens, caches, pos)
            row["cuda_graph_ms"] = _events_ms(graph.replay, iters, device)
            row["cuda_graph_limit_ms"] = 1000 * (weight_bytes + b * length * kv_row) / bandwidth
            del graph
            if compiled:
                step = compiled_decode_step(device)
                for c in caches:
                    torch._dynamo.mark_static_address(c.k)
                    torch._dynamo.mark_static_address(c.v)
                t0 = time.perf_counter()
                for _ in range(3):
                    step(model, tokens, caches, pos)
                torch.cuda.synchronize()
                row["compile_seconds"] = time.perf_counter() - t0
                row["compiled_ms"] = _events_ms(lambda: step(model, tokens, caches, pos), iters, device)
                row["compiled_limit_ms"] = row["cuda_graph_limit_ms"]
    for key in ("eager", "cuda_graph", "compiled"):
        if f"{key}_ms" in row:
            row[f"{key}_x_limit"] = row[f"{key}_ms"] / row[f"{key}_limit_ms"]
    return row


def bench_tokenizer(preset: str, batch: int, device: torch.device, iters: int) -> dict[str, Any]:
    from larp import LARPTokenizer, tokenizer_preset
    from larp.utils.device import autocast

    torch.manual_seed(0)
    tok = LARPTokenizer(tokenizer_preset(preset)).to(device).eval()
    video = torch.rand(batch, *tok.video_shape, device=device)
    out: dict[str, Any] = {"preset": preset, "batch": batch}
    with torch.no_grad():
        ref = tok.decode(tok.encode(video)).float()
        for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            with autocast(device, dtype):
                ms = _events_ms(lambda: tok.decode(tok.encode(video)), iters, device)  # noqa: B023
                rec = tok.decode(tok.encode(video)).float()
            out[name] = {"ms_per_batch": ms, "clips_per_s": 1000 * batch / ms,
                         "psnr_vs_float32_db": float(-10 * torch.log10(((rec - ref) ** 2).mean().clamp_min(1e-20)))}
            print(f"tokenizer {preset} {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--dry", action="store_true", help="tiny models on the CPU (checks that the script runs)")
    ap.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes per second (H200: 4.8e12)")
    ap.add_argument("--only", choices=["ar", "tokenizer"], action="append")
    args = ap.parse_args()
    device = torch.device("cpu" if args.dry else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device (use --dry to check the script on a CPU)")
    report: dict[str, Any] = {"torch": torch.__version__, "dry": args.dry}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    areas = args.only or ["tokenizer", "ar"]
    t0 = time.perf_counter()

    def save() -> None:
        report["seconds"] = time.perf_counter() - t0
        if device.type == "cuda":
            report["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    if "tokenizer" in areas:
        report["tokenizer"] = (bench_tokenizer("larp-tiny", 2, device, 2) if args.dry
                               else bench_tokenizer("larp-l-long", 8, device, 10))
        save()
    if "ar" in areas:
        if args.dry:
            report["ar"] = bench_ar("ar-tiny", [1, 4], 16, device, torch.float32, args.bandwidth, 5, None)
        else:
            report["ar"] = {}
            bench_ar("larp-ar-lp-ucf101", [1, 16, 64], 512, device, torch.bfloat16, args.bandwidth, 50,
                     compile_batch=1, out=report["ar"], save=save)
    save()
    print(json.dumps(report, indent=2))
    if "ar" in report:
        print("\nbatch  eager ms (x limit)  CUDA graph ms (x limit)  compiled ms (x limit)", file=sys.stderr)
        for r in report["ar"]["runs"]:
            cells = [f"{r[k + '_ms']:.3f} ({r[k + '_x_limit']:.2f}x)" if k + "_ms" in r else "-"
                     for k in ("eager", "cuda_graph", "compiled")]
            print(f"{r['batch']:>5}  {cells[0]:>18}  {cells[1]:>23}  {cells[2]:>21}", file=sys.stderr)


if __name__ == "__main__":
    main()
