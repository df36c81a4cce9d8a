"""The prior ablation's report: the markdown table, the verdicts and the plot of
benchmarks/results/prior_ablation.json (`python benchmarks/prior_ablation.py report` prints them; the runs
themselves are benchmarks/prior_ablation.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def summary(rows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, list[float]]]:
    """(tokens, arm) -> metric -> values over seeds."""
    out: dict[tuple[int, str], dict[str, list[float]]] = {}
    for r in rows:
        vals = {"psnr": r["recon"].get("psnr"), "object_psnr": r["recon"].get("object_psnr"),
                "object_iou": r["recon"].get("object_iou"), "recon_strict": r["recon"].get("strict_accuracy"),
                "prior_top1": r["prior_eval"].get("prior_top1"), "prior_ce": r["prior_eval"].get("prior_ce"),
                "prior_cos": r["prior_eval"].get("prior_cos"),
                "ar_nll": r["ar"].get("val_nll"), "unigram_nll": r["ar"].get("unigram_nll"),
                "sfvd": r["samples"].get("sfvd"), "strict": r["samples"].get("strict_accuracy"),
                "coherent": r["samples"].get("coherent_fraction"), "minutes": r["seconds"]["total"] / 60}
        cell = out.setdefault((r["tokens"], r["prior"]), {})
        for k, v in vals.items():
            if v is not None:
                cell.setdefault(k, []).append(v)
    return out


def _fmt(values: list[float], digits: int, pct: bool = False) -> str:
    if not values:
        return "–"
    scale = 100 if pct else 1
    mean = sum(values) / len(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    half = (max(values) - min(values)) / 2 * scale
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    s = summary(rows)
    cols = [("recon PSNR (dB)", "psnr", 2, False), ("object PSNR (dB)", "object_psnr", 2, False),
            ("object IoU", "object_iou", 3, False), ("prior top-1 (%)", "prior_top1", 1, True),
            ("prior CE (nats)", "prior_ce", 2, False), ("prior cos", "prior_cos", 2, False), ("AR val NLL (nats/token)", "ar_nll", 3, False),
            ("unigram NLL", "unigram_nll", 2, False), ("sample sFVD", "sfvd", 2, False),
            ("strict acc. (%)", "strict", 1, True), ("coherent (%)", "coherent", 1, True),
            ("minutes", "minutes", 0, False)]
    lines = ["| tokens | prior | seeds | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for (n, arm), m in sorted(s.items(), key=lambda kv: (kv[0][0], kv[0][1] == "on")):
        lines.append(f"| {n} | {arm} | {len(m.get('sfvd', m['psnr']))} | "
                     + " | ".join(_fmt(m.get(k, []), d, p) for _, k, d, p in cols) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per token count: is sFVD lower with the prior by more than the seeds' spread (no overlap of the
    seeds' values), and is PSNR within 0.5 dB?"""
    s, out = summary(rows), []
    for n in sorted({k[0] for k in s}):
        on, off = s.get((n, "on"), {}), s.get((n, "off"), {})
        if not on.get("sfvd") or not off.get("sfvd"):
            continue
        mean = {k: sum(v) / len(v) for k, v in (("on", on["sfvd"]), ("off", off["sfvd"]))}
        one_seed = min(len(on["sfvd"]), len(off["sfvd"])) < 2
        separated = "n/a (one seed: no spread)" if one_seed else ("yes" if max(on["sfvd"]) < min(off["sfvd"]) else "no")
        dpsnr = sum(on["psnr"]) / len(on["psnr"]) - sum(off["psnr"]) / len(off["psnr"])
        out.append(f"{n} tokens: sFVD {mean['off']:.2f} without the prior, {mean['on']:.2f} with it; lower with "
                   f"the prior beyond the seeds' spread: {separated}; PSNR with - without "
                   f"{dpsnr:+.2f} dB ({'within' if abs(dpsnr) <= 0.5 else 'outside'} 0.5 dB)")
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(rows)
    panels = [("sfvd", "sample sFVD (lower is better)"), ("ar_nll", "AR validation NLL (nats/token)"),
              ("psnr", "reconstruction PSNR (dB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for arm, colour, label in (("off", "tab:grey", "prior off (weight 0)"), ("on", "tab:blue", "prior on")):
            pts = sorted((n, v[key]) for (n, a), v in s.items() if a == arm and v.get(key))
            if not pts:
                continue
            ns = [n for n, _ in pts]
            means = [sum(v) / len(v) for _, v in pts]
            lo = [m - min(v) for m, (_, v) in zip(means, pts, strict=True)]
            hi = [max(v) - m for m, (_, v) in zip(means, pts, strict=True)]
            shift = [n * (1.04 if arm == "on" else 0.96) for n in ns]  # side by side, visible bars
            ax.errorbar(shift, means, yerr=[lo, hi], marker="o", capsize=4, color=colour, label=label)
            for (_, v), x in zip(pts, shift, strict=True):
                ax.scatter([x] * len(v), v, s=10, color=colour, alpha=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({k[0] for k in s}), [str(n) for n in sorted({k[0] for k in s})])
        ax.set_xlabel("tokens per clip")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Prior ablation on the synthetic set (mean, range over seeds, and each seed)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def command_report(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.results).read_text())
    rows = data["cells"]
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    if data["reruns"]:
        first = {r["cell"]: r for r in rows}
        print("\nreruns (first run -> rerun):")
        for r in data["reruns"]:
            f = first.get(r["cell"])
            if f:
                print(f"{r['cell']}: PSNR {f['recon']['psnr']:.2f} -> {r['recon']['psnr']:.2f}, AR NLL "
                      f"{f['ar']['val_nll']:.3f} -> {r['ar']['val_nll']:.3f}, sFVD {f['samples']['sfvd']:.2f} -> "
                      f"{r['samples']['sfvd']:.2f}, strict {f['samples']['strict_accuracy']:.3f} -> "
                      f"{r['samples']['strict_accuracy']:.3f}")
    if rows and not args.no_plot:
        plot(rows, Path(args.plot))
        print(f"\nplot: {args.plot}")
