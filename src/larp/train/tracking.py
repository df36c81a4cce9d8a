"""Where a run's metrics go: `metrics.jsonl` always, TensorBoard and Weights & Biases when asked."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from larp.train.config import RunConfig
from larp.utils.errors import LarpError

log = logging.getLogger("larp.train")

METRICS = "metrics.jsonl"
WANDB_ID = "wandb_id.txt"  # the W&B run of this folder, so that a resumed run continues it


def check_logging(run: RunConfig) -> None:
    """Fail before anything is written when the asked-for logging packages are missing."""
    if run.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as exc:
            raise LarpError("run.tensorboard=true needs the tensorboard package: pip install -e '.[logging]'"
                            ) from exc
    if run.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise LarpError("run.wandb=true needs the wandb package: pip install -e '.[logging]'") from exc


def keep_rows_up_to(file: Path, step: int) -> None:
    """Drop the rows of a metrics file logged after `step` (and a torn last line), so that steps replayed
    after a resume are not recorded twice; `step` 0 empties it."""
    if not file.exists():
        return
    kept = []
    for line in file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, file)


class MetricsLogger:
    """JSONL always; TensorBoard and Weights & Biases when asked (rank 0 only)."""

    def __init__(self, out_dir: Path, run: RunConfig, enabled: bool, config: dict[str, Any]):
        self.enabled = enabled
        self.file = out_dir / METRICS
        self.out_dir, self.run, self.config = out_dir, run, config
        self.tb = self.wandb = None

    def start(self, step: int) -> None:
        """Open the writers for a run that continues after `step` (0: a new run); earlier rows are kept."""
        if not self.enabled:
            return
        check_logging(self.run)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        keep_rows_up_to(self.file, step)
        if self.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, TensorBoard drops its own events logged after `step` (purge_step and later).
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=step + 1 if step else None)
        if self.run.wandb:
            import wandb

            id_file = self.out_dir / WANDB_ID
            run_id = id_file.read_text().strip() if id_file.exists() and step else ""
            if not run_id:
                run_id = uuid.uuid4().hex[:16]
                id_file.write_text(run_id + "\n")
            self.wandb = wandb.init(project=self.run.wandb_project, dir=str(self.out_dir), config=self.config,
                                    id=run_id, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        with self.file.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
