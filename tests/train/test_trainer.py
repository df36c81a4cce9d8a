"""The tokenizer trainer: exact resume, signals, NaN, damaged checkpoints, recipes."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from larp import LARPTokenizer
from larp.train import checkpoint as ckpt
from larp.train.config import TokenizerTrainConfig, load_recipe
from larp.train.engine import Engine, TrainingDiverged, TrainingInterrupted
from larp.train.run import RunFolderError, prepare_run_folder, train
from larp.train.tokenizer_task import TokenizerTask
from larp.utils.config import ConfigError
from tests.train.conftest import tiny_recipe

REPO = Path(__file__).resolve().parents[2]


def final_state(out_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.list_checkpoints(out_dir / "checkpoints")[-1])["task"]


def assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "disc", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    full = tiny_recipe(tiny_data, tmp_path / "full")
    train(full, TokenizerTask)

    # Same run, interrupted by SIGINT during step 3 (as Ctrl-C would): a checkpoint is written, then resumed.
    part = tiny_recipe(tiny_data, tmp_path / "part")
    original = TokenizerTask.train_step

    def interrupting_step(self, batch, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, step)

    monkeypatch.setattr(TokenizerTask, "train_step", interrupting_step)
    with pytest.raises(TrainingInterrupted, match="stopped by signal .* at step 4"):
        train(part, TokenizerTask)
    assert (tmp_path / "part" / "checkpoints" / "step_00000004").is_dir()
    monkeypatch.setattr(TokenizerTask, "train_step", original)
    with pytest.raises(RunFolderError, match="--resume"):
        train(part, TokenizerTask)
    train(part, TokenizerTask, resume=True)

    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_state(a, b)
    assert torch.equal(a["opt_g"]["state"][0]["exp_avg"], b["opt_g"]["state"][0]["exp_avg"])
    # The exported model loads with the public API and equals the EMA weights.
    model = LARPTokenizer.from_pretrained(tmp_path / "part" / "model")
    assert all(torch.equal(v, b["ema"]["module." + k]) for k, v in model.state_dict().items())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    recipe = tiny_recipe(tiny_data, tmp_path / "nan")
    original = LARPTokenizer.decode_latents

    def poisoned(self, quantized):
        out = original(self, quantized)
        return out * float("nan") if self.training and poisoned.calls >= 3 else out

    poisoned.calls = 0

    def counting(self, *args, **kwargs):
        poisoned.calls += 1
        return poisoned_forward(self, *args, **kwargs)

    poisoned_forward = LARPTokenizer.forward
    monkeypatch.setattr(LARPTokenizer, "decode_latents", poisoned)
    monkeypatch.setattr(LARPTokenizer, "forward", counting)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3"):
        train(recipe, TokenizerTask)
    folders = ckpt.list_checkpoints(tmp_path / "nan" / "checkpoints")
    assert [f.name for f in folders] == ["step_00000002"]
    state = ckpt.load_checkpoint(folders[0])["task"]
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    root = tmp_path / "ck"
    ckpt.save_checkpoint(root, 1, {"w": torch.ones(3), "n": 1})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(root, 2, {"w": torch.zeros(3), "n": 2})
    assert [p.name for p in root.iterdir()] == ["step_00000001"]  # no partial folder left behind
    assert torch.equal(ckpt.load_checkpoint(root / "step_00000001")["w"], torch.ones(3))


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    root = tmp_path / "ck"
    ckpt.save_checkpoint(root, 1, {"w": torch.ones(3)})
    ckpt.save_checkpoint(root, 2, {"w": torch.zeros(3)})
    tensors = root / "step_00000002" / ckpt.TENSORS
    tensors.write_bytes(tensors.read_bytes()[:20])
    with pytest.raises(Exception, match="tensors.safetensors is truncated or corrupted"):
        ckpt.load_checkpoint(root / "step_00000002")
    folder, state = ckpt.load_latest(root)
    assert folder.name == "step_00000001" and torch.equal(state["w"], torch.ones(3))
    assert "skipping damaged checkpoint" in caplog.text and "step_00000002" in caplog.text


def test_checkpoint_round_trip_keeps_types(tmp_path):
    state = {"a": (1, 2.5, "x", None), "b": [torch.arange(3), {"c": True}], 7: {"d": torch.zeros(2, 2)}}
    ckpt.save_checkpoint(tmp_path, 3, state)
    back = ckpt.load_checkpoint(tmp_path / "step_00000003")
    assert back["a"] == (1, 2.5, "x", None) and back["b"][1] == {"c": True}
    assert torch.equal(back["b"][0], torch.arange(3)) and torch.equal(back[7]["d"], torch.zeros(2, 2))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoint_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    for file in folder.iterdir():
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file.name


def test_keep_last_prunes_old_checkpoints(tmp_path):
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.ones(1) * step})
    ckpt.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


@pytest.mark.parametrize("prior_weight, warmup, codebook_grad, moved", [
    (1.0, 0, False, (True, False)), (1.0, 0, True, (True, True)), (0.0, 0, False, (False, False)),
    (1.0, 10, False, (False, False))])
def test_prior_loss_alone_moves_the_encoder_only_when_weighted(tiny_data, tmp_path, prior_weight, warmup,
                                                                 codebook_grad, moved):
    # With a warm-up the prior's weight is 0 at step 0, so nothing moves either. The codebook moves only
    # with loss.prior_codebook_grad (the reference detaches it in the prior's logits).
    recipe = tiny_recipe(tiny_data, tmp_path / "p", "loss.pixel_weight=0", "loss.vq_weight=0",
                         "loss.gan_weight=0", f"loss.prior_weight={prior_weight}", "run.ema_decay=0",
                         f"loss.prior_warmup_steps={warmup}", f"loss.prior_codebook_grad={codebook_grad}")
    from larp.train.engine import SeededItems, setup_context

    task = TokenizerTask(recipe, setup_context(recipe.run))
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    items = SeededItems(task.train_set)
    batch = torch.utils.data.default_collate([items[(0, 1)], items[(1, 2)]])
    task.train_step(batch, 0)
    after = task.model.state_dict()
    encoder, codebook = moved
    for name, expect in (("encoder_latent_query_embed", encoder), ("encoder.blocks.0.attn.qkv.weight", encoder),
                         ("bottleneck.regularizer.embedding.weight", codebook)):
        assert (not torch.equal(before[name], after[name])) == expect, name
    assert torch.equal(before["final_layer.linear.weight"], after["final_layer.linear.weight"])


def test_prior_weight_ramp():
    from larp.train.config import LossConfig

    ramp = LossConfig(prior_weight=0.06, prior_warmup_steps=100)
    assert [ramp.prior_weight_at(s) for s in (0, 50, 100, 500)] == pytest.approx([0.0, 0.03, 0.06, 0.06])
    assert LossConfig(prior_weight=0.06).prior_weight_at(0) == 0.06


def test_recipes_reject_unknown_keys_and_validate_the_model(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1e-4\n  learning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \['learning_rate'\]"):
        load_recipe(TokenizerTrainConfig, bad)
    with pytest.raises(ConfigError, match="unknown key 'run.max_step'"):
        load_recipe(TokenizerTrainConfig, None, ["run.max_step=3"])
    with pytest.raises(ConfigError, match="unknown key.*encoder_dept"):
        load_recipe(TokenizerTrainConfig, None, ["model.config.encoder_dept=3"])
    with pytest.raises(ConfigError, match="unknown tokenizer preset 'nope'"):
        load_recipe(TokenizerTrainConfig, None, ["model.preset=nope"])
    recipe = load_recipe(TokenizerTrainConfig, None, ["model.preset=larp-tiny", "model.config.encoder_depth=3",
                                                      "optim.betas=[0.9, 0.99]"])
    assert recipe.model_config().encoder_depth == 3 and recipe.optim.betas == (0.9, 0.99)


@pytest.mark.parametrize("name", ["larp_l_long.yaml", "tiny_synthetic.yaml"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(TokenizerTrainConfig, REPO / "configs" / name)
    assert recipe.model_config().prior_model.enabled


def test_released_recipe_matches_the_spec():
    r = load_recipe(TokenizerTrainConfig, REPO / "configs" / "larp_l_long.yaml")
    c = r.model_config()
    assert (c.bottleneck_token_num, c.codebook_size, c.bottleneck_dim, c.input_size, c.frame_num) == (
        1024, 8192, 16, 128, 16)
    assert (r.loss.perceptual_weight, r.loss.gan_weight, r.loss.vq_weight, r.loss.prior_weight) == (1, 0.3, 0.1, 0.06)
    # The effective values of the reference's training (test_reference_recipes.py checks them all):
    # the prior at 1x (the configured 50x never applies), LeCam at 0.001 applied twice, float16.
    assert (r.optim.lr, r.optim.betas, r.optim.prior_lr_mult, r.discriminator.lr) == (1e-4, (0.5, 0.9), 1, 3e-5)
    assert r.loss.disc_every == 5 and r.loss.lecam_weight == 1e-6 and r.run.precision == "fp16"
    assert r.codebook.final_layer_init_std is None and not r.codebook.init_from_encoder  # released init


def test_run_folder_refuses_to_mix_runs(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x: 1\n")
    with pytest.raises(RunFolderError, match="already holds a run"):
        prepare_run_folder(tmp_path / "run", resume=False, overwrite=False)
    prepare_run_folder(tmp_path / "run", resume=False, overwrite=True)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_engine_refuses_a_dataset_smaller_than_a_batch(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path / "small", "data.batch_size=64")
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        train(recipe, TokenizerTask)
    assert isinstance(Engine, type)


def test_evaluation_reports_metrics_and_writes_pictures(tiny_data, tmp_path, monkeypatch):
    from larp.train import losses, tokenizer_task
    from larp.train.engine import setup_context

    # With the VGG weights present, evaluation adds LPIPS (a random trunk stands in for them here).
    monkeypatch.setattr(tokenizer_task, "require_vgg_weights", lambda: tmp_path)
    monkeypatch.setattr(tokenizer_task, "PerceptualLoss", lambda: losses.PerceptualLoss(pretrained_trunk=False))
    recipe = tiny_recipe(tiny_data, tmp_path / "ev", "loss.gan_weight=0")
    task = TokenizerTask(recipe, setup_context(recipe.run))
    metrics = task.evaluate(7, tmp_path)
    assert set(metrics) == {"val/psnr", "val/ssim", "val/lpips", "val/prior_top1", "val/prior_top5",
                            "val/prior_ce", "val/codebook_usage", "val/codebook_perplexity"}
    assert 0 < metrics["val/psnr"] < 60 and 0 <= metrics["val/prior_top5"] <= 1
    assert 0 < metrics["val/prior_ce"] < 2 * math.log(task.model.codebook_size)
    assert metrics["val/lpips"] > 0 and 0 < metrics["val/codebook_usage"] <= 1
    # Usage counts the codes of every validation clip, not of the last batch only.
    n = min(recipe.data.val_clips, len(task.val_set))
    videos = torch.stack([task.val_set[i]["video"] for i in range(n)])
    codes = task.model.eval().encode(videos, deterministic=True)
    assert metrics["val/codebook_usage"] == pytest.approx(codes.unique().numel() / task.model.codebook_size)
    assert n > recipe.data.batch_size
    assert (tmp_path / "samples" / "recon_step00000007.png").stat().st_size > 0
    assert (tmp_path / "samples" / "recon_step00000007.gif").stat().st_size > 0


def test_initialisation_clips_come_from_the_whole_dataset(tiny_data):
    from larp.train.tokenizer_task import init_clips, training_videos

    data = load_recipe(TokenizerTrainConfig, None, [f"data.train_csv={tiny_data['train']}", "data.num_frames=8",
                                                   "data.size=32"]).data
    dataset = training_videos(data, seed=0)  # 4 classes x 4 training clips, listed class by class
    clips = init_clips(dataset, 8, seed=3)
    assert clips.shape == (8, 3, 8, 32, 32)
    # Which rows were drawn: each clip is its video (8 frames: one window), maybe mirrored.
    dataset.transform.flip_p = 0.0
    plain = [dataset.load(i, np.random.default_rng(0))["video"] for i in range(len(dataset))]

    def row(clip: torch.Tensor) -> int:
        return min(range(len(plain)), key=lambda i: min(float((plain[i] - clip).abs().mean()),
                                                         float((plain[i].flip(-1) - clip).abs().mean())))

    rows = [row(c) for c in clips]
    assert len(set(rows)) == 8  # without replacement
    assert len({dataset.rows[i].label for i in rows}) >= 3  # not the first rows (two classes)
    assert torch.equal(init_clips(training_videos(data, seed=0), 8, seed=3), clips)  # seeded
    assert init_clips(dataset, 100, seed=3).shape[0] == len(dataset)  # at most the whole dataset


def test_progress_bar_shows_one_rate():
    from larp.train.engine import postfix

    shown = postfix({"loss": 0.5, "pixel": 0.25, "vq": 0.125, "lr": 1e-4, "prior_ce": 3.0}, 12.345)
    assert shown == {"loss": "0.5", "pixel": "0.25", "vq": "0.125", "lr": "0.0001", "clips/s": "12.3"}
    assert "clips_per_s" not in postfix({"clips_per_s": 3.0, "loss": 1.0}, 2.0)
