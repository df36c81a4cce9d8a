"""Two CPU processes under torchrun (gloo): DDP keeps the ranks' weights identical."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from larp.train.engine import Engine, setup_context
from larp.train.tokenizer_task import TokenizerTask
from tests.train.conftest import tiny_recipe
from tests.train.test_accumulation import DETERMINISTIC_TOKENIZER

data = {"train": Path(sys.argv[1]), "val": Path(sys.argv[2])}
out = Path(sys.argv[3])
if sys.argv[4] == "tokenizer":
    recipe = tiny_recipe(data, out / "run", "run.max_steps=4", "run.ckpt_every=0", "codebook.dead_code_steps=2")
    ctx = setup_context(recipe.run)
    task = TokenizerTask(recipe, ctx)
elif sys.argv[4] == "tokenizer-accum":  # 2 processes x 2 micro-batches x 2 clips
    recipe = tiny_recipe(data, out / "run", *DETERMINISTIC_TOKENIZER, "run.ckpt_every=0", "data.batch_size=2",
                         "optim.grad_accum_steps=2")
    ctx = setup_context(recipe.run)
    task = TokenizerTask(recipe, ctx)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    events = []  # "forward" per micro-batch, "allreduce" per gradient bucket sent between the processes
    task.train_model.register_comm_hook(None, lambda state, bucket: events.append("allreduce")
                                        or allreduce_hook(state, bucket))
    generator_loss = task._generator_loss
    task._generator_loss = lambda *args: events.append("forward") or generator_loss(*args)
else:
    from larp.train.ar_task import ARTask
    from larp.train.config import ARTrainConfig, load_recipe

    recipe = load_recipe(ARTrainConfig, None, [
        "model.preset=ar-tiny", f"tokenizer.path={sys.argv[5]}", f"data.train_csv={data['train']}",
        "data.num_frames=8", "data.size=32", "data.batch_size=2", "data.num_workers=0",
        f"run.out_dir={out / 'run'}", "run.max_steps=4", "run.ckpt_every=0", "run.eval_every=0", "run.log_every=1"])
    ctx = setup_context(recipe.run)
    task = ARTask(recipe, ctx)
engine = Engine(recipe.run, task, out / "run")
engine.fit(recipe.data.batch_size, 0, recipe.optim.grad_accum_steps)
state = {k: v.contiguous() for k, v in task.model.state_dict().items()}
if getattr(task, "disc", None) is not None:
    state.update({"disc." + k: v.contiguous() for k, v in task.disc.state_dict().items()})
save_file(state, str(out / f"rank{ctx.rank}.safetensors"))
if sys.argv[4] == "tokenizer-accum":
    kept = [e for i, e in enumerate(events) if e == "forward" or events[i - 1] == "forward"]  # one per bucket run
    (out / f"events{ctx.rank}.txt").write_text(" ".join(kept))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("task", ["tokenizer", "ar", "tokenizer-accum"])
def test_two_gloo_processes_keep_identical_weights(tiny_data, tmp_path, task):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tiny_data["train"]), str(tiny_data["val"]), str(tmp_path), task]
    if task == "ar":
        from larp import LARPTokenizer, tokenizer_preset

        cmd.append(str(LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(tmp_path / "tok")))
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if task == "tokenizer-accum":
        # Gradients stay local on the first micro-batch (no_sync) and are averaged over the processes on the
        # last: the update is the one of a single process's batch of 8 (the same clips: items are sharded
        # by their position in the epoch).
        from larp.train.checkpoint import load_checkpoint
        from larp.train.run import train
        from larp.train.tokenizer_task import TokenizerTask
        from tests.train.conftest import tiny_recipe
        from tests.train.test_accumulation import (
            DETERMINISTIC_TOKENIZER,
            assert_same_update,
            gradient_smallness,
            tokenizer_param_names,
            tokenizer_step_sizes,
        )

        # The processes exchange gradients once per optimiser step, during the last micro-batch's backward.
        assert (tmp_path / "events0.txt").read_text().split() == ["forward", "forward", "allreduce"] * 2
        single = tiny_recipe(tiny_data, tmp_path / "single", *DETERMINISTIC_TOKENIZER, "data.batch_size=8")
        train(single, TokenizerTask)
        states = [load_checkpoint(tmp_path / "single" / "checkpoints" / f"step_{step:08d}")["task"]
                  for step in (1, 2)]
        ref = states[-1]
        smallness = gradient_smallness([st["opt_g"]["state"] for st in states], tokenizer_param_names(single))
        assert_same_update({"model": {k: a[k] for k in ref["model"]}}, {"model": ref["model"]},
                           tokenizer_step_sizes(single), smallness)
        for k, v in ref["disc"].items():
            torch.testing.assert_close(a["disc." + k], v, atol=0.005 * single.discriminator.lr, rtol=0, msg=k)
        return
    exported = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))  # written by rank 0
    model_state = {k: v for k, v in a.items() if not k.startswith("disc.")}
    if task == "tokenizer":  # the tokenizer recipe keeps an EMA: the export is the EMA, not the raw weights
        assert exported.keys() == model_state.keys()
    else:
        bad = [k for k in exported if not torch.equal(exported[k], a[k])]
        assert not bad, bad
    steps = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train/' in line]
    assert len(steps) == 4  # one log line per step, from rank 0 only
