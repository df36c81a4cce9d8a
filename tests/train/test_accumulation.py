"""Gradient accumulation: k micro-batches per optimiser step give the update of one batch k times larger,
and checkpoints fall on optimiser steps.

Batch-dependent randomness would make a 2 x 4 run draw differently from an 8 run, so the comparisons run
deterministic configurations: the tokenizer's codes by argmax (`stochastic: false`), its prior without
dropout and with one round (no scheduled sampling), the hinge GAN loss (the "bce" one draws noisy labels
per batch), the AR model without dropout of any kind. In real runs these draws differ between a 2 x 4 and
an 8 step only in which sample gets which number. The data are the same either way: each clip's crop and
flip are seeded by its position in the epoch, not by its batch."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch

from larp import LARPTokenizer
from larp.train import checkpoint as ckpt
from larp.train.ar_task import ARTask
from larp.train.config import ARTrainConfig, TokenizerTrainConfig, effective_batch, load_recipe
from larp.train.engine import TrainingInterrupted
from larp.train.optim import WarmupCosine, make_schedule, prefix_groups
from larp.train.run import train
from larp.train.tokenizer_task import TokenizerTask, lr_multipliers
from tests.train.conftest import tiny_recipe

REPO = Path(__file__).resolve().parents[2]
DETERMINISTIC_TOKENIZER = [
    "model.config.bottleneck.args.regularizer.args.stochastic=false",
    "model.config.prior_model.no_dropout=true", "model.config.prior_model.n_rounds=1",
    "loss.disc_every=1", "loss.gan_loss=hinge",  # the discriminator steps every time, without noisy labels
    "run.ckpt_every=1", "run.max_steps=2",
]
DETERMINISTIC_AR = [f"model.config.{k}=0" for k in (
    "token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p", "drop_path_rate", "class_dropout_prob")]


def last_state(out_dir: Path) -> dict:
    return ckpt.load_checkpoint(ckpt.list_checkpoints(out_dir / "checkpoints")[-1])


def tokenizer_param_names(recipe: TokenizerTrainConfig) -> list[str]:
    """The tokenizer's parameter names in the order of its optimiser's state (the groups of TokenizerTask)."""
    model = LARPTokenizer(recipe.model_config())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = prefix_groups(model, recipe.optim.lr, lr_multipliers(recipe.optim))
    return [names[id(p)] for g in groups for p in g["params"]]


def tokenizer_step_sizes(recipe: TokenizerTrainConfig) -> dict[str, float]:
    """Learning rate by parameter-name prefix, as `assert_same_update` takes it ("" = the rest)."""
    return {prefix: recipe.optim.lr * m for prefix, m in lr_multipliers(recipe.optim).items()}


EPS32 = torch.finfo(torch.float32).eps
ROUNDING_ULPS = 64  # an element's gradient rounding, in float32 epsilons of its tensor's largest gradient


def gradient_smallness(states: list[dict], names: list[str]) -> dict[str, torch.Tensor]:
    """For each parameter element, its tensor's largest gradient over its own (>= 1; the largest at any of the
    given optimiser states, by name), inf for a tensor whose whole gradient is float noise.

    Adam's step is about lr * g / |g| whatever the gradient's size, so an element whose gradient is small
    against its rounding error (summed in another order by 2 x 4 micro-batches or by two processes) moves by
    a different fraction of a step in the two runs. That rounding error is some ulps of float32 times its
    tensor's largest gradient (about 5 was seen between two processes); `assert_same_update` widens each
    element's tolerance by ROUNDING_ULPS of it. Whole-tensor noise: below 1e-6 of the optimiser's largest
    gradient (the attention key biases, to which softmax is invariant: 1e-9 of it, where the next smallest
    tensor is 1e-4)."""
    smallness: dict[str, torch.Tensor] = {}
    for state in states:
        assert len(state) == len(names), "the optimiser's parameters are not the model's"
        rms = [state[i]["exp_avg_sq"].sqrt() for i in range(len(names))]
        top = max(float(r.max()) for r in rms)
        for name, r in zip(names, rms, strict=True):
            ratio = r.max() / r if r.max() >= 1e-6 * top else torch.full_like(r, torch.inf)
            smallness[name] = torch.maximum(smallness[name], ratio) if name in smallness else ratio
    unchecked = sum(int((s * ROUNDING_ULPS * EPS32 > 1).sum()) for s in smallness.values())
    share = unchecked / sum(s.numel() for s in smallness.values())
    assert share < 0.1, f"{share:.1%} of the elements allowed a whole step: the comparison would say little"
    return smallness


def assert_same_update(a: dict, b: dict, step_size: dict[str, float],
                       smallness: dict[str, torch.Tensor] | None = None) -> None:
    """Parameters within 0.5 % of one optimiser step of each other (Adam moves a weight by about its
    learning rate per step, whatever the gradient's scale), widened where the gradient is small against its
    rounding (see `gradient_smallness`), and the Adam moments to float tolerance.
    `step_size`: learning rate by parameter-name prefix, the first match counting ("" = the rest)."""
    smallness = smallness or {}
    for part in (p for p in ("model", "ema") if p in a):
        for key in a[part]:
            name = key.removeprefix("module.")
            lr = next(lr for prefix, lr in step_size.items() if name.startswith(prefix))
            rounding = smallness[name] * ROUNDING_ULPS * EPS32 if name in smallness else 0.0
            allowed = lr * (0.005 + 2 * rounding)  # two steps' worth of a relative gradient error
            excess = (a[part][key] - b[part][key]).abs() - allowed
            assert not (excess > 0).any(), (
                f"{part}.{key}: {int((excess > 0).sum())} of {excess.numel()} elements differ by more than "
                f"allowed, by up to {float(excess.max()):.3g} beyond it (one step: {lr:g})")
    for opt in (o for o in ("opt_g", "opt_d", "opt") if o in a):
        # Relative to the largest moment of the optimiser: some gradients are float noise (e.g. of attention
        # key biases, to which softmax is invariant) and agree only to the precision of the larger ones.
        scale = {m: max(float(s[m].abs().max()) for s in a[opt]["state"].values()) for m in ("exp_avg", "exp_avg_sq")}
        for i, moments in a[opt]["state"].items():
            for m in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(moments[m], b[opt]["state"][i][m], atol=1e-5 * scale[m], rtol=1e-4,
                                           msg=f"{opt}.state[{i}].{m}")


@pytest.mark.slow
def test_tokenizer_2x4_equals_8(tiny_data, tmp_path):
    whole = tiny_recipe(tiny_data, tmp_path / "b8", "data.batch_size=8", *DETERMINISTIC_TOKENIZER)
    accum = tiny_recipe(tiny_data, tmp_path / "b2x4", "data.batch_size=2", "optim.grad_accum_steps=4",
                        *DETERMINISTIC_TOKENIZER)
    train(whole, TokenizerTask)
    train(accum, TokenizerTask)
    step_size = tokenizer_step_sizes(whole)  # the discriminator's keys are its own
    states = [ckpt.load_checkpoint(tmp_path / "b8" / "checkpoints" / f"step_{step:08d}") for step in (1, 2)]
    smallness = gradient_smallness([st["task"]["opt_g"]["state"] for st in states], tokenizer_param_names(whole))
    for step, a in zip((1, 2), states, strict=True):
        b = ckpt.load_checkpoint(tmp_path / "b2x4" / "checkpoints" / f"step_{step:08d}")
        assert a["step"] == b["step"] == step
        assert (a["batch_in_epoch"], b["batch_in_epoch"]) == (step, 4 * step)  # loader batches of 8 / of 2
        assert_same_update(a["task"], b["task"], step_size, smallness)
        for key in ("ema_real", "ema_fake"):  # LeCam's averages saw the whole batch's means
            torch.testing.assert_close(a["task"]["lecam"][key], b["task"]["lecam"][key], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(a["task"]["disc"], b["task"]["disc"], atol=0.005 * whole.discriminator.lr, rtol=0)
    # The weights did move by far more than the tolerance: the comparison is not between untouched models.
    start = ckpt.load_checkpoint(tmp_path / "b8" / "checkpoints" / "step_00000001")["task"]["model"]
    moved = (start["final_layer.linear.weight"] - a["task"]["model"]["final_layer.linear.weight"]).abs().max()
    assert moved > 0.5 * whole.optim.lr * make_schedule(whole.optim, whole.run.max_steps)(2)


def ar_recipe(tiny_data, tokenizer: Path, out_dir: Path, *overrides: str) -> ARTrainConfig:
    return load_recipe(ARTrainConfig, None, [
        "model.preset=ar-tiny", f"tokenizer.path={tokenizer}", f"data.train_csv={tiny_data['train']}",
        "data.num_frames=8", "data.size=32", "data.num_workers=0", f"run.out_dir={out_dir}", "run.max_steps=3",
        "run.log_every=1", "run.eval_every=0", "run.ckpt_every=1", "optim.warmup_steps=1", *DETERMINISTIC_AR,
        *overrides])


def test_ar_2x4_equals_8(tiny_data, tiny_tokenizer, tmp_path):
    train(ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "b8", "data.batch_size=8", "run.max_steps=2"), ARTask)
    train(ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "b2x4", "data.batch_size=2", "optim.grad_accum_steps=4",
                    "run.max_steps=2"), ARTask)
    start = ckpt.load_checkpoint(tmp_path / "b8" / "checkpoints" / "step_00000001")["task"]
    a, b = last_state(tmp_path / "b8"), last_state(tmp_path / "b2x4")
    lr = ARTrainConfig().optim.lr
    assert_same_update(a["task"], b["task"], {"": lr})
    step2 = lr * WarmupCosine(1, 2, ARTrainConfig().optim.min_lr_ratio)(2)  # the lr of the second step
    assert (start["model"]["output.weight"] - a["task"]["model"]["output.weight"]).abs().max() > 0.5 * step2


def test_accumulated_run_checkpoints_on_optimiser_steps_and_resumes_exactly(tiny_data, tiny_tokenizer,
                                                                             tmp_path, monkeypatch):
    k = 3
    full = ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "full", "data.batch_size=2",
                     f"optim.grad_accum_steps={k}", "run.max_steps=4", "run.ckpt_every=2")
    train(full, ARTask)
    part = ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "part", "data.batch_size=2",
                     f"optim.grad_accum_steps={k}", "run.max_steps=4", "run.ckpt_every=2")
    original = ARTask.encode_batch
    seen = []

    def interrupting(self, batch):  # SIGTERM arrives in the middle of step 1's second micro-batch
        seen.append(1)
        if len(seen) == k + 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(ARTask, "encode_batch", interrupting)
    with pytest.raises(TrainingInterrupted, match="at step 2"):
        train(part, ARTask)
    monkeypatch.setattr(ARTask, "encode_batch", original)
    saved = ckpt.load_checkpoint(tmp_path / "part" / "checkpoints" / "step_00000002")
    assert saved["batch_in_epoch"] == 2 * k  # the step finished all its micro-batches before stopping
    train(part, ARTask, resume=True)
    a, b = last_state(tmp_path / "full")["task"], last_state(tmp_path / "part")["task"]
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert torch.equal(a["opt"]["state"][0]["exp_avg"], b["opt"]["state"][0]["exp_avg"])


@pytest.mark.parametrize("name, batch", [("larp_l_long.yaml", 128), ("ucf101_ar_lp.yaml", 64), ("k600_fp_lp.yaml", 64)])
def test_released_recipes_state_their_effective_batch_and_how_to_keep_it(name, batch):
    text = (REPO / "configs" / name).read_text()
    recipe = load_recipe(TokenizerTrainConfig if name.startswith("larp") else ARTrainConfig, REPO / "configs" / name)
    assert effective_batch(recipe, processes=8) == batch
    b, k = recipe.data.batch_size, recipe.optim.grad_accum_steps
    assert f"effective batch {b} x 8 GPUs x optim.grad_accum_steps {k} = {batch}" in text
    alternatives = re.findall(r"(\d) GPUs? -> (\d)", text)
    assert len(alternatives) >= 2 and all(b * int(gpus) * int(steps) == batch for gpus, steps in alternatives)
