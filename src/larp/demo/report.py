"""The demo's pictures and its self-contained HTML report (pictures embedded as data URIs, also kept beside it)."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from larp.data.video_write import to_uint8
from larp.utils.files import atomic_write_bytes


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# A curve: (legend label, steps, values); a panel: (title, y-axis label, curves).
Curve = tuple[str, list[float], list[float]]
Panel = tuple[str, str, list[Curve]]


def series(rows: list[dict[str, Any]], key: str, transform: Any = None) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in metrics.jsonl rows, optionally mapped by `transform`."""
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    return [p[0] for p in pts], [transform(p[1]) if transform else p[1] for p in pts]


def plot_panels(panels: Sequence[Panel], out: Path, title: str) -> Path | None:
    """One PNG with a panel per entry, each holding its curves on one axis; None when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, y, [c for c in curves if c[1]]) for t, y, curves in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    for ax, (name, ylabel, curves) in zip(axes[0], panels, strict=True):
        for label, steps, values in curves:
            style = "o-" if len(steps) < 30 else "-"
            ax.plot(steps, values, style, label=label, markersize=4, linewidth=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return out


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes: the small bitmap font
        return ImageFont.load_default()


def comparison_picture(out: Path, title: str, clips: Sequence[tuple[str, torch.Tensor]], frames: Sequence[int],
                       scale: int = 4, gap: int = 6) -> Path:
    """Clips side by side (one column each, labelled), chosen frames down the rows, every pixel enlarged
    `scale` times by nearest neighbour; a title on top. clips: (label, float video (3, T, H, W) in [0, 1])."""
    videos = [to_uint8(v) for _, v in clips]  # (T, H, W, 3) each
    h, w = videos[0].shape[1:3]
    cell_h, cell_w = h * scale, w * scale
    head, side = 56, 70
    width = side + len(clips) * (cell_w + gap)
    height = head + len(frames) * (cell_h + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill="black", font=_font(18))
    for j, ((label, _), video) in enumerate(zip(clips, videos, strict=True)):
        x = side + j * (cell_w + gap)
        draw.text((x + 4, 32), label, fill="black", font=_font(15))
        for i, t in enumerate(frames):
            y = head + i * (cell_h + gap)
            big = np.repeat(np.repeat(video[t], scale, axis=0), scale, axis=1)
            canvas.paste(Image.fromarray(big), (x, y))
    for i, t in enumerate(frames):
        draw.text((8, head + i * (cell_h + gap) + cell_h // 2 - 8), f"frame {t}", fill="black", font=_font(14))
    atomic_write_bytes(out, lambda tmp: canvas.save(tmp, format="PNG"))
    return out


def spread_frames(count: int, frames: int) -> list[int]:
    """`count` frame indices spread evenly over a clip of `frames` frames, first and last included."""
    return sorted({round(i * (frames - 1) / max(count - 1, 1)) for i in range(count)})


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg"}[path.suffix.lower()]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    return html.escape(str(value))


def write_report(out: Path, title: str, table: Sequence[tuple[str, Any, str]],
                 sections: list[tuple[str, list[tuple[str, Path]]]], notes: Sequence[str] = (),
                 banner: str = "") -> Path:
    """One HTML page: an optional warning `banner`, a metrics table (name, value, one plain line on what it
    means), then sections of captioned pictures (embedded, and linked to the files beside the page)."""
    rows = "\n".join(f"<tr><td><code>{html.escape(k)}</code></td><td>{_fmt(v)}</td><td>{html.escape(e)}</td></tr>"
                     for k, v, e in table)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td{border:1px solid #ccc;padding:4px 10px;font-size:14px}"
             "figure{display:inline-block;margin:8px;vertical-align:top}figcaption{font-size:13px}"
             "img{image-rendering:pixelated;max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append("<p class='banner' style='background:#fde2e2;border:2px solid #c33;padding:10px;"
                     f"font-weight:bold'>{html.escape(banner)}</p>")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append(f"<h2>Metrics</h2><table>{rows}</table>")
    for heading, pictures in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for caption, path in pictures:
            rel = path.relative_to(out.parent) if path.is_relative_to(out.parent) else path
            parts.append(f"<figure><a href='{html.escape(str(rel))}'><img src='{_data_uri(path)}' "
                         f"alt='{html.escape(caption)}'></a><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    atomic_write_bytes(out, lambda tmp: Path(tmp).write_text("\n".join(parts)))
    return out
