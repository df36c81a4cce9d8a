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

data = {"train": Path(sys.argv[1]), "val": Path(sys.argv[2])}
out = Path(sys.argv[3])
recipe = tiny_recipe(data, out / "run", "run.max_steps=4", "run.ckpt_every=0", "codebook.dead_code_steps=2")
ctx = setup_context(recipe.run)
task = TokenizerTask(recipe, ctx)
engine = Engine(recipe.run, task, out / "run")
engine.fit(recipe.data.batch_size, 0)
state = {k: v.contiguous() for k, v in task.model.state_dict().items()}
state.update({"disc." + k: v.contiguous() for k, v in task.disc.state_dict().items()})
save_file(state, str(out / f"rank{ctx.rank}.safetensors"))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_weights(tiny_data, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tiny_data["train"]), str(tiny_data["val"]), str(tmp_path)]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Training happened: the weights moved away from the initialisation.
    assert not torch.equal(a["encoder_latent_query_embed"], b["encoder_latent_query_embed"] * 0)
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()  # exported by rank 0 only
