"""The prior ablation's report: per ablation of benchmarks/results/prior_ablation.json, the markdown table, the
verdicts with effect sizes, and the plot (`python benchmarks/prior_ablation.py report` prints them; the runs
themselves are benchmarks/prior_ablation.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# (column title, row section, key, digits, percent); a column shows when some row has the value.
COLUMNS = [
    ("recon PSNR (dB)", "recon", "psnr", 2, False), ("object PSNR (dB)", "recon", "object_psnr", 2, False),
    ("object IoU", "recon", "object_iou", 3, False), ("recon coherent (%)", "recon", "coherent_fraction", 1, True),
    ("recon sFVD", "recon", "sfvd", 0, False), ("prior top-1 (%)", "prior_eval", "prior_top1", 1, True),
    ("prior CE (nats)", "prior_eval", "prior_ce", 2, False), ("AR val NLL (nats/token)", "ar", "val_nll", 3, False),
    ("sample sFVD", "samples", "sfvd", 0, False), ("strict (%)", "samples", "strict_accuracy", 1, True),
    ("coherent (%)", "samples", "coherent_fraction", 1, True), ("empty (%)", "samples", "empty_fraction", 1, True),
    ("path spread", "samples", "path_spread", 2, False), ("minutes", "seconds", "total", 0, False),
]


def value(row: dict[str, Any], section: str, key: str) -> float | None:
    v = (row.get(section) or {}).get(key)
    if v is None:
        return None
    return v / 60 if section == "seconds" else v


def summary(rows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, list[float]]]:
    """(tokens, arm) -> column key -> values over seeds (in seed order)."""
    out: dict[tuple[int, str], dict[str, list[float]]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        cell = out.setdefault((r["tokens"], r["prior"]), {})
        for _, section, key, _, _ in COLUMNS:
            v = value(r, section, key)
            if v is not None:
                cell.setdefault(f"{section}.{key}", []).append(v)
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
    cols = [c for c in COLUMNS if any(f"{c[1]}.{c[2]}" in m for m in s.values())]
    lines = ["| tokens | prior | seeds | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for (n, arm), m in sorted(s.items(), key=lambda kv: (kv[0][0], kv[0][1] == "on")):
        seeds = max(len(v) for v in m.values())
        lines.append(f"| {n} | {arm} | {seeds} | "
                     + " | ".join(_fmt(m.get(f"{sec}.{k}", []), d, p) for _, sec, k, d, p in cols) + " |")
    return "\n".join(lines)


def paired(rows: list[dict[str, Any]], n: int, section: str, key: str) -> list[float]:
    """on - off per seed that ran both arms (the arms of one seed share the initial weights and draws)."""
    by = {(r["prior"], r["seed"]): value(r, section, key) for r in rows if r["tokens"] == n}
    return [by[("on", s)] - by[("off", s)] for (arm, s) in by
            if arm == "on" and ("off", s) in by and by[("on", s)] is not None and by[("off", s)] is not None]


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _separated(on: list[float], off: list[float], lower: bool) -> str:
    """Better with the prior for every pair of seeds ("yes"), or not; "n/a" with one seed an arm."""
    if min(len(on), len(off)) < 2:
        return "n/a (one seed)"
    return "yes" if (max(on) < min(off) if lower else min(on) > max(off)) else "no"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per token count: better with the prior beyond the seeds' spread (no overlap of the two arms' values)
    on sample sFVD and, where measured, on coherent samples; reconstruction PSNR within 0.5 dB; the paired
    effect sizes (on - off, mean and range over seeds)."""
    s, out = summary(rows), []
    for n in sorted({k[0] for k in s}):
        on, off = s.get((n, "on"), {}), s.get((n, "off"), {})
        if not on.get("samples.sfvd") or not off.get("samples.sfvd"):
            continue

        def separated(key: str, lower: bool, on: dict = on, off: dict = off) -> str:
            return _separated(on[key], off[key], lower)

        parts = [f"sample sFVD {mean(off['samples.sfvd']):.0f} without the prior, {mean(on['samples.sfvd']):.0f} "
                 f"with it (lower with it beyond the seeds' spread: {separated('samples.sfvd', True)})"]
        verdict = separated("samples.sfvd", True) == "yes"
        if on.get("samples.coherent_fraction") and off.get("samples.coherent_fraction"):
            parts.append(f"coherent samples {100 * mean(off['samples.coherent_fraction']):.1f} % without, "
                         f"{100 * mean(on['samples.coherent_fraction']):.1f} % with (higher with it beyond the "
                         f"spread: {separated('samples.coherent_fraction', False)})")
            verdict = verdict and separated("samples.coherent_fraction", False) == "yes"
        dpsnr = mean(on["recon.psnr"]) - mean(off["recon.psnr"])
        parts.append(f"PSNR with - without {dpsnr:+.2f} dB ({'within' if abs(dpsnr) <= 0.5 else 'outside'} 0.5 dB)")
        verdict = verdict and abs(dpsnr) <= 0.5
        effects = []
        for label, sec, key, scale, unit in (("sample sFVD", "samples", "sfvd", 1, ""),
                                              ("coherent", "samples", "coherent_fraction", 100, " points"),
                                              ("strict", "samples", "strict_accuracy", 100, " points"),
                                              ("AR NLL", "ar", "val_nll", 1, " nats")):
            d = [x * scale for x in paired(rows, n, sec, key)]
            if d:
                effects.append(f"{label} {mean(d):+.3g}{unit} (seeds {min(d):+.3g} to {max(d):+.3g})")
        out.append(f"{n} tokens: " + "; ".join(parts) + f". Verdict: {'met' if verdict else 'not met'}. "
                   "Paired effect of the prior (on - off, same seed): " + ", ".join(effects))
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(rows)
    panels = [(k, t) for k, t in (("samples.sfvd", "sample sFVD (lower is better)"),
                                  ("samples.coherent_fraction", "coherent samples (fraction)"),
                                  ("ar.val_nll", "AR validation NLL (nats/token)"),
                                  ("recon.psnr", "reconstruction PSNR (dB)"))
              if any(k in m for m in s.values())]
    tokens = sorted({k[0] for k in s})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.5))
    for ax, (key, name) in zip(axes, panels, strict=True):
        for arm, colour, label in (("off", "tab:grey", "prior off (weight 0)"), ("on", "tab:blue", "prior on")):
            pts = [(i, s[(n, arm)][key]) for i, n in enumerate(tokens) if s.get((n, arm), {}).get(key)]
            if not pts:
                continue
            xs = [i + (0.12 if arm == "on" else -0.12) for i, _ in pts]
            means = [sum(v) / len(v) for _, v in pts]
            lo = [m - min(v) for m, (_, v) in zip(means, pts, strict=True)]
            hi = [max(v) - m for m, (_, v) in zip(means, pts, strict=True)]
            ax.errorbar(xs, means, yerr=[lo, hi], fmt="o", capsize=4, color=colour, label=label)
            for (_, v), x in zip(pts, xs, strict=True):
                ax.scatter([x] * len(v), v, s=12, color=colour, alpha=0.5)
        ax.set_xticks(range(len(tokens)), [str(n) for n in tokens])
        ax.set_xlim(-0.6, len(tokens) - 0.4)
        ax.set_xlabel("tokens per clip")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def command_report(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.results).read_text())
    for name, entry in data["ablations"].items():
        rows = entry["cells"]
        commits = sorted({r["commit"][:10] for r in rows})
        print(f"## {name} (recipe {entry['recipe_hash']}, library {', '.join(commits)})\n")
        print(table(rows))
        print()
        print("\n".join(verdicts(rows)))
        first = {r["cell"]: r for r in rows}
        for r in entry.get("reruns", []):
            f = first.get(r["cell"])
            if f:
                print(f"rerun {r['cell']}: PSNR {f['recon']['psnr']:.2f} -> {r['recon']['psnr']:.2f}, AR NLL "
                      f"{f['ar']['val_nll']:.3f} -> {r['ar']['val_nll']:.3f}, sample sFVD "
                      f"{f['samples']['sfvd']:.1f} -> {r['samples']['sfvd']:.1f}")
        print()
    entry = data["ablations"].get(args.ablation)
    if entry and entry["cells"] and not args.no_plot:
        plot(entry["cells"], Path(args.plot), f"Prior ablation, {args.ablation}: mean, range over seeds, each seed")
        print(f"plot: {args.plot}")
