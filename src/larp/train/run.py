"""Start or resume a training run in a folder: the entry point shared by the CLI and the demo."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from larp.train.checkpoint import OLD_PREFIX, TMP_PREFIX, list_checkpoints
from larp.train.config import RunConfig, effective_batch, save_recipe
from larp.train.engine import Engine, check_batch_fits, setup_context
from larp.train.tracking import METRICS, WANDB_ID, check_logging
from larp.utils.config import to_dict
from larp.utils.errors import LarpError

log = logging.getLogger("larp.train")

# Everything a training run writes in its folder; `--overwrite` deletes these and nothing else.
RUN_FILES = frozenset({"config.yaml", "checkpoints", "best", "best.json", METRICS, "model", "samples",
                       "tensorboard", "wandb", WANDB_ID})


class RunFolderError(LarpError):
    """The run folder already holds a run and neither resume nor overwrite was asked for, or it holds files
    that are not a run's."""


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or name.startswith((TMP_PREFIX, OLD_PREFIX, f".{METRICS}"))


def prepare_run_folder(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Make `out_dir` ready for a run: refuse to mix a new run with an old one unless `resume` (continue it)
    or `overwrite` (delete the old run's files first). A folder holding anything else is refused, so that
    `overwrite` never deletes what a run did not write."""
    has_run = bool(list_checkpoints(out_dir / "checkpoints")) or (out_dir / "config.yaml").exists()
    others = sorted(p.name for p in out_dir.iterdir() if not _is_run_file(p.name)) if out_dir.is_dir() else []
    if others and not resume:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise RunFolderError(f"{out_dir} holds files that a training run does not write ({shown}); choose an "
                             "empty or new folder (--out / run.out_dir)"
                             + (": --overwrite deletes only a run's own files" if overwrite else ""))
    if has_run and overwrite:
        for p in out_dir.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    elif has_run and not resume:
        raise RunFolderError(f"{out_dir} already holds a run; pass --resume to continue it or --overwrite to "
                             "start again (which deletes it)")
    out_dir.mkdir(parents=True, exist_ok=True)


def _check_init_source(recipe: Any, out_dir: Path, overwrite: bool) -> None:
    source = Path(recipe.model.init_from).expanduser()
    if overwrite and recipe.model.init_from and source.exists():
        inside = out_dir.resolve() in (source.resolve(), *source.resolve().parents)
        if inside:
            raise RunFolderError(f"model.init_from={recipe.model.init_from} lies inside {out_dir}, which --overwrite "
                                 "would delete: copy those weights elsewhere first")


def train(recipe: Any, task_cls: type, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    """Train `recipe` with `task_cls(recipe, ctx)` into `recipe.run.out_dir`; returns the last evaluation.

    The recipe is saved as the folder's `config.yaml` once the task is set up, so a run that fails during
    set-up (a missing file, a bad value) leaves no run behind and can simply be started again."""
    recipe.validate()
    run: RunConfig = recipe.run
    out_dir = Path(run.out_dir)
    ctx = setup_context(run)
    try:
        if ctx.is_main:
            check_logging(run)
            _check_init_source(recipe, out_dir, overwrite)
            prepare_run_folder(out_dir, resume, overwrite)
        if ctx.distributed:
            dist.barrier()
        logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        task = task_cls(recipe, ctx)
        check_batch_fits(len(task.train_dataset()), recipe.data.batch_size, ctx.world_size)  # before the run exists
        if ctx.is_main:
            save_recipe(recipe, out_dir / "config.yaml")
        if ctx.is_main:
            log.info("effective batch %d: %d clips x %d micro-batches (optim.grad_accum_steps) x %d processes",
                     effective_batch(recipe, ctx.world_size), recipe.data.batch_size, recipe.optim.grad_accum_steps,
                     ctx.world_size)
        engine = Engine(run, task, out_dir, to_dict(recipe))
        if resume and not engine.resume() and ctx.is_main:
            log.info("no checkpoint in %s: starting from step 0", out_dir / "checkpoints")
        data = recipe.data
        return engine.fit(data.batch_size, data.num_workers, recipe.optim.grad_accum_steps)
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()
