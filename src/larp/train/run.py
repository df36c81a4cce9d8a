"""Start or resume a training run in a folder: the entry point shared by the CLI and the demo."""

from __future__ import annotations

import contextlib
import json
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
from larp.utils.outputs import LOCK_NAME, MANIFEST, exclusive_output

log = logging.getLogger("larp.train")

# Everything a training run writes in its folder; `--overwrite` deletes these and nothing else.
RUN_FILES = frozenset({"config.yaml", "checkpoints", "best", "best.json", METRICS, "model", "samples",
                       "tensorboard", "wandb", WANDB_ID})


class RunFolderError(LarpError):
    """The run folder already holds a run and neither resume nor overwrite was asked for, or it holds files
    that are not a run's."""


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or name in (LOCK_NAME, MANIFEST) or name.startswith((TMP_PREFIX, OLD_PREFIX,
                                                                                   f".{METRICS}"))


def run_inputs(recipe: Any) -> list[str]:
    """The files and folders a recipe reads (tokenizer, token cache, CSVs, weights to fine-tune from)."""
    found: list[str] = []
    tokenizer = getattr(recipe, "tokenizer", None)
    found.append(getattr(tokenizer, "path", "") if not isinstance(tokenizer, str) else "")
    data, model = getattr(recipe, "data", None), getattr(recipe, "model", None)
    csvs = getattr(data, "train_csv", "")
    found += list(csvs) if isinstance(csvs, (list, tuple)) else [csvs]
    found += [getattr(data, "val_csv", ""), getattr(data, "token_cache", ""), getattr(model, "init_from", "")]
    return [str(p) for p in found if p]


def _check_inputs_kept(out_dir: Path, inputs: list[str]) -> None:
    """A run never deletes what it is about to read: refuse when an input lies in a file --overwrite removes."""
    if not out_dir.is_dir():
        return
    for name in inputs:
        source = Path(name).expanduser()
        if not source.exists():
            continue  # a hub id, or a missing file that the task reports itself
        source = source.resolve()
        for entry in out_dir.iterdir():
            if _is_run_file(entry.name) and entry.name not in (LOCK_NAME, MANIFEST):
                target = entry.resolve()
                if source == target or target in source.parents:
                    raise RunFolderError(f"{name} is an input of this run but lies in {entry}, which --overwrite "
                                         "would delete: copy it elsewhere first, or choose another run folder")


def prepare_run_folder(out_dir: Path, resume: bool, overwrite: bool, inputs: list[str] | None = None) -> None:
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
        _check_inputs_kept(out_dir, inputs or [])
        for p in out_dir.iterdir():
            if p.name in (LOCK_NAME, MANIFEST):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    elif has_run and not resume:
        raise RunFolderError(f"{out_dir} already holds a run; pass --resume to continue it or --overwrite to "
                             "start again (which deletes it)")
    out_dir.mkdir(parents=True, exist_ok=True)


def _differences(old: Any, new: Any, where: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{where}.{k}")]
    return [] if old == new else [f"{where}: {old!r} there, {new!r} here"]


def check_same_model(out_dir: Path, recipe: Any) -> None:
    """Resuming continues the run's own model: a recipe whose model section differs from the saved
    config.yaml's (another preset, another size) is refused before any checkpoint is read."""
    import yaml

    saved_file = out_dir / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{saved_file} is not readable YAML ({exc}); it cannot be resumed") from exc
    new = json.loads(json.dumps(to_dict(recipe)))  # tuples as the saved YAML has them: lists
    diff = _differences(saved.get("model") if isinstance(saved, dict) else None, new.get("model"), "model")
    if diff:
        shown = "; ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")
        raise RunFolderError(f"{out_dir} holds a run of another model ({shown}); resume it with its own "
                             "recipe (its config.yaml), or start a new run in another folder")


def train(recipe: Any, task_cls: type, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    """Train `recipe` with `task_cls(recipe, ctx)` into `recipe.run.out_dir`; returns the last evaluation.

    The recipe is saved as the folder's `config.yaml` once the task is set up, so a run that fails during
    set-up (a missing file, a bad value) leaves no run behind and can simply be started again."""
    recipe.validate()
    run: RunConfig = recipe.run
    out_dir = Path(run.out_dir)
    ctx = setup_context(run)
    held = contextlib.ExitStack()
    try:
        if ctx.is_main:
            check_logging(run)
            # One run per folder: a second `larp train` into it stops here, naming the first.
            held.enter_context(exclusive_output(out_dir, "train"))
            prepare_run_folder(out_dir, resume, overwrite, run_inputs(recipe))
            if resume:
                check_same_model(out_dir, recipe)
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
        held.close()
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()
