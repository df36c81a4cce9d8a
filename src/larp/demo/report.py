"""Plots and a self-contained HTML report (pictures embedded as data URIs, files also kept beside it)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(runs: dict[str, Path], keys: Sequence[str], out: Path, title: str) -> Path | None:
    """Plot `keys` from each run's metrics.jsonl against the step into a PNG; None when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for run_name, file in runs.items():
        rows = read_jsonl(file)
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                series.append((f"{run_name}: {key}", pts))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for ax, (label, pts) in zip(axes[0], series, strict=True):
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg"}[path.suffix.lower()]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def write_report(out: Path, title: str, metrics: dict[str, Any], sections: list[tuple[str, list[tuple[str, Path]]]],
                 notes: Sequence[str] = ()) -> Path:
    """One HTML page: a metrics table, then sections of captioned pictures (embedded and linked)."""
    rows = "\n".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in metrics.items())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td{border:1px solid #ccc;padding:4px 10px}"
             "figure{display:inline-block;margin:8px;vertical-align:top}figcaption{font-size:13px}"
             "img{image-rendering:pixelated;max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append(f"<h2>Metrics</h2><table>{rows}</table>")
    for heading, pictures in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for caption, path in pictures:
            rel = path.relative_to(out.parent) if path.is_relative_to(out.parent) else path
            parts.append(f"<figure><a href='{html.escape(str(rel))}'><img src='{_data_uri(path)}' "
                         f"alt='{html.escape(caption)}'></a><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts))
    return out
