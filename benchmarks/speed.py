"""Generation and tokenizer speed, optionally side by side with the reference implementation.

    python benchmarks/speed.py ar                        # AR sampling at the S shape, each decode variant
    python benchmarks/speed.py ar --reference <checkout>  # ... and the reference code on the same weights
    python benchmarks/speed.py tokenizer --reference <checkout>
    python benchmarks/speed.py throughput                # samples/s by batch size (the README table)

Every measurement runs in a fresh process (its own peak RSS, no warm caches from another run); runs of
the variants are interleaved and repeated (--repeat), and each records the load average before and after,
since a shared machine makes single timings unreliable. The weights are random and written once in the
released checkpoint format, so the reference (a checkout of github.com/hywang66/LARP, given by
--reference; its imports need easydict, requests and tensorboard, e.g. installed with `pip install
--target DIR` and passed as --reference-deps DIR) loads exactly the weights larp runs. The JSON goes to
stdout and, with --out, to a file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_process import child_result, emit, parse_args, reference_on_path, spawn  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
AR_VARIANTS = ("eager", "static", "compile", "bfloat16")
TOKENIZER_VARIANTS = ("float32", "bfloat16")


# ------------------------------------------------------------------------------------------- weights
def write_ar(folder: Path, shape: str, num_tokens: int, vocab: int) -> Path:
    from larp import LARPAR, ar_preset
    from larp.models.config import ar_config

    torch.manual_seed(0)
    cfg = ar_preset(shape) if shape.startswith("ar-") else ar_config(shape, num_classes=101, vocab_size=vocab,
                                                                      max_seq_len=num_tokens)
    model = LARPAR(cfg)
    torch.nn.init.normal_(model.output.weight, std=0.02)  # zero-initialised, every logit would tie
    return model.save_pretrained(folder)


def write_tokenizer(folder: Path, preset: str) -> Path:
    from larp import LARPTokenizer, tokenizer_preset

    torch.manual_seed(0)
    model = LARPTokenizer(tokenizer_preset(preset))
    # zero-initialised, every reconstruction would be the same constant and the precisions could not differ
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    return model.save_pretrained(folder)


# -------------------------------------------------------------------------------------- child process
def _load_reference(path: str, deps: str | None) -> None:
    reference_on_path(path, deps)
    import models  # noqa: F401  (registers the reference's model classes)


def child_ar(spec: dict[str, Any]) -> dict[str, Any]:
    folder = Path(spec["folder"])
    config = json.loads((folder / "config.json").read_text())
    batch, cfg_scale, variant = spec["batch"], spec["cfg_scale"], spec["variant"]
    cond = torch.arange(batch) % config["num_classes"]
    out: dict[str, Any] = {}
    if spec["impl"] == "reference":
        from safetensors.torch import load_file

        _load_reference(spec["reference"], spec.get("reference_deps"))
        from models.larp_ar import LARP_AR, ModelArgs

        fields = {f.name for f in dataclasses.fields(ModelArgs)}
        model = LARP_AR(ModelArgs(**{k: v for k, v in config.items() if k in fields}))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.eval()
        if variant == "bfloat16":
            model = model.to(torch.bfloat16)  # what the reference's sample.py does
        torch.manual_seed(0)

        def run() -> torch.Tensor:
            return model.sample(cond, cfg_scale=cfg_scale, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0)
    else:
        from larp import LARPAR
        from larp.sample.generate import generate

        model = LARPAR.from_pretrained(folder).eval()
        options = {"static": variant == "static", "compile": variant == "compile",
                   "dtype": torch.bfloat16 if variant == "bfloat16" else None}
        if variant == "compile":  # the first call compiles: timed apart
            t0 = time.perf_counter()
            generate(model, cond, cfg_scale=cfg_scale, num_tokens=2, **options)
            out["compile_seconds"] = time.perf_counter() - t0

        def run() -> torch.Tensor:
            return generate(model, cond, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(0), **options)
    out.update(_timed(run))
    return out


def child_tokenizer(spec: dict[str, Any]) -> dict[str, Any]:
    folder = Path(spec["folder"])
    config = json.loads((folder / "config.json").read_text())
    variant = spec["variant"]
    size, frames = config["input_size"], config["frame_num"]
    video = torch.rand(spec["clips"], 3, frames, size, size, generator=torch.Generator().manual_seed(0))
    if spec["impl"] == "reference":
        from safetensors.torch import load_file

        _load_reference(spec["reference"], spec.get("reference_deps"))
        from models.larp_tokenizer import LARPTokenizer as Reference

        model = Reference(**config)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.eval()
        model.set_vq_eval_deterministic(True)  # its evaluation's --det: argmax codes, as larp encodes

        def run() -> torch.Tensor:
            with torch.no_grad():
                return model.decode(model.encode(video)["encoded"])
    else:
        from larp import LARPTokenizer
        from larp.utils.device import autocast

        model = LARPTokenizer.from_pretrained(folder).eval()
        dtype = torch.bfloat16 if variant == "bfloat16" else None

        def run() -> torch.Tensor:
            with torch.no_grad(), autocast(torch.device("cpu"), dtype):
                return model.decode(model.encode(video))
    out = _timed(run)
    raw = out.pop("result").float()
    out["psnr_db"] = float(-10 * torch.log10(((raw.clamp(0, 1) - video) ** 2).mean()))
    if spec.get("save_recon"):  # unclamped: the clamp would hide differences outside [0, 1]
        torch.save(raw, spec["save_recon"])
    return out


def child_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    from larp import LARPAR
    from larp.sample.generate import generate

    model = LARPAR.from_pretrained(spec["folder"]).eval()
    rows = []
    generate(model, torch.zeros(1, dtype=torch.long), num_tokens=4)  # first-call costs out of the timings
    for batch in spec["batches"]:
        cond = torch.arange(batch) % model.config.num_classes
        timing = _timed(lambda c=cond: generate(model, c, cfg_scale=spec["cfg_scale"],
                                                generator=torch.Generator().manual_seed(0)))
        timing.pop("result")
        rows.append({"batch": batch, "samples_per_s": batch / timing["seconds"], **timing})
    return {"runs": rows}


def _timed(run) -> dict[str, Any]:
    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    result = run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "loadavg_before": load, "loadavg_after": os.getloadavg(),
            "result": result}


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    out = {"ar": child_ar, "tokenizer": child_tokenizer, "throughput": child_throughput}[spec["task"]](spec)
    out.pop("result", None)
    child_result(spec, out)


# ------------------------------------------------------------------------------------------- parent
def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"runs": runs}
    secs = [r["seconds"] for r in ok]
    cpus = [r["cpu_seconds"] for r in ok]
    return {"median_seconds": statistics.median(secs), "min_seconds": min(secs), "max_seconds": max(secs),
            "median_cpu_seconds": statistics.median(cpus), "max_peak_rss_mib": max(r["peak_rss_mib"] for r in ok),
            "runs": runs}


def machine(threads: int) -> dict[str, Any]:
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "loadavg_at_start": os.getloadavg()}


def compare(report: dict[str, Any], ours: str, ref: str) -> None:
    """Add speed-ups (reference median / ours median; also the wall and CPU time ratios of the same-repeat
    pairs, which saw the same load) to the report."""
    a, b = report["larp"].get(ours, {}), report["reference"].get(ref, {})
    if "median_seconds" not in a or "median_seconds" not in b:
        return
    pairs = [(r["seconds"], s["seconds"], r["cpu_seconds"], s["cpu_seconds"])
             for r, s in zip(a["runs"], b["runs"], strict=False) if "error" not in r and "error" not in s]
    report.setdefault("speedup", {})[f"{ours}_vs_reference_{ref}"] = {
        "median": b["median_seconds"] / a["median_seconds"],
        "paired_wall": [s / r for r, s, _, _ in pairs], "paired_cpu": [sc / rc for _, _, rc, sc in pairs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", nargs="?", choices=["ar", "tokenizer", "throughput"])
    ap.add_argument("--reference", help="a checkout of the reference implementation: time it too")
    ap.add_argument("--reference-deps", help="a folder of extra packages the reference imports (easydict, ...)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", help="comma-separated; ar: eager,static,compile,bfloat16; tokenizer: "
                                       "float32,bfloat16 (default: all)")
    ap.add_argument("--shape", default="S", help="AR size (S, B, L, LP, ...) or an AR preset (ar-synthetic)")
    ap.add_argument("--num-tokens", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cfg-scale", type=float, default=1.25)
    ap.add_argument("--preset", default="larp-l-long", help="tokenizer preset")
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--batches", default="1,4,16,64", help="throughput: batch sizes")
    ap.add_argument("--models", default="ar-synthetic,S", help="throughput: AR presets or sizes")
    args = parse_args(ap, child_main, timeout=1800)
    if args is None:  # a child process: it has measured
        return
    if args.task is None:
        ap.error("the task (ar, tokenizer or throughput) is required")
    tmp = Path(tempfile.mkdtemp(prefix="larp_speed_"))
    report: dict[str, Any] = {"task": args.task, "machine": machine(args.threads)}
    common = {"threads": args.threads, "reference": args.reference, "reference_deps": args.reference_deps}
    if args.task == "throughput":
        report["cfg_scale"] = args.cfg_scale
        report["models"] = {}
        for name in args.models.split(","):
            folder = write_ar(tmp / name, name, args.num_tokens, args.vocab)
            spec = {**common, "task": "throughput", "impl": "larp", "folder": str(folder),
                    "batches": [int(b) for b in args.batches.split(",")], "cfg_scale": args.cfg_scale}
            report["models"][name] = {"config": json.loads((folder / "config.json").read_text()),
                                      **spawn(__file__, spec, tmp, args.timeout)}
            print(f"{name}: done", file=sys.stderr)
    else:
        is_ar = args.task == "ar"
        variants = (args.variants.split(",") if args.variants else list(AR_VARIANTS if is_ar else TOKENIZER_VARIANTS))
        if is_ar:
            folder = write_ar(tmp / "ar", args.shape, args.num_tokens, args.vocab)
            base = {**common, "task": "ar", "folder": str(folder), "batch": args.batch, "cfg_scale": args.cfg_scale}
            report["workload"] = {"shape": args.shape, "num_tokens": args.num_tokens, "vocab": args.vocab,
                                  "batch": args.batch, "cfg_scale": args.cfg_scale}
            ref_variants = ["eager"] + (["bfloat16"] if "bfloat16" in variants else [])
        else:
            folder = write_tokenizer(tmp / "tok", args.preset)
            base = {**common, "task": "tokenizer", "folder": str(folder), "clips": args.clips}
            report["workload"] = {"preset": args.preset, "clips": args.clips, "what": "encode + decode"}
            ref_variants = ["float32"]
        report["larp"] = {v: [] for v in variants}
        report["reference"] = {v: [] for v in ref_variants} if args.reference else {}
        for r in range(args.repeat):  # interleaved, so that a burst of load hits every variant alike
            for v in variants:
                spec = {**base, "impl": "larp", "variant": v}
                if not is_ar and r == 0:
                    spec["save_recon"] = str(tmp / f"recon_{v}.pt")
                report["larp"][v].append(spawn(__file__, spec, tmp, args.timeout))
                print(f"repeat {r}: larp {v}: {report['larp'][v][-1]}", file=sys.stderr)
            for v in report["reference"]:
                spec = {**base, "impl": "reference", "variant": v}
                if not is_ar and r == 0:
                    spec["save_recon"] = str(tmp / f"reference_recon_{v}.pt")
                report["reference"][v].append(spawn(__file__, spec, tmp, args.timeout))
                print(f"repeat {r}: reference {v}: {report['reference'][v][-1]}", file=sys.stderr)
        for side in ("larp", "reference"):
            report[side] = {v: summary(runs) for v, runs in report[side].items()}
        if args.reference:
            for v in variants:
                compare(report, v, "eager" if is_ar and v != "bfloat16" else ("bfloat16" if is_ar else "float32"))
        # the same clips through the same weights: how far the other runs' outputs are from larp's float32
        if not is_ar and (tmp / "recon_float32.pt").exists():
            a = torch.load(tmp / "recon_float32.pt", weights_only=True)
            for key, other in (("bfloat16_vs_float32", "recon_bfloat16.pt"),
                               ("reference_vs_larp_float32", "reference_recon_float32.pt")):
                if (tmp / other).exists():
                    b = torch.load(tmp / other, weights_only=True)
                    report[f"{key}_relative_error"] = float((a - b).norm() / a.norm())
    emit(report, args.out)


if __name__ == "__main__":
    main()
