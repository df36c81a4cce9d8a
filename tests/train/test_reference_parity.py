"""larp's training against the reference implementation's, step for step.

The fixtures (computed by the reference, float32 on CPU) hold one training step and 20-step trajectories
of the tokenizer (with its discriminator, GAN on and off) and of the class-conditional and
frame-prediction AR models, with every random draw given or replaced by the argmax. These tests run the
same steps through larp's own training tasks (`TokenizerTask`, `ARTask`, with `GivenDraws`) and compare
every loss term, gradient, code and parameter. Sizes, schedules, weights and settings are read from the
fixture folder, so another folder of the same format (`LARP_TRAINING_PARITY_FIXTURES`) is tested the same
way."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from larp.data.synthetic import write_synthetic_dataset
from larp.train.ar_task import ARTask
from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe
from larp.train.draws import GivenDraws
from larp.train.engine import TrainContext
from larp.train.losses import from_reference_disc_name
from larp.train.optim import WarmupCosine, decay_groups
from larp.train.token_cache import META, CacheMeta
from larp.train.tokenizer_task import TokenizerTask
from larp.utils.files import write_safetensors

_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "training_parity"
ROOT = Path(os.environ.get("LARP_TRAINING_PARITY_FIXTURES") or _DEFAULT)

pytestmark = pytest.mark.skipif(
    not (ROOT / "settings.json").is_file(),
    reason=f"no reference training-parity fixtures at {ROOT}: set LARP_TRAINING_PARITY_FIXTURES to a "
           "folder of them")

STEP1_TOL = 1e-5  # step 1: every scalar and gradient, relative
TRAJ_TOL = 1e-4  # 20 steps: every scalar at every step and every parameter after, relative
ZERO_GRAD_NORM = 1e-8  # gradients that are exactly 0 in theory (stored values are float noise)


@cache
def settings() -> dict[str, Any]:
    return json.loads((ROOT / "settings.json").read_text())


def _json(name: str) -> dict[str, Any]:
    return json.loads((ROOT / name).read_text())


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def assert_scalar(name: str, got: float, want: float, tol: float) -> None:
    assert rel(got, want) <= tol, f"{name}: larp {got!r}, reference {want!r} (relative {rel(got, want):.2e})"


def assert_tensor(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def schedule_mult(step: int) -> float:
    s = settings()["schedule"]
    return WarmupCosine(s["warmup_steps"], s["max_steps"], s["min_lr_mult"])(step)


# ------------------------------------------------------------------------------------------- tokenizer
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def initial_weights(spec: dict[str, Any]) -> Path:
    """The initial tokenizer weights settings.json names: its path (relative to tokenizer/), else a file
    with the same SHA-256 among the official fixtures beside this folder or beside the repository."""
    declared = (ROOT / "tokenizer" / spec["path"]).resolve()
    if declared.is_file():
        assert _sha256(declared) == spec["sha256"], f"{declared} is not the file settings.json names"
        return declared
    for official in {ROOT.parent / "official", _DEFAULT.parent / "official"}:
        for candidate in sorted(official.glob("*/model.safetensors")):
            if candidate.stat().st_size == spec.get("bytes", candidate.stat().st_size) and \
                    _sha256(candidate) == spec["sha256"]:
                return candidate
    pytest.fail(f"the initial tokenizer weights named in settings.json ({declared}, SHA-256 {spec['sha256']}) "
                "were not found")

@pytest.fixture(scope="module")
def tokenizer_setup(tmp_path_factory) -> dict[str, Any]:
    """The initial weights (checked against settings.json), a model folder for `model.init_from` and a
    small CSV for the task's dataset (the steps themselves use the fixture's batch)."""
    tok = settings()["tokenizer"]
    weights = initial_weights(tok["init_weights"])
    base = tmp_path_factory.mktemp("parity")
    folder = base / "init"
    folder.mkdir()
    shutil.copy(ROOT / "tokenizer" / "config.json", folder / "config.json")
    (folder / "model.safetensors").symlink_to(weights)
    _, _, frames, size, _ = tok["batch"]["shape"]
    data = write_synthetic_dataset(base / "data", classes=2, clips_per_class=2, frames=frames, size=size, seed=0)
    inputs = load_file(str(ROOT / "tokenizer" / "inputs.safetensors"))
    return {"folder": folder, "csv": data["train"], "inputs": inputs, "out": base}


def tokenizer_recipe(setup: dict[str, Any], gan_on: bool) -> TokenizerTrainConfig:
    """larp's recipe with every setting of settings.json."""
    tok, sched = settings()["tokenizer"], settings()["schedule"]
    loss, g, d, disc = tok["loss"], tok["optim"]["G"], tok["optim"]["D"], tok["discriminator"]
    # What larp does not make configurable must be what the fixture used.
    assert (g["type"], d["type"], g["eps"], d["eps"]) == ("Adam", "Adam", 1e-8, 1e-8)
    assert (loss["pixel"], loss["d_update_freq"] > 0, loss["lecam_ema_init"]) == ("l1", True, [0.0, 0.0])
    assert loss["prior_avg_loss_over_rounds"] is True and sched["lr_type"] == "cosine"
    # The reference starts the GAN at a 1-based epoch: epoch e >= start, i.e. after (start - 1) epochs.
    gan_start = max(loss["disc_start_epoch"] - 1, 0) * sched["steps_per_epoch"]
    _, _, frames, size, _ = tok["batch"]["shape"]
    overrides = [
        f"model.init_from={setup['folder']}", "model.config.prior_model.no_dropout=true",
        f"data.train_csv={setup['csv']}", f"data.num_frames={frames}", f"data.size={size}",
        f"data.batch_size={tok['batch']['shape'][0]}", "data.num_workers=0",
        f"optim.lr={g['lr']}", f"optim.betas=[{g['betas'][0]}, {g['betas'][1]}]",
        f"optim.weight_decay={g['weight_decay']}", f"optim.grad_clip={g['grad_clip']}",
        f"optim.warmup_steps={sched['warmup_steps']}", f"optim.min_lr_ratio={sched['min_lr_mult']}",
        f"optim.prior_lr_mult={g['prior_lr_mult_effective']}",
        f"loss.pixel_weight={loss['pixel_weight']}", f"loss.l2_weight={loss['l2_weight']}",
        f"loss.perceptual_weight={loss['perceptual_weight']}",
        f"loss.gan_weight={loss['gan_weight'] if gan_on else loss['gan_weight_gan_off_runs']}",
        "loss.gan_loss=bce", f"loss.disc_every={loss['d_update_freq']}", f"loss.gan_start_step={gan_start}",
        f"loss.lecam_weight={loss['lecam_weight_effective']}", f"loss.lecam_decay={loss['lecam_ema_decay']}",
        f"loss.vq_weight={loss['vq_weight']}", f"loss.prior_weight={loss['prior_ce_weight']}",
        f"discriminator.width={disc['hidden_size']}", f"discriminator.heads={disc['n_heads']}",
        f"discriminator.depth={disc['n_layers']}", f"discriminator.patch={disc['patch_size']}",
        f"discriminator.temporal_patch={disc['temporal_patch_size']}", f"discriminator.lr={d['lr']}",
        f"discriminator.betas=[{d['betas'][0]}, {d['betas'][1]}]",
        f"run.max_steps={sched['max_steps']}", "run.device=cpu", f"run.out_dir={setup['out'] / 'run'}",
    ]
    recipe = load_recipe(TokenizerTrainConfig, None, overrides)
    mc = recipe.model_config()
    vq = mc.vq
    assert (vq.commitment_loss_weight, vq.codebook_loss_weight) == (loss["vq_commitment_weight"],
                                                                    loss["vq_codebook_weight"])
    p = mc.prior_model
    assert (p.n_rounds, p.latent_ce_temperature) == (loss["prior_rounds"], loss["latent_ce_temperature"])
    ss = tok["scheduled_sampling"]
    assert (p.mix_ss_peak_steps_ratio, p.mix_ss_max_ratio) == (ss["peak_steps_ratio"], ss["max_ratio"])
    return recipe


def make_tokenizer_task(setup: dict[str, Any], gan_on: bool) -> TokenizerTask:
    inputs = setup["inputs"]
    draws = GivenDraws(argmax_codes=True, argmax_picks=True, ss_masks=inputs["ss_mask"],
                       d_noise_real=inputs["d_noise_real"], d_noise_fake=inputs["d_noise_fake"])
    task = TokenizerTask(tokenizer_recipe(setup, gan_on), TrainContext(torch.device("cpu")), draws)
    if task.disc is not None:
        task.disc.load_reference_state_dict(load_file(str(ROOT / "tokenizer" / "discriminator.safetensors")))
    return task


class Recorder:
    """Keeps the codes and the prior's first-round argmax picks of every forward pass of a tokenizer."""

    def __init__(self, model: torch.nn.Module):
        self.codes: list[torch.Tensor] = []
        self.picks: list[torch.Tensor] = []
        model.register_forward_hook(self._keep)

    def _keep(self, module: Any, args: Any, out: Any) -> None:
        self.codes.append(out.indices.detach().clone())
        self.picks.append(out.prior.logits.argmax(-1))


def check_tokenizer_row(metrics: dict[str, float], row: dict[str, Any], task: TokenizerTask, gan_on: bool,
                        tol: float, where: str) -> None:
    for key, ours in (("l1", "pixel"), ("vq", "vq"), ("prior_ce", "prior_ce"), ("total", "loss")):
        assert_scalar(f"{where} {key}", metrics[ours], row[key], tol)
    if gan_on:
        assert_scalar(f"{where} g_adv", metrics["g_adv"], row["g_adv"], tol)
    assert_scalar(f"{where} lr_G", metrics["lr"], row["lr_G"], tol)
    assert all(group["lr"] == metrics["lr"] for group in task.opt_g.param_groups), "every group at one rate"
    model = task.model
    total = settings()["tokenizer"]["scheduled_sampling"]["max_steps"]
    assert_scalar(f"{where} ss_ratio", model.scheduled_sampling_ratio(row["step"], total), row["ss_ratio"], 1e-6)
    assert ("d_loss" in metrics) == (gan_on and row["d_update"]), f"{where}: discriminator updated or not"
    if gan_on:
        assert_scalar(f"{where} lr_D", task.opt_d.param_groups[0]["lr"], row["lr_D"], tol)
    if gan_on and row["d_update"]:
        assert_scalar(f"{where} d_bce", metrics["d_loss"], row["d_bce"], tol)
        assert_scalar(f"{where} d_lecam_penalty", metrics["lecam"], row["d_lecam_penalty"], tol)
        assert_scalar(f"{where} d_total", metrics["d_total"], row["d_total"], tol)
        assert_scalar(f"{where} d_logits_real", metrics["d_real"], row["d_logits_real_mean"], tol)
        assert_scalar(f"{where} d_logits_fake", metrics["d_fake"], row["d_logits_fake_mean"], tol)
        assert_scalar(f"{where} ema_real", float(task.lecam.ema_real), row["lecam_ema_real_after"], tol)
        assert_scalar(f"{where} ema_fake", float(task.lecam.ema_fake), row["lecam_ema_fake_after"], tol)


def check_grads(model: torch.nn.Module, expected: dict[str, torch.Tensor], tol: float, prefix: str = "") -> None:
    params = dict(model.named_parameters())
    assert set(expected) <= set(params), f"unknown tensors {sorted(set(expected) - set(params))[:5]}"
    for name, want in expected.items():
        got = params[name].grad
        assert got is not None, f"{prefix}{name}: no gradient"
        if name.startswith("prior_model.") and name.endswith("attn.key.bias"):
            # Exactly 0 in theory: softmax ignores a constant added to all keys of a query.
            assert float(got.norm()) <= ZERO_GRAD_NORM, f"{prefix}{name}: gradient norm {float(got.norm())}"
            continue
        assert_tensor(f"{prefix}{name} gradient", got, want, tol)


def batch_of(setup: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {"video": setup["inputs"]["video"]}


@pytest.mark.parametrize("gan_on", [True, False], ids=["gan_on", "gan_off"])
def test_tokenizer_step1_every_term_and_gradient(tokenizer_setup, gan_on):
    expected = _json("tokenizer/expected.json")[f"step1_{'gan_on' if gan_on else 'gan_off'}"]
    task = make_tokenizer_task(tokenizer_setup, gan_on)
    metrics = task.train_step(batch_of(tokenizer_setup), 0)
    check_tokenizer_row(metrics, expected, task, gan_on, STEP1_TOL, "step 1")
    name = "gan_on" if gan_on else "gan_off_nonprior"
    grads = load_file(str(ROOT / "tokenizer" / f"expected_grads_step1_{name}.safetensors"))
    if gan_on:  # every parameter of the tokenizer has its gradient in the file
        assert set(grads) == {n for n, _ in task.model.named_parameters()}
    check_grads(task.model, grads, STEP1_TOL)
    if not gan_on:  # the prior's gradients are those of the GAN-on step (the GAN does not reach it)
        on = load_file(str(ROOT / "tokenizer" / "expected_grads_step1_gan_on.safetensors"))
        check_grads(task.model, {k: v for k, v in on.items() if k.startswith("prior_model.")}, STEP1_TOL)


def test_discriminator_step_from_the_initial_weights(tokenizer_setup):
    """A discriminator step as the first step (numbered as the first D step): D's loss and gradients, and
    the generator's gradients through the discriminator it just updated."""
    expected = _json("tokenizer/expected.json")["dstep_from_init"]
    task = make_tokenizer_task(tokenizer_setup, gan_on=True)
    metrics = task.train_step(batch_of(tokenizer_setup), expected["step"] - 1)
    check_tokenizer_row(metrics, expected, task, True, STEP1_TOL, "D step")
    grads = load_file(str(ROOT / "tokenizer" / "expected_dstep_grads.safetensors"))
    disc = {from_reference_disc_name(k[len("disc."):]): v for k, v in grads.items() if k.startswith("disc.")}
    assert set(disc) == {n for n, _ in task.disc.named_parameters()}
    check_grads(task.disc, disc, STEP1_TOL, "disc.")
    check_grads(task.model, {k[len("gen."):]: v for k, v in grads.items() if k.startswith("gen.")}, STEP1_TOL)


@pytest.mark.parametrize("gan_on", [True, False], ids=["gan_on", "gan_off"])
def test_tokenizer_trajectory(tokenizer_setup, gan_on):
    """Every step of the run: the terms, the learning rates, the discriminator's steps, the codes and the
    prior's picks; the parameters (and the discriminator's, and LeCam's averages) after the last step."""
    tag = "gan_on" if gan_on else "gan_off"
    rows = _json("tokenizer/expected.json")[f"trajectory_{tag}"]
    tensors = load_file(str(ROOT / "tokenizer" / "expected_trajectory_tensors.safetensors"))
    assert len(rows) == settings()["n_steps"]
    task = make_tokenizer_task(tokenizer_setup, gan_on)
    rec = Recorder(task.model)
    for step, row in enumerate(rows):
        assert row["step"] == step + 1
        metrics = task.train_step(batch_of(tokenizer_setup), step)
        check_tokenizer_row(metrics, row, task, gan_on, TRAJ_TOL, f"step {row['step']}")
        assert torch.equal(rec.codes[-1], tensors[f"{tag}.codes"][step]), f"codes differ at step {step + 1}"
        assert torch.equal(rec.picks[-1], tensors[f"{tag}.ss_picks"][step]), f"picks differ at step {step + 1}"
    if gan_on:
        d_steps = [r["step"] for r in rows if r["d_update"]]
        assert d_steps == settings()["tokenizer"]["draws"]["d_steps"] and task.disc_updates == len(d_steps)
    after = load_file(str(ROOT / "tokenizer" / "expected_after_20_steps.safetensors"))
    params = dict(task.model.named_parameters())
    disc = dict(task.disc.named_parameters()) if task.disc is not None else {}
    checked = 0
    for key, want in after.items():
        run, name = key.split(".", 1)
        if run != tag:
            continue
        checked += 1
        if name.startswith("disc."):
            assert_tensor(key, disc[from_reference_disc_name(name[len("disc."):])].detach(), want, TRAJ_TOL)
        elif name.startswith("lecam_ema_"):
            got = getattr(task.lecam, name.replace("lecam_", ""))
            assert_tensor(key, got.reshape(want.shape), want, TRAJ_TOL)
        else:
            assert_tensor(key, params[name].detach(), want, TRAJ_TOL)
    assert checked > 0


# ------------------------------------------------------------------------------------------------ AR
def write_token_cache(folder: Path, tokens: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None) -> None:
    """A token cache (the format `larp tokenize-dataset` writes) holding the fixture's sequences."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(tokens)
    shard = {"tokens": tokens, "labels": labels, "video": torch.arange(n), "start": torch.zeros(n, dtype=torch.long),
             "flip": torch.zeros(n, dtype=torch.bool)}
    if cond is not None:
        shard["cond"] = cond
    write_safetensors(folder / "shard_00000.safetensors", shard)
    meta = CacheMeta(tokenizer="fixture", num_tokens=tokens.shape[1], codebook_size=0, num_frames=16, size=128,
                     windows_per_video=1, flip=False, seed=0, source="fixture", fp_context_frames=int(cond is not None),
                     num_entries=n, shards=("shard_00000.safetensors",))
    (folder / META).write_text(json.dumps(asdict(meta)))


def make_ar_task(kind: str, tmp_path: Path) -> tuple[ARTask, dict[str, torch.Tensor]]:
    folder = ROOT / kind
    config = json.loads((folder / "config.json").read_text())
    opt, sched = settings()[kind]["optim"], settings()["schedule"]
    assert (opt["type"], opt["eps"]) == ("AdamW", 1e-8)
    inputs = load_file(str(folder / "inputs.safetensors"))
    tokens = inputs["tokens"]
    fp = "cond" in inputs
    if fp:  # the condition ends with the separator, which larp appends itself
        assert (inputs["cond"][:, -1] == config["vocab_size"]).all()
        cond, labels = inputs["cond"][:, :-1].contiguous(), torch.zeros(len(tokens), dtype=torch.long)
    else:
        cond, labels = None, inputs["labels"]
    cache_dir = tmp_path / "tokens"
    write_token_cache(cache_dir, tokens, labels, cond)
    meta = json.loads((cache_dir / META).read_text())
    meta["codebook_size"] = config["vocab_size"]
    (cache_dir / META).write_text(json.dumps(meta))
    recipe = load_recipe(ARTrainConfig, None, [
        f"model.init_from={folder}", "model.config.token_dropout_p=0.0", "model.config.resid_dropout_p=0.0",
        "model.config.ffn_dropout_p=0.0", "model.config.attn_dropout_p=0.0", "model.config.drop_path_rate=0.0",
        f"data.token_cache={cache_dir}", f"data.batch_size={settings()[kind]['batch_size']}", "data.num_workers=0",
        f"optim.lr={opt['lr']}", f"optim.betas=[{opt['betas'][0]}, {opt['betas'][1]}]",
        f"optim.weight_decay={opt['weight_decay']}", f"optim.grad_clip={opt['grad_clip']}",
        f"optim.warmup_steps={sched['warmup_steps']}", f"optim.min_lr_ratio={sched['min_lr_mult']}",
        f"run.max_steps={sched['max_steps']}", "run.device=cpu", f"run.out_dir={tmp_path / 'run'}",
        *([f"num_cond_frames={1}"] if fp else []),
    ])
    draws = GivenDraws(class_drop=inputs.get("class_drop_mask"))
    task = ARTask(recipe, TrainContext(torch.device("cpu")), draws)
    batch: dict[str, torch.Tensor] = {"tokens": tokens, "label": labels}
    if fp:
        batch["cond"] = cond
    return task, batch


@pytest.mark.parametrize("kind", ["ar_cc", "ar_fp"])
def test_ar_step1_and_trajectory(kind, tmp_path):
    expected = _json(f"{kind}/expected.json")
    task, batch = make_ar_task(kind, tmp_path)
    decayed = {n for n, p in task.model.named_parameters()
               if any(p is q for q in decay_groups(task.model, 1.0)[0]["params"])}
    assert decayed == set(expected["weight_decay_params"])
    grads = load_file(str(ROOT / kind / "expected_grads_step1.safetensors"))
    assert set(grads) == {n for n, _ in task.model.named_parameters()}
    rows = expected["trajectory"]
    assert len(rows) == settings()["n_steps"] and expected["step1"]["step"] == 1
    for step, row in enumerate(rows):
        metrics = task.train_step(batch, step)
        if step == 0:
            assert_scalar(f"{kind} step 1 loss", metrics["loss"], expected["step1"]["loss"], STEP1_TOL)
        tol = STEP1_TOL if step == 0 else TRAJ_TOL
        assert_scalar(f"{kind} step {row['step']} loss", metrics["loss"], row["loss"], tol)
        assert_scalar(f"{kind} step {row['step']} lr", metrics["lr"], row["lr"], tol)
        assert_scalar(f"{kind} step {row['step']} lr mult", schedule_mult(row["step"]), row["lr_mult"], 1e-9)
        assert all(g["lr"] == metrics["lr"] for g in task.opt.param_groups)
        if step == 0:
            check_grads(task.model, grads, STEP1_TOL)
    params = dict(task.model.named_parameters())
    for name, want in load_file(str(ROOT / kind / "expected_after_20_steps.safetensors")).items():
        assert_tensor(f"{kind} {name} after the run", params[name].detach(), want, TRAJ_TOL)


def test_schedule_matches_the_fixture_table():
    """The learning-rate factor of every step, as the fixture's README tabulates it."""
    rows = _json("tokenizer/expected.json")["trajectory_gan_on"]
    for row in rows:
        assert math.isclose(schedule_mult(row["step"]), row["lr_mult"], rel_tol=1e-9, abs_tol=1e-12)
