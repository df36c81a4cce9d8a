"""Start or resume a training run in a folder: the entry point shared by the CLI and the demo."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from larp.train.checkpoint import list_checkpoints
from larp.train.config import RunConfig, save_recipe
from larp.train.engine import Engine, setup_context
from larp.utils.config import to_dict

log = logging.getLogger("larp.train")


class RunFolderError(RuntimeError):
    """The run folder already holds a run and neither resume nor overwrite was asked for."""


def prepare_run_folder(out_dir: Path, resume: bool, overwrite: bool) -> None:
    has_run = bool(list_checkpoints(out_dir / "checkpoints")) or (out_dir / "config.yaml").exists()
    if has_run and overwrite:
        shutil.rmtree(out_dir)
    elif has_run and not resume:
        raise RunFolderError(f"{out_dir} already holds a run; pass --resume to continue it or --overwrite to "
                             "start again (which deletes it)")
    out_dir.mkdir(parents=True, exist_ok=True)


def train(recipe: Any, task_cls: type, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    """Train `recipe` with `task_cls(recipe, ctx)` into `recipe.run.out_dir`; returns the last evaluation."""
    run: RunConfig = recipe.run
    out_dir = Path(run.out_dir)
    ctx = setup_context(run)
    try:
        if ctx.is_main:
            prepare_run_folder(out_dir, resume, overwrite)
            save_recipe(recipe, out_dir / "config.yaml")
        if ctx.distributed:
            dist.barrier()
        logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        task = task_cls(recipe, ctx)
        engine = Engine(run, task, out_dir, to_dict(recipe))
        if resume and not engine.resume() and ctx.is_main:
            log.info("no checkpoint in %s: starting from step 0", out_dir / "checkpoints")
        data = recipe.data
        return engine.fit(data.batch_size, data.num_workers)
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()
