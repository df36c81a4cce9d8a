"""What a training run's model card says about the run: read from the run folder's `config.yaml` (the
resolved recipe) and `metrics.jsonl`, so that the export and later rewrites (`larp demo`) agree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from larp.train.token_cache import META
from larp.train.tracking import METRICS

RECIPE = "config.yaml"


def _videos(csv: str) -> str:
    """`csv (N videos)`, or the path alone when it cannot be read."""
    from larp.data.datasets import read_video_csv

    try:
        return f"{csv} ({len(read_video_csv(csv)):,} videos)"
    except Exception:  # a moved or unreadable CSV: the card names it without a count
        return csv


def _token_cache(folder: str) -> str:
    try:
        entries = json.loads((Path(folder) / META).read_text())["num_entries"]
        return f"token cache {folder} ({entries:,} token sequences)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"token cache {folder}"


def _rows(file: Path) -> list[dict[str, Any]]:
    rows = []
    if file.is_file():
        for line in file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if isinstance(row, dict):
                rows.append(row)
    return rows


def run_card_fields(run_dir: str | Path, world_size: int | None = None) -> dict[str, Any]:
    """`recipe`, `metrics` (the last evaluation) and `training` (steps, data, recipe hash, ...) of a run
    folder, as `save_pretrained` and `larp.models.hub.write_card` take them; empty parts are None."""
    run_dir = Path(run_dir)
    file = run_dir / RECIPE
    recipe = yaml.safe_load(file.read_text()) if file.is_file() else None
    training: dict[str, Any] = {}
    if isinstance(recipe, dict):
        run, data = recipe.get("run", {}), recipe.get("data", {})
        optim, model = recipe.get("optim", {}), recipe.get("model", {})
        csvs = data.get("train_csv") or []
        csvs = [csvs] if isinstance(csvs, str) else list(csvs)
        train = [_token_cache(data["token_cache"])] if data.get("token_cache") else [_videos(c) for c in csvs]
        batch = data.get("batch_size", 0) * optim.get("grad_accum_steps", 1)
        training = {"steps": run.get("max_steps"), "train_data": train,
                    "val_data": (f"{_videos(data['val_csv'])}; {data.get('val_clips')} clips per evaluation"
                                 if data.get("val_csv") else None),
                    "tokenizer": (recipe.get("tokenizer") or {}).get("path"),
                    "init_from": model.get("init_from"),
                    "effective_batch": (f"{batch * world_size:,} clips ({data['batch_size']} x "
                                        f"{optim.get('grad_accum_steps', 1)} micro-batches x {world_size} "
                                        "processes)") if world_size and batch else None,
                    "recipe_file": f"{RECIPE} of the run folder",
                    "recipe_sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    rows = _rows(run_dir / METRICS)
    evals = [row for row in rows if any(k.startswith("val/") for k in row)]
    metrics = None
    if evals:
        metrics = {k: v for k, v in evals[-1].items() if k not in ("step", "time")}
        training["eval_step"] = evals[-1].get("step")
    losses = [row for row in rows if "train/loss" in row]
    if losses:
        training["final_train_loss"] = f"{losses[-1]['train/loss']:.4g} (step {losses[-1].get('step')})"
    return {"recipe": recipe if isinstance(recipe, dict) else None, "metrics": metrics,
            "training": training or None}
