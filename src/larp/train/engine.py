"""The one training loop, shared by the tokenizer and AR trainings.

The engine knows nothing of LARP. A task builds its models, optimisers and data and implements
`train_step`, `evaluate`, `export`, `state_dict` / `load_state_dict`; the engine runs the steps, evaluates
and checkpoints on schedule, keeps the best evaluated weights, resumes exactly (weights, optimisers, RNG
states and data position), logs, handles SIGINT/SIGTERM by checkpointing, and runs under torchrun with
DistributedDataParallel. With gradient accumulation a step takes k micro-batches; steps, schedules and
checkpoints count optimiser steps, so a checkpoint never falls inside an accumulation."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from larp.train.checkpoint import (
    list_checkpoints,
    load_latest,
    prune_checkpoints,
    remove_temporaries,
    save_checkpoint,
    write_checkpoint,
)
from larp.train.config import RunConfig
from larp.train.tracking import MetricsLogger
from larp.utils.device import autocast
from larp.utils.errors import LarpError
from larp.utils.files import write_json

log = logging.getLogger("larp.train")


def check_batch_fits(num_items: int, batch_size: int, world_size: int) -> None:
    """A ValueError when a process's share of the training set is smaller than one batch."""
    if num_items // world_size < batch_size:
        raise ValueError(f"the training set has {num_items} items, fewer than one batch of {batch_size} "
                         f"per process ({world_size} processes)")


def postfix(metrics: dict[str, Any], rate: float, count: int = 4) -> dict[str, str]:
    """The progress bar's figures: the step's first `count` metrics, then the one rate (clips/s)."""
    shown = {k: f"{float(v):.4g}" for k, v in list(metrics.items())[:count] if k != "clips_per_s"}
    return shown | {"clips/s": f"{rate:.1f}"}


class TrainingDiverged(LarpError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(LarpError):
    """SIGINT or SIGTERM arrived; a checkpoint was written before stopping."""


# ------------------------------------------------------------------------------------------- context
@dataclass
class TrainContext:
    """Where and how a task runs: device, distributed rank, mixed precision."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"
    compile: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def amp_dtype(self) -> torch.dtype:
        """The mixed-precision dtype of `run.precision` (float32: none)."""
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel under torchrun, the module itself otherwise."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        return torch.compile(module) if self.compile else module  # type: ignore[return-value]

    def no_sync(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """DDP's `no_sync` unless `sync`: accumulate gradients locally on all micro-batches but the last."""
        inner = getattr(module, "_orig_mod", module)  # under torch.compile
        if sync or not isinstance(inner, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return inner.no_sync()


def setup_context(run: RunConfig) -> TrainContext:
    """Read torchrun's environment, start the process group, pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = run.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LarpError(f"run.device={run.device!r} but CUDA is not available on this machine")
        device = torch.device("cuda", local if world > 1 else (torch.device(want).index or 0))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = run.tf32
        torch.backends.cudnn.allow_tf32 = run.tf32
    else:
        device = torch.device(want)
    if run.precision != "fp32" and device.type != "cuda":
        raise LarpError(f"run.precision={run.precision!r} needs CUDA; use fp32 on {device.type}")
    if run.compile and device.type != "cuda":
        raise LarpError("run.compile=true is meant for CUDA; leave it off on the CPU")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    return TrainContext(device=device, rank=rank, world_size=world, precision=run.precision, compile=run.compile)


# ---------------------------------------------------------------------------------------------- data
class SeededItems(Dataset):
    """Wraps a dataset with `sample(index, rng)` (or `load`): the sampler hands out (index, seed) pairs, so that every
    random choice of an item (clip start, flip) is a pure function of the run's seed and data position,
    whatever the number of workers, and a resumed run sees exactly the same clips."""

    def __init__(self, base: Any):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        pick = getattr(self.base, "sample", None) or self.base.load  # `sample` skips unreadable videos
        return pick(index, np.random.default_rng(seed))


class ResumableSampler(Sampler):
    """Seeded permutation per epoch, sharded over ranks, startable mid-epoch."""

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_items, self.seed, self.rank, self.world_size = num_items, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return self.num_items // self.world_size

    def __len__(self) -> int:
        return self.per_rank() - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=g)[: self.per_rank() * self.world_size]
        mine = order[self.rank::self.world_size].tolist()
        for pos in range(self.start, len(mine)):
            # Item seed from (run seed, epoch, global position): independent of rank count and workers.
            yield mine[pos], (self.seed * 7_919 + self.epoch) * 1_000_003 + pos * self.world_size + self.rank


# ----------------------------------------------------------------------------------------------- task
class Task(Protocol):
    ctx: TrainContext

    def train_dataset(self) -> Any: ...  # has __len__ and sample(index, rng) or load(index, rng) -> item dict

    # One optimiser step on `batches`: the micro-batches of one step (one batch without accumulation).
    def train_step(self, batches: list[dict[str, Any]], step: int) -> dict[str, torch.Tensor | float]: ...

    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]: ...

    def export(self, folder: Path) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # Optional: `close()`, called when `fit` ends (e.g. to remove hooks).


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": json.dumps(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Engine:
    def __init__(self, run: RunConfig, task: Task, out_dir: Path, config_for_logs: dict[str, Any] | None = None):
        self.run, self.task, self.ctx = run, task, task.ctx
        self.out_dir = out_dir
        self.ckpt_dir = out_dir / "checkpoints"
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # loader batches (micro-batches) of this epoch already used
        self.best: float | None = None
        self._stop_signal: int | None = None
        self.logger = MetricsLogger(out_dir, run, self.ctx.is_main, config_for_logs or {})

    # ----------------------------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {"task": self.task.state_dict(), "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "best": self.best, "rng": _rng_state(self.ctx.device),
                "world_size": self.ctx.world_size}

    def resume(self) -> bool:
        """Load the newest readable checkpoint; False when there is none."""
        found = load_latest(self.ckpt_dir)
        if found is None:
            return False
        folder, state = found
        if state.get("world_size", 1) != self.ctx.world_size:
            raise LarpError(f"{folder} was written by {state.get('world_size')} processes; resuming with "
                               f"{self.ctx.world_size} would change the data order")
        self.task.load_state_dict(state["task"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best = state["best"]
        _set_rng_state(state["rng"], self.ctx.device)
        if self.ctx.distributed:  # every rank restores its own RNG; the model state is rank 0's
            torch.manual_seed(self.run.seed + 1000 * self.ctx.rank + self.step)
        if self.ctx.is_main:
            log.info("resumed from %s (step %d)", folder, self.step)
        return True

    def save(self) -> Path | None:
        if not self.ctx.is_main:
            return None
        folder = save_checkpoint(self.ckpt_dir, self.step, self._state())
        prune_checkpoints(self.ckpt_dir, self.run.keep_last)
        return folder

    # ------------------------------------------------------------------------------------ loop
    def _loader(self, sampler: ResumableSampler, batch_size: int, num_workers: int) -> DataLoader:
        return DataLoader(SeededItems(self.task.train_dataset()), batch_size=batch_size, sampler=sampler,
                          num_workers=num_workers, drop_last=True, pin_memory=self.ctx.device.type == "cuda",
                          persistent_workers=False,
                          # Its own generator, so creating an iterator never draws from the global RNG.
                          generator=torch.Generator().manual_seed(self.run.seed))

    def _batches(self, batch_size: int, num_workers: int) -> Iterator[dict[str, Any]]:
        dataset = self.task.train_dataset()
        sampler = ResumableSampler(len(dataset), self.run.seed, self.ctx.rank, self.ctx.world_size)
        check_batch_fits(len(dataset), batch_size, self.ctx.world_size)
        while True:
            sampler.set_position(self.epoch, self.batch_in_epoch * batch_size)
            yield from self._loader(sampler, batch_size, num_workers)
            self.epoch += 1
            self.batch_in_epoch = 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _diverged(self, loss: float) -> TrainingDiverged:
        kept = list_checkpoints(self.ckpt_dir)
        where = (f"the last good checkpoint, {kept[-1]}, is kept (resume with --resume, perhaps with a lower "
                 "learning rate)" if kept else
                 f"no checkpoint had been written yet (run.ckpt_every={self.run.ckpt_every}): start again, "
                 "perhaps with a lower learning rate")
        # Steps count from 1 in logs and checkpoint names: the failing one is the step after `self.step`.
        return TrainingDiverged(f"loss became {loss} at step {self.step + 1}; stopping: {where}")

    def fit(self, batch_size: int, num_workers: int, grad_accum_steps: int = 1) -> dict[str, float]:
        """Train to `run.max_steps` optimiser steps of `grad_accum_steps` micro-batches of `batch_size`
        (per process), returning the last evaluation's metrics."""
        run, ctx = self.run, self.ctx
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        if ctx.is_main:
            remove_temporaries(self.ckpt_dir)  # left by a process killed while writing a checkpoint
            remove_temporaries(self.out_dir)
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                previous[sig] = signal.signal(sig, self._on_signal)
        last_eval: dict[str, float] = {}
        bar = tqdm(total=run.max_steps, initial=self.step, disable=not ctx.is_main, desc="train",
                   dynamic_ncols=True)
        t0, clips = time.perf_counter(), 0
        try:
            self.logger.start(self.step)
            batches = self._batches(batch_size, num_workers)
            while self.step < run.max_steps:
                micro = []
                for _ in range(grad_accum_steps):
                    micro.append(next(batches))
                    self.batch_in_epoch += 1
                metrics = self.task.train_step(micro, self.step)
                loss = float(metrics.get("loss", 0.0))
                if not math.isfinite(loss):
                    raise self._diverged(loss)
                self.step += 1
                clips += batch_size * grad_accum_steps * ctx.world_size
                if self.step % run.log_every == 0 or self.step == run.max_steps:
                    rate = clips / max(time.perf_counter() - t0, 1e-9)
                    shown = {f"train/{k}": float(v) for k, v in metrics.items()}
                    bar.set_postfix(postfix(metrics, rate))
                    shown["train/clips_per_s"] = rate
                    self.logger.log(self.step, shown)
                    t0, clips = time.perf_counter(), 0
                bar.update(1)
                done = self.step == run.max_steps
                if run.eval_every and (self.step % run.eval_every == 0 or done):
                    last_eval = self._evaluate()
                    self._track_best(last_eval)
                if (run.ckpt_every and self.step % run.ckpt_every == 0) or done or self._stop_signal:
                    self.save()
                if self._stop_signal:
                    raise TrainingInterrupted(f"stopped by signal {self._stop_signal} at step {self.step}; "
                                              f"checkpoint written to {self.ckpt_dir} (resume with --resume)")
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.logger.close()
            close = getattr(self.task, "close", None)
            if close is not None:
                close()
        if ctx.is_main:
            self.task.export(self.out_dir / "model")
        return last_eval

    def _evaluate(self) -> dict[str, float]:
        # Evaluation must not change what training draws next: keep the RNG as it was.
        saved = _rng_state(self.ctx.device)
        try:
            metrics = self.task.evaluate(self.step, self.out_dir) if self.ctx.is_main else {}
        finally:
            _set_rng_state(saved, self.ctx.device)
        if metrics and self.ctx.is_main:
            self.logger.log(self.step, metrics)
            tqdm.write(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if self.ctx.distributed:
            dist.barrier()
        return metrics

    def _track_best(self, metrics: dict[str, float]) -> None:
        """When `run.best_metric` improved, write the weights just evaluated to `best/` (a checkpoint of this
        step, whatever `ckpt_every` is) and `best.json`."""
        key = self.run.best_metric
        if not self.ctx.is_main or not key or key not in metrics:
            return
        value = metrics[key]
        better = self.best is None or (value > self.best if self.run.best_mode == "max" else value < self.best)
        if better:
            self.best = value
            write_checkpoint(self.out_dir / "best", self.step, self._state())
            write_json(self.out_dir / "best.json", {"step": self.step, key: value})
