"""Run folders, recipe validation, best weights, interrupted writes, metrics files and logging back-ends."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from larp.train import checkpoint as ckpt
from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe
from larp.train.engine import TrainingDiverged
from larp.train.run import RunFolderError, prepare_run_folder, train
from larp.train.tokenizer_task import TokenizerTask
from larp.utils.config import ConfigError
from larp.utils.errors import LarpError
from tests.train.conftest import tiny_recipe


def steps_logged(out_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


# ------------------------------------------------------------------------------------------- run folders
def test_overwrite_deletes_only_what_a_run_writes_and_refuses_other_files(tmp_path):
    run = tmp_path / "run"
    for name in ("checkpoints/step_00000002", "model", "samples", "best"):
        (run / name).mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "best.json"):
        (run / name).write_text("x\n")
    (run / "notes.txt").write_text("my notes\n")
    with pytest.raises(RunFolderError, match=r"holds files that a training run does not write \(notes.txt\).*"
                                             r"--overwrite deletes only a run's own files"):
        prepare_run_folder(run, resume=False, overwrite=True)
    assert (run / "notes.txt").read_text() == "my notes\n" and (run / "config.yaml").exists()
    (run / "notes.txt").unlink()
    prepare_run_folder(run, resume=False, overwrite=True)
    assert run.is_dir() and list(run.iterdir()) == []
    # A new run does not go into a folder of other files either; resuming is the user's explicit choice.
    (run / "data.csv").write_text("id,path\n")
    with pytest.raises(RunFolderError, match=r"\(data.csv\)"):
        prepare_run_folder(run, resume=False, overwrite=False)
    prepare_run_folder(run, resume=True, overwrite=False)


def test_a_run_that_failed_during_setup_does_not_block_the_retry(tiny_data, tmp_path):
    out = tmp_path / "retry"
    bad = tiny_recipe(tiny_data, out, f"data.train_csv={tmp_path / 'missing.csv'}")
    with pytest.raises(OSError, match="missing.csv"):
        train(bad, TokenizerTask)
    assert not (out / "config.yaml").exists()
    train(tiny_recipe(tiny_data, out, "run.max_steps=1"), TokenizerTask)  # no --resume / --overwrite needed
    assert ckpt.list_checkpoints(out / "checkpoints")[-1].name == "step_00000001"


def test_a_batch_larger_than_the_training_set_fails_before_the_run_exists(tiny_data, tmp_path):
    out = tmp_path / "big_batch"
    with pytest.raises(ValueError, match="fewer than one batch of 100"):
        train(tiny_recipe(tiny_data, out, "data.batch_size=100"), TokenizerTask)
    assert not (out / "config.yaml").exists()
    train(tiny_recipe(tiny_data, out, "run.max_steps=1"), TokenizerTask)  # the retry needs no --overwrite


def test_recipe_files_and_values_that_cannot_be_read_are_config_errors(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match="recipe .*binary.yaml is not a text file"):
        load_recipe(ARTrainConfig, binary)
    with pytest.raises(ConfigError, match="recipe .* is a folder, not a YAML file"):
        load_recipe(ARTrainConfig, tmp_path)
    with pytest.raises(ConfigError, match=r"override 'model.config.dim=\[1,' has a value that is not valid YAML"):
        load_recipe(ARTrainConfig, None, ["model.preset=ar-tiny", "model.config.dim=[1,"])
    with pytest.raises(ConfigError, match=r"config.dim: expected an integer, got inf"):
        load_recipe(ARTrainConfig, None, ["model.preset=ar-tiny", "model.config.dim=.inf"])


# ------------------------------------------------------------------------------------ recipe validation
@pytest.mark.parametrize("override, message", [
    ("optim.lr=-0.1", "optim.lr must be > 0, got -0.1"),
    ("optim.lr=.nan", "optim.lr must be > 0, got nan"),
    ("run.max_steps=-5", "run.max_steps must be >= 1, got -5"),
    ("run.log_every=0", "run.log_every must be >= 1, got 0"),
    ("run.eval_every=-1", "run.eval_every must be >= 0, got -1"),
    ("run.ema_decay=1.0", r"run.ema_decay must be in \[0, 1\), got 1.0"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.num_frames=0", "data.num_frames must be >= 1, got 0"),
    ("data.max_bad_fraction=1.5", r"data.max_bad_fraction must be in \[0, 1\), got 1.5"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas must be two numbers in \[0, 1\), got \[0.9, 1.0\]"),
    ("optim.min_lr_ratio=2", r"optim.min_lr_ratio must be in \[0, 1\], got 2.0"),
    ("optim.grad_accum_steps=0", "optim.grad_accum_steps must be >= 1, got 0"),
    ("loss.disc_every=0", "loss.disc_every must be >= 1, got 0"),
    ("loss.gan_weight=-1", "loss.gan_weight must be >= 0, got -1.0"),
    ("loss.motion_weight=-2", "loss.motion_weight must be >= 0, got -2.0"),
    ("discriminator.heads=3", "discriminator.width must be a multiple of heads=3, got 512"),
    ("discriminator.lr=0", "discriminator.lr must be > 0, got 0.0"),
    ("codebook.warn_below_usage=2", r"codebook.warn_below_usage must be in \[0, 1\], got 2.0"),
    ("codebook.temperature_start=-0.5", "codebook.temperature_start must be positive, got -0.5"),
    ("model.freeze=[encoder, head]", r"model.freeze must be a list of \['encoder', 'decoder', 'prior', 'codebook'\]"),
])
def test_tokenizer_recipes_are_validated_when_loaded(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TokenizerTrainConfig, None, ["model.preset=larp-tiny", override])


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
    ("num_cond_frames=0", "num_cond_frames must be >= 1, got 0"),
    ("model.freeze=[encoder]", "model.freeze must be empty for an AR model"),
    ("model.class_rows=[0, 1]", "model.class_rows must be used with model.init_from"),
])
def test_ar_recipes_are_validated_when_loaded(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(ARTrainConfig, None, ["model.preset=ar-tiny", override])


def test_train_validates_a_recipe_built_in_code_before_touching_the_folder(tmp_path):
    recipe = TokenizerTrainConfig()
    recipe.run.out_dir = str(tmp_path / "never")
    recipe.run.max_steps = -5  # once exited 0 with an untrained model
    with pytest.raises(ConfigError, match="run.max_steps must be >= 1, got -5"):
        train(recipe, TokenizerTask)
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------ data and set-up
def test_an_unreadable_video_among_the_initialisation_clips_is_skipped(tiny_data, tmp_path):
    from larp.data.datasets import read_video_csv

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    rows = [("broken", str(broken), "x", 0)] + [(r.id, r.path, r.action, r.label)
                                                  for r in read_video_csv(tiny_data["train"])]
    csv = tmp_path / "train.csv"
    csv.write_text("id,path,action,label\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    recipe = tiny_recipe(tiny_data, tmp_path / "run", f"data.train_csv={csv}", "data.max_bad_fraction=0.2",
                         "codebook.init_from_encoder=true", "run.max_steps=1")
    from larp.train.engine import setup_context

    task = TokenizerTask(recipe, setup_context(recipe.run))  # draws all 17 rows for the codebook init
    assert list(task.train_set.bad) == [0] and task.train_set.num_skipped == 1

    from larp.train.data import init_clips

    clips = init_clips(task.train_set, 17, seed=0)
    assert clips.shape == (17, 3, 8, 32, 32) and torch.isfinite(clips).all()


# ----------------------------------------------------------------------------------------- best weights
@pytest.mark.slow
def test_best_holds_the_weights_that_were_evaluated(tiny_data, tmp_path, monkeypatch):
    # Evaluations at steps 2, 4, 6; checkpoints at 3 and 6. Step 4 scores best, and is no checkpoint step.
    scores = {2: 10.0, 4: 20.0, 6: 5.0}
    weights = {}

    def evaluate(self, step, out_dir):
        weights[step] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return {"val/psnr": scores[step]}

    monkeypatch.setattr(TokenizerTask, "evaluate", evaluate)
    out = tmp_path / "best"
    train(tiny_recipe(tiny_data, out, "run.eval_every=2", "run.ckpt_every=3", "run.best_metric=val/psnr"),
          TokenizerTask)
    best = ckpt.load_checkpoint(out / "best")
    assert best["step"] == 4 and best["best"] == 20.0
    assert all(torch.equal(best["task"]["model"][k], v) for k, v in weights[4].items())
    assert not all(torch.equal(best["task"]["model"][k], v) for k, v in weights[2].items())
    assert json.loads((out / "best.json").read_text()) == {"step": 4, "val/psnr": 20.0}
    # The checkpoint of step 6 knows the best so far, so a resumed run compares against it.
    assert ckpt.load_checkpoint(out / "checkpoints" / "step_00000006")["best"] == 20.0


# ------------------------------------------------------------------------- interrupted runs and metrics
def test_resume_removes_half_written_checkpoints_and_replayed_metrics(tiny_data, tmp_path):
    out = tmp_path / "r"
    recipe = tiny_recipe(tiny_data, out, "run.max_steps=4", "run.keep_last=0")
    train(recipe, TokenizerTask)
    assert steps_logged(out) == [1, 2, 3, 4]
    # As after kill -9 during the step-4 checkpoint write: a temporary folder, no step-4 checkpoint, and
    # metrics already logged for steps 3 and 4 (then a torn line).
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    for name in (".step_00000004.abc123", ".tmp_step_00000004.x", ".old_step_00000002"):
        (out / "checkpoints" / name).mkdir()
        (out / "checkpoints" / name / ckpt.TENSORS).write_bytes(b"partial")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "train/lo')
    train(recipe, TokenizerTask, resume=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000002", "step_00000004"]
    assert steps_logged(out) == [1, 2, 3, 4]  # steps 3 and 4 once each, from the resumed run


def test_a_new_run_does_not_append_to_old_metrics(tiny_data, tmp_path):
    out = tmp_path / "fresh"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 40, "train/loss": 1.0}) + "\n")
    train(tiny_recipe(tiny_data, out, "run.max_steps=2"), TokenizerTask)
    assert steps_logged(out) == [1, 2]


def test_nan_message_names_a_checkpoint_only_when_there_is_one(tiny_data, tmp_path, monkeypatch):
    original = TokenizerTask.train_step

    def nan_at_step_1(self, batch, step):
        metrics = original(self, batch, step)
        return {**metrics, "loss": float("nan")} if step == 1 else metrics

    monkeypatch.setattr(TokenizerTask, "train_step", nan_at_step_1)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 2; stopping: no checkpoint had been "
                                               r"written yet \(run.ckpt_every=500\)"):
        train(tiny_recipe(tiny_data, tmp_path / "a", "run.ckpt_every=500"), TokenizerTask)
    assert not (tmp_path / "a" / "checkpoints").exists()
    with pytest.raises(TrainingDiverged, match=r"the last good checkpoint, .*step_00000001, is kept"):
        train(tiny_recipe(tiny_data, tmp_path / "b", "run.ckpt_every=1"), TokenizerTask)


# -------------------------------------------------------------------------------------- logging back-ends
def test_missing_logging_package_fails_before_the_run_folder_exists(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    out = tmp_path / "wb"
    with pytest.raises(LarpError, match=r"run.wandb=true needs the wandb package: pip install -e '\.\[logging\]'"):
        train(tiny_recipe(tiny_data, out, "run.wandb=true"), TokenizerTask)
    assert not out.exists()


@pytest.mark.slow
def test_wandb_resumes_the_same_run(tiny_data, tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, metrics, step):
            pass

        def finish(self):
            pass

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(kwargs) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "wb"
    train(tiny_recipe(tiny_data, out, "run.wandb=true", "run.max_steps=2"), TokenizerTask)
    run_id = (out / "wandb_id.txt").read_text().strip()
    train(tiny_recipe(tiny_data, out, "run.wandb=true", "run.max_steps=4"), TokenizerTask, resume=True)
    assert [c["id"] for c in calls] == [run_id, run_id] and all(c["resume"] == "allow" for c in calls)
    train(tiny_recipe(tiny_data, out, "run.wandb=true", "run.max_steps=2"), TokenizerTask, overwrite=True)
    assert calls[-1]["id"] != run_id  # a new run is a new W&B run
    assert np.all([c["dir"] == str(out) for c in calls])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only messages")
def test_cuda_only_settings_are_user_errors_on_the_cpu(tiny_data, tmp_path):
    from larp.train.engine import setup_context

    for override, message in [("run.precision=bf16", "run.precision='bf16' needs CUDA; use fp32 on cpu"),
                              ("run.compile=true", "run.compile=true is meant for CUDA"),
                              ("run.device=cuda", "run.device='cuda' but CUDA is not available")]:
        with pytest.raises(LarpError, match=message):
            setup_context(tiny_recipe(tiny_data, tmp_path, override).run)


def test_motion_weight_reaches_the_pixel_terms(tiny_data, tmp_path, monkeypatch):
    import larp.train.tokenizer_task as task_module

    calls, pixel_calls = [], []
    real_weights, real_pixel = task_module.motion_weights, task_module.pixel_loss

    def spy_weights(video, weight, *args):
        calls.append((tuple(video.shape), weight))
        return real_weights(video, weight, *args)

    def spy_pixel(recon, target, kind="l1", weights=None):
        pixel_calls.append((kind, weights is not None))
        return real_pixel(recon, target, kind, weights)

    monkeypatch.setattr(task_module, "motion_weights", spy_weights)
    monkeypatch.setattr(task_module, "pixel_loss", spy_pixel)
    train(tiny_recipe(tiny_data, tmp_path / "plain", "run.max_steps=1", "loss.gan_weight=0"), TokenizerTask)
    assert calls == [] and pixel_calls == [("l1", False)]
    pixel_calls.clear()
    train(tiny_recipe(tiny_data, tmp_path / "weighted", "run.max_steps=1", "loss.gan_weight=0",
                      "loss.motion_weight=10", "loss.l2_weight=1"), TokenizerTask)
    # The weighted terms are no longer the batch's error: its plain MSE is logged beside them.
    assert calls == [((2, 3, 8, 32, 32), 10.0)] and pixel_calls == [("l1", True), ("l2", True), ("l2", False)]
    def train_rows(name: str) -> list[dict]:
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "train/loss" in r]

    assert all("train/mse" not in r for r in train_rows("plain"))
    weighted = train_rows("weighted")
    assert weighted and all(0 < r["train/mse"] != r["train/l2"] for r in weighted)


# ------------------------------------------------------------------------------- inputs, locks, presets
def test_overwrite_never_deletes_the_tokenizer_the_run_reads(tiny_data, tiny_tokenizer, tmp_path):
    from larp.train.ar_task import ARTask
    from tests.train.conftest import ar_recipe

    run = tmp_path / "T"
    shutil.copytree(tiny_tokenizer, run / "model")
    (run / "config.yaml").write_text("old: run\n")
    recipe = ar_recipe(tiny_data, run / "model", run, f"data.train_csv={tiny_data['train']}")
    with pytest.raises(RunFolderError, match=r"model is an input of this run but lies in .*T/model, which "
                                             r"--overwrite would delete"):
        train(recipe, ARTask, overwrite=True)
    assert (run / "model" / "model.safetensors").is_file() and (run / "config.yaml").exists()


def test_a_second_run_into_a_busy_folder_stops_naming_the_first(tiny_data, tmp_path):
    from larp.utils.outputs import FolderBusyError, exclusive_output

    out = tmp_path / "X"
    with exclusive_output(out, "train"):
        with pytest.raises(FolderBusyError, match=r"X is being written by larp train \(pid \d+"):
            train(tiny_recipe(tiny_data, out, "run.max_steps=1"), TokenizerTask)
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()


def test_resuming_with_another_model_is_refused_before_any_checkpoint_is_read(tiny_data, tmp_path):
    from larp.train.config import save_recipe

    out = tmp_path / "R"
    save_recipe(tiny_recipe(tiny_data, out), out / "config.yaml")
    other = tiny_recipe(tiny_data, out, "model.preset=larp-sanity-32")
    with pytest.raises(RunFolderError, match=r"holds a run of another model \(model.preset: 'larp-tiny' there, "
                                             r"'larp-sanity-32' here\)"):
        train(other, TokenizerTask, resume=True)


@pytest.mark.parametrize(("override", "message"), [
    ("run.device=evil", r"run.device must be auto, cpu, cuda, cuda:N or another torch device, got 'evil'"),
    ("optim.lr=1e300", r"optim.lr must be in \(0, 1\]"),
    ("optim.lr=.inf", r"optim.lr must be a finite number, got inf"),
    ("loss.vq_weight=.inf", r"loss.vq_weight must be a finite number, got inf"),
])
def test_recipe_values_out_of_range_are_config_errors(tiny_data, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_recipe(tiny_data, tmp_path / "o", override)


def test_a_full_disk_during_a_checkpoint_is_one_error_that_says_the_previous_one_is_intact(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 2, {"w": torch.ones(3)})

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*step_00000004 \(Error while serializing: "
                                        r"IoError\(No space left on device .*is the disk full\?\); the previous "
                                        r"checkpoint .*step_00000002 is intact"):
        ckpt.save_checkpoint(root, 4, {"w": torch.zeros(3)})
    assert [p.name for p in root.iterdir()] == ["step_00000002"]  # no half-written folder
    assert torch.equal(ckpt.load_checkpoint(root / "step_00000002")["w"], torch.ones(3))


def test_a_full_disk_during_a_safetensors_write_is_an_os_error(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from larp.utils.files import write_safetensors

    monkeypatch.setattr(safetensors.torch, "save_file",
                        lambda *a, **k: (_ for _ in ()).throw(SafetensorError("No space left on device")))
    with pytest.raises(OSError, match=r"could not write .*shard_00000.safetensors: No space left on device \(is "
                                      r"the disk full\?\)"):
        write_safetensors(tmp_path / "shard_00000.safetensors", {"t": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []
