"""larp's official recipes against the released recipes' effective settings (as the reference's code runs
them), entry by entry: configs/larp_l_long.yaml, configs/ucf101_ar_lp.yaml and configs/k600_fp_lp.yaml
against the fixture's recipes.json, and larp's data pipeline against the released one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from larp.data.transforms import ClipTransform, pad_frames
from larp.data.video_io import clip_indices
from larp.models.config import GPTC_SIZES
from larp.sample.defaults import DEFAULT_CFG_SCALE, DEFAULT_COND_FRAMES
from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe, resolve_epochs
from larp.train.optim import make_schedule

from .test_reference_parity import ROOT

REPO = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes.json"

pytestmark = pytest.mark.skipif(not RECIPES.is_file(), reason=f"no recipes.json of the reference at {RECIPES}: set "
                                "LARP_TRAINING_PARITY_FIXTURES to a folder of reference fixtures")


def recipes() -> dict[str, Any]:
    return json.loads(RECIPES.read_text())


def number(text: str, pattern: str) -> float:
    """The number captured by `pattern` in a recipes.json description."""
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not found in {text!r}"
    return float(found.group(1))


def test_tokenizer_recipe_is_the_released_one():
    ref = recipes()["tokenizer_LARP_L_long"]
    r = load_recipe(TokenizerTrainConfig, REPO / "configs" / "larp_l_long.yaml")
    mc = r.model_config()
    # Data and batch
    assert (r.data.num_frames, r.data.size) == (ref["data"]["frames"], ref["data"]["size"])
    assert len(r.data.train_csv) == len(ref["data"]["train_csv"].split("+"))  # Kinetics-600 + UCF-101
    assert r.data.batch_size == ref["batch"]["per_gpu"]
    assert r.data.batch_size * r.optim.grad_accum_steps * ref["batch"]["gpus"] == ref["batch"]["global"]
    assert r.run.epochs == ref["epochs"]["value"]
    # Model
    m = ref["model"]
    assert (mc.bottleneck_token_num, mc.encoder_hidden_size, mc.encoder_num_heads) == (m["tokens"], m["width"], m["heads"])
    assert f"{mc.encoder_depth} enc + {mc.decoder_depth} dec" == m["depth"]
    assert f"{mc.temporal_patch_size}x{mc.patch_size}x{mc.patch_size}" == m["patch"]
    assert (mc.codebook_size, mc.bottleneck_dim) == (m["codebook"], m["code_dim"])
    prior = mc.prior_model.name.removeprefix("gptc-")
    layers, heads, width = GPTC_SIZES[mc.prior_model.name]
    assert f"gptc-{prior} ({layers} layers, {heads} heads, {width} wide)" == m["prior"]
    # Optimisers and schedule
    g, d, s = ref["optimizer_G"], ref["optimizer_D"], ref["lr_schedule"]
    assert (g["type"], list(r.optim.betas), r.optim.weight_decay, r.optim.lr) == ("Adam", g["betas"], g["weight_decay"],
                                                                              g["base_lr"])
    assert g["eps"] == 1e-8  # torch's default, which larp uses
    assert r.optim.prior_lr_mult == 1.0 and "effective prior multiplier 1" in g["effective_lr_per_group"]
    assert (d["type"], list(r.discriminator.betas), r.discriminator.lr) == ("Adam", d["betas"], d["base_lr"])
    assert d["weight_decay"] == 0.0 and d["eps"] == 1e-8
    assert (s["type"], r.optim.warmup_epochs, r.optim.min_lr_ratio) == ("cosine", s["warmup_epoch"], s["min_lr_mult"])
    assert r.optim.grad_clip == 0.0 and "none" in recipes()["common"]["grad_clip"]["value"]
    assert r.run.ema_decay == 0.0 and "none" in recipes()["common"]["ema"]["value"]
    assert r.run.precision == "fp16" and ref["precision"]["value"].startswith("float16 autocast")
    assert "GradScaler" in ref["precision"]["value"] and r.run.tf32
    assert r.run.seed == number(recipes()["common"]["seed"]["value"], r"manualSeed (\d+)")
    # Losses
    text = ref["losses"]["generator"]
    assert r.loss.pixel == "l1" and r.loss.pixel_weight == number(text, r"L1 \(x([\d.]+)")
    assert r.loss.perceptual_weight == number(text, r"LPIPS-VGG per frame \(x([\d.]+)\)")
    assert r.loss.gan_weight == number(text, r"([\d.]+) \* \(-mean log sigmoid D\(recon\)\)")
    assert r.loss.gan_loss == "bce" and r.loss.l2_weight == 0.0 and r.loss.motion_weight == 0.0
    assert r.loss.vq_weight == number(text, r"([\d.]+) \* \(([\d.]+)\*commit")
    assert mc.vq.commitment_loss_weight == number(text, r"\(([\d.]+)\*commit")
    assert mc.vq.codebook_loss_weight == number(text, r"([\d.]+)\*codebook\)")
    assert r.loss.prior_weight == number(text, r"([\d.]+) \* prior CE") and r.loss.prior_warmup_steps == 0
    assert ref["losses"]["vq_weight_warmup"].startswith("none")
    assert not r.loss.prior_codebook_grad  # the prior's logits use a detached codebook
    # Discriminator
    disc = ref["discriminator"]
    assert (r.discriminator.width, r.discriminator.heads, r.discriminator.depth) == tuple(
        int(number(disc["arch"], p)) for p in (r"width (\d+)", r"(\d+) heads", r"(\d+) layers"))
    assert disc["arch"].startswith(f"transformer over {mc.temporal_patch_size}x{mc.patch_size}x{mc.patch_size}")
    assert (r.discriminator.patch, r.discriminator.temporal_patch) == (0, 0)  # the tokenizer's patches
    assert r.loss.disc_every == number(disc["d_every"], r"global_step % (\d+) == 0")
    assert (r.loss.gan_start_step, r.loss.disc_start) == (0, 0) and disc["d_start"].startswith("epoch 0")
    assert r.loss.lecam_weight == number(disc["lecam"], r"effectively ([\d.e-]+)")
    assert r.loss.lecam_decay == number(disc["lecam"], r"decay ([\d.]+)")
    assert r.loss.r1_weight == disc["r1"] == 0.0 and disc["spectral_norm"] is False
    # The prior's scheduled sampling and the quantiser
    ss, p = ref["scheduled_sampling"], mc.prior_model
    assert (p.mix_ss_peak_steps_ratio, p.mix_ss_max_ratio) == (number(ss["ratio"], r"\(([\d.]+) \* T\)"),
                                                             number(ss["ratio"], r"^min\(.*, ([\d.]+)\),"))
    assert p.n_rounds == number(ss["rounds"], r"^(\d+)") and p.avg_loss_over_rounds
    assert p.latent_ce_temperature == ref["temperature"]["latent_ce_temperature"]
    assert mc.vq.stochastic and mc.vq.stochastic_temperature == ref["temperature"]["vq_stochastic_temperature"]
    assert not p.no_dropout and "0.1" in ref["dropout"]["prior"]  # the prior's dropout 0.1


def test_ar_recipes_are_the_released_ones():
    for name, file, fp in (("ar_UCF101_class_conditional_LP", "ucf101_ar_lp.yaml", False),
                           ("ar_K600_frame_prediction", "k600_fp_lp.yaml", True)):
        ref = recipes()[name]
        r = load_recipe(ARTrainConfig, REPO / "configs" / file)
        mc = r.model_config()
        assert mc.frame_prediction == fp
        assert r.data.batch_size == ref["batch"]["per_gpu"]
        assert r.data.batch_size * r.optim.grad_accum_steps * ref["batch"]["gpus"] == ref["batch"]["global"]
        assert r.run.epochs == ref["epochs"]["value"]
        o = ref["optimizer"]
        assert (o["type"], list(r.optim.betas), r.optim.lr, r.optim.weight_decay) == ("AdamW", o["betas"],
                                                                                   o["base_lr"], o["weight_decay"])
        assert o["eps"] == 1e-8
        assert (r.optim.warmup_epochs, r.optim.min_lr_ratio) == (ref["lr_schedule"]["warmup_epoch"],
                                                                 ref["lr_schedule"]["min_lr_mult"])
        assert r.optim.grad_clip == 0.0 and r.run.ema_decay == 0.0
        assert r.run.precision == "bf16" and ref["precision"]["value"].startswith("bfloat16 autocast")
        drop = ref["dropout"]
        assert (mc.token_dropout_p, mc.resid_dropout_p, mc.ffn_dropout_p, mc.attn_dropout_p, mc.drop_path_rate) == (
            drop["token"], drop["residual"], drop["ffn"], drop["attention"], drop["drop_path"])
        if fp:
            assert r.num_cond_frames == DEFAULT_COND_FRAMES == ref["evaluation_sampling"]["num_cond_frames"]
            assert mc.cls_token_num == mc.max_seq_len + 1 and not mc.has_null_class
        else:
            assert mc.num_classes == ref["model"]["num_classes"] and mc.cls_token_num == ref["model"]["cls_token_num"]
            assert mc.class_dropout_prob == float(drop["class_label"].split()[0])
            assert DEFAULT_CFG_SCALE == ref["evaluation_sampling"]["cfg_scale"]


def test_ucf101_ar_schedule_has_the_released_steps():
    """149 steps per epoch on UCF-101 split 1 (9,537 clips) at 8 x 8 clips: 447,000 steps, 596 of warm-up."""
    ref = recipes()["ar_UCF101_class_conditional_LP"]
    r = load_recipe(ARTrainConfig, REPO / "configs" / "ucf101_ar_lp.yaml")
    clips = recipes()["dataset_sizes"]["ucf101_train.csv"]
    assert resolve_epochs(r, clips, processes=ref["batch"]["gpus"]) == ref["steps_per_epoch"]["value"]
    assert r.run.max_steps == ref["steps_per_epoch"]["total_steps"]
    assert r.optim.warmup_steps == ref["lr_schedule"]["warmup_steps"]
    schedule = make_schedule(r.optim, r.run.max_steps)
    m = ref["lr_schedule"]["min_lr_mult"]
    assert schedule(1) == pytest.approx(m + (1 - m) / 596)  # "m + (1-m)/W (not 0, not m)"
    assert schedule(596) == 1.0 and schedule(447000) == pytest.approx(m)


# ----------------------------------------------------------------------------------------- data pipeline
def frames_numbered(count: int, height: int = 240, width: int = 320) -> np.ndarray:
    """(count, H, W, 3) uint8 frames: frame i holds the value i in its first channel, a gradient elsewhere."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[..., 0] = np.arange(count, dtype=np.uint8)[:, None, None]
    frames[..., 1] = (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8)[None, None, :]
    frames[..., 2] = (np.arange(height) * 255 // max(height - 1, 1)).astype(np.uint8)[None, :, None]
    return frames


def test_training_clip_is_consecutive_native_frames_with_a_uniform_start():
    text = recipes()["data_pipeline"]["training_UCF101_and_K600"]["clip"]
    assert "consecutive" in text and "stride 1" in text and "start uniform in [0, len-16]" in text
    starts = set()
    for seed in range(400):
        idx = clip_indices(40, 16, None, 1, "consecutive", np.random.default_rng(seed))
        assert list(idx) == list(range(idx[0], idx[0] + 16))
        starts.add(int(idx[0]))
    assert starts == set(range(0, 40 - 16 + 1))  # every start of [0, len-16], none beyond


def test_short_clips_are_padded_with_their_last_frame():
    assert "last frame repeated (replicate padding)" in recipes()["data_pipeline"]["training_UCF101_and_K600"]["clip"]
    padded = pad_frames(frames_numbered(5), 16)
    assert padded.shape[0] == 16 and (padded[5:, 0, 0, 0] == 4).all()


def test_resize_crop_flip_and_range_are_the_released_ones():
    """Shorter side to the size (bilinear, antialiased, the long side truncated), a central crop, one flip
    decision per clip with p = 0.5, values uint8 / 255 in [0, 1]. larp resizes the uint8 frames (the fast
    path): against the reference's resize of float frames, the values differ by at most half a grey level."""
    pipe = recipes()["data_pipeline"]["training_UCF101_and_K600"]
    assert "Resize(128, antialias=True)" in pipe["resize_crop"] and "CenterCrop(128)" in pipe["resize_crop"]
    assert "RandomHorizontalFlip(p=0.5)" in pipe["flip"] and "uint8 / 255" in pipe["normalisation"]
    frames = frames_numbered(16)
    reference = T.Compose([T.Resize(128, antialias=True), T.CenterCrop(128)])(
        torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0)  # (3, T, H, W) floats, as the reference
    evaluation = ClipTransform(128, train=False)(frames)
    assert evaluation.shape == reference.shape == (3, 16, 128, 128) and evaluation.dtype == torch.float32
    assert float((evaluation - reference).abs().max()) <= 0.5 / 255 + 1e-6
    flips = []
    train = ClipTransform(128, train=True)
    for seed in range(200):
        clip = train(frames, np.random.default_rng(seed))
        same, mirrored = torch.equal(clip, evaluation), torch.equal(clip, evaluation.flip(-1))
        assert same or mirrored  # the whole clip flipped or not: one decision per clip, no random crop
        flips.append(mirrored)
    assert 0.4 < np.mean(flips) < 0.6


def test_recipes_flip_training_clips_only():
    for cls, file in ((TokenizerTrainConfig, "larp_l_long.yaml"), (ARTrainConfig, "ucf101_ar_lp.yaml"),
                      (ARTrainConfig, "k600_fp_lp.yaml")):
        assert load_recipe(cls, REPO / "configs" / file).data.flip
    assert "no flip" in recipes()["data_pipeline"]["tokenizer_training_time_validation"]["value"]
    assert not ClipTransform(128, train=False).train  # validation and evaluation clips are never flipped


# ------------------------------------------------------------------------------------ evaluation protocols
def test_tokenizer_evaluation_is_the_released_protocol():
    from larp.eval.protocols import PROTOCOLS

    ref = recipes()["data_pipeline"]["rFVD_eval_larp_tokenizer"]["value"]
    paper = PROTOCOLS["paper"]
    assert "every video of the csv (default ucf101_train.csv" in ref and "one 16-frame clip" in ref
    assert paper.split == "train" and paper.clips_per_video == 1 and (paper.num_frames, paper.size) == (16, 128)
    assert paper.expected_videos == recipes()["dataset_sizes"]["ucf101_train.csv"]
    assert "Resize(128)+CenterCrop(128), no flip" in ref and "--det = argmax VQ" in ref


def test_generation_fvd_picks_the_released_chunks(tmp_path):
    """Every non-overlapping 16-frame chunk of every video, then random.Random(42).sample of them; the
    frame-prediction protocol resizes to 64x64 before the detector, with guidance 1 and 5 context frames."""
    import random

    from larp.eval.protocols import ucf_gfvd_chunks
    from larp.sample.job import FP_FVD_SIZE, SampleConfig

    ref = recipes()["data_pipeline"]["gFVD_sample_py"]["value"]
    seed = int(number(ref, r"random\.Random\((\d+)\)\.sample"))
    assert "non-overlapping 16-frame chunks [16i, 16i+16)" in ref
    assert FP_FVD_SIZE == number(ref, r"resized to (\d+)x\d+")
    assert SampleConfig("a", "t", "o", "d.csv").dataset_split_seed == seed
    assert SampleConfig("a", "t", "o", "d.csv").cfg_scale == number(ref, r"UCF-101: [^,]+, [\d,]+ samples, cfg ([\d.]+)")
    fp = SampleConfig("a", "t", "o", "d.csv", fp=True)
    assert (fp.cfg_scale, fp.num_cond_frames) == (1.0, number(ref, r"condition = first (\d+) frames"))
    videos = []
    for i in range(3):
        (tmp_path / f"v{i}.mp4").write_bytes(b"")
        videos.append(f"{i},{tmp_path / f'v{i}.mp4'},a,0")
    (tmp_path / "list.csv").write_text("id,path,action,label\n" + "\n".join(videos) + "\n")
    counts = [40, 16, 70]  # chunks: 2 + 1 + 4 = 7 (a tail shorter than 16 frames is no chunk)
    chunks = ucf_gfvd_chunks(tmp_path / "list.csv", num_samples=5, seed=seed, frame_counts=counts)
    index = [(v, 16 * i) for v, n in enumerate(counts) for i in range(n // 16)]
    assert [(c.video_index, c.start) for c in chunks] == [index[i] for i in random.Random(seed).sample(range(7), 5)]


def test_an_epoch_is_one_clip_per_video_whatever_the_token_cache_holds(tmp_path):
    """A cache of 16 windows and their mirror images per video: the epochs still count videos, as the
    reference's (one random clip per video per epoch), so the released schedule keeps its length."""
    from larp.train.ar_task import ARTask
    from larp.train.engine import TrainContext

    from .test_reference_parity import write_token_cache

    videos, per_video = 24, 16 * 2
    tokens = torch.randint(0, 32, (videos * per_video, 8))
    write_token_cache(tmp_path / "cache", tokens, torch.zeros(len(tokens), dtype=torch.long), None)
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    meta["codebook_size"] = 32
    (tmp_path / "cache" / "meta.json").write_text(json.dumps(meta))
    shard = tmp_path / "cache" / "shard_00000.safetensors"
    from safetensors.torch import load_file, save_file

    data = load_file(str(shard))
    data["video"] = torch.arange(videos).repeat_interleave(per_video)
    save_file(data, str(shard))
    recipe = load_recipe(ARTrainConfig, None, [
        "model.preset=ar-tiny", "model.config.vocab_size=32", "model.config.max_seq_len=8",
        f"data.token_cache={tmp_path / 'cache'}", "data.batch_size=4", "data.num_workers=0",
        "run.epochs=3", "optim.warmup_epochs=1", "run.device=cpu", f"run.out_dir={tmp_path / 'run'}"])
    task = ARTask(recipe, TrainContext(torch.device("cpu")))
    assert task.train_set.num_videos == videos and len(task.train_set) == videos * per_video
    assert (recipe.run.max_steps, recipe.optim.warmup_steps) == (3 * 24 // 4, 24 // 4)
