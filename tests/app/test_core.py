"""The app's work without the page: the figures it shows are the library's, its files round-trip, bad input
gives one-line messages."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
from larp.app import core
from larp.data.synthetic import synthetic_class, synthetic_clip
from larp.data.transforms import center_crop, resize_short_side
from larp.data.video_io import read_video, to_tensor, write_mp4
from larp.sample.defaults import DEFAULT_CFG_SCALE
from larp.sample.generate import frame_prediction_condition, generate
from larp.utils.errors import CheckpointError
from larp.videos import VideoTokens, reconstruct_video, tokenize_video


def test_reconstruct_shows_the_library_figures_and_a_token_file_that_round_trips(models, clip_file, tmp_path):
    fractions = []
    r = core.reconstruct(models, clip_file, tmp_path / "out", progress=lambda f, text: fractions.append(f))
    frames, fps = read_video(clip_file)
    _, expected_psnr = reconstruct_video(models.tokenizer, frames)
    assert r.psnr == expected_psnr  # the same tokens and decoding as `larp reconstruct`
    tokens = VideoTokens.load(r.tokens_file)
    assert tokens == tokenize_video(models.tokenizer, frames, spatial="cover", fps=fps,
                                    tokenizer_id=models.tokenizer_id)
    # 20 frames -> 3 windows of 8; 40x56 -> shorter side 32, two 32x32 tiles across 45 pixels; 32 tokens each.
    assert (r.windows, r.tiles, r.num_tokens) == (3, 2, 3 * 2 * 32)
    assert r.bits_per_pixel == pytest.approx(192 * math.log2(128) / (20 * 40 * 56), rel=1e-12)
    assert (r.num_frames, r.total_frames, r.size, r.fps) == (20, 20, (40, 56), 8.0)
    # Side by side, enlarged 6x (256 // 40) for the page: 240 x (2 * 336 + a 2-pixel gap).
    shown, _ = read_video(r.video)
    assert shown.shape == (20, 240, 674, 3)
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] < 1.0
    assert f"PSNR: {r.psnr:.2f} dB" in r.summary() and "192 tokens" in r.summary()


def test_reconstruct_tile_layout_and_frame_limit(models, clip_file, tmp_path):
    r = core.reconstruct(models, clip_file, tmp_path, tile=True, max_frames=9)
    # 9 frames -> 2 windows; 40x56 at native size: 2 x 2 tiles of 32x32.
    assert (r.num_frames, r.total_frames, r.windows, r.tiles) == (9, 20, 2, 4)
    tokens = VideoTokens.load(r.tokens_file)
    assert tokens.layout.spatial == "tile" and tokens.num_frames == 9
    assert "the first 9 of 20 frames" in r.summary()


@pytest.mark.parametrize("spatial", ["cover", "tile", "crop"])
def test_tokenize_with_progress_equals_one_tokenize_video_call(models, spatial):
    frames = synthetic_clip(2, np.random.default_rng(1), frames=45, size=48)[:, :, :40]
    seen = []
    tokens = core.tokenize_with_progress(models.tokenizer, frames, spatial=spatial, fps=12.0, tokenizer_id="x",
                                         progress=lambda f, text: seen.append(text))
    assert tokens == tokenize_video(models.tokenizer, frames, spatial=spatial, fps=12.0, tokenizer_id="x")
    assert seen == ["tokenizing frames 1-32", "tokenizing frames 33-45"]  # 4 windows of 8 at a time


def test_bad_uploads_give_one_line_messages(models, bad_file, clip_file, tmp_path):
    with pytest.raises(ValueError, match=r"no video given: upload one \(or pick a demo clip\) first"):
        core.reconstruct(models, None, tmp_path)
    with pytest.raises(ValueError, match="cannot read video .*notes.mp4"):
        core.reconstruct(models, bad_file, tmp_path)
    with pytest.raises(ValueError, match="frames are 56x40; this page takes frames of at most 1,000 pixels"):
        core.read_upload(clip_file, max_pixels=1000)
    assert not list(tmp_path.iterdir())  # nothing written for a refused upload


def test_generate_samples_the_library_tokens(models, tmp_path):
    s = core.generate_clips(models, 3, tmp_path, cfg_scale=2.0, temperature=0.8, seed=7, num_samples=2)
    expected = generate(models.ar, torch.full((2,), 3), cfg_scale=2.0, temperature=0.8,
                        generator=torch.Generator().manual_seed(7))
    assert torch.equal(s.tokens, expected)
    again = core.generate_clips(models, 3, tmp_path / "again", cfg_scale=2.0, temperature=0.8, seed=7, num_samples=2)
    other = core.generate_clips(models, 3, tmp_path / "other", cfg_scale=2.0, temperature=0.8, seed=8, num_samples=2)
    assert torch.equal(again.tokens, s.tokens) and not torch.equal(other.tokens, s.tokens)
    assert s.class_name == synthetic_class(3).name == "cyan_diamond_rising"
    # The random tokenizer decodes to no visible object: the classifier says so instead of naming a class.
    assert s.classified_as == ("no object", "no object")
    assert read_video(s.video)[0].shape == (8, 256, 2 * 256 + 2, 3)
    assert "2 samples of cyan_diamond_rising" in s.summary() and "strictly right (colour, shape and motion, as " \
        "the demo's report counts) 0 of 2" in s.summary()


def test_generate_refuses_bad_settings(models, model_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"the class must lie in 0\.\.4, got 5"):
        core.generate_clips(models, 5, tmp_path)
    with pytest.raises(ValueError, match=r"number of samples must lie in 1\.\.8, got 9"):
        core.generate_clips(models, 0, tmp_path, num_samples=9)
    for seed in (-1, 2.5, None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"the seed must be a whole number >= 0, got {seed}"):
            core.generate_clips(models, 0, tmp_path, seed=seed)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        core.generate_clips(models, 0, tmp_path, temperature=-0.5)
    no_ar = core.load_models(model_dirs["tokenizer"])
    with pytest.raises(ValueError, match="no class-conditional model is loaded: start `larp app` with --ar_model"):
        core.generate_clips(no_ar, 0, tmp_path)
    no_null_class = dataclasses.replace(ar_preset("ar-tiny"), class_dropout_prob=0.0)
    unguided = core.AppModels(models.tokenizer, "t", ar=LARPAR(no_null_class).eval(), class_names=("a",) * 5)
    with pytest.raises(ValueError, match="trained without a null class.*set guidance to 1"):
        core.generate_clips(unguided, 0, tmp_path, cfg_scale=3.0)
    assert core.generate_clips(unguided, 0, tmp_path, cfg_scale=1.0).classified_as is None
    # Without a null class the default is no guidance, whatever the settings say.
    unguided.sampling = core.SamplingSettings(cfg_scale=3.0, temperature=0.5)
    expected = generate(unguided.ar, torch.zeros(1, dtype=torch.long), temperature=0.5,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(core.generate_clips(unguided, 0, tmp_path / "u").tokens, expected)


def test_generate_defaults_to_the_models_sampling_settings(models, tmp_path):
    assert models.sampling == core.SamplingSettings(DEFAULT_CFG_SCALE, 1.0)  # not a demo's model
    ar = LARPAR(ar_preset("ar-tiny")).eval()
    torch.nn.init.normal_(ar.output.weight, generator=torch.Generator().manual_seed(0))  # a fresh head is 0
    plain_models = dataclasses.replace(models, ar=ar)
    tuned = dataclasses.replace(plain_models, sampling=core.SamplingSettings(cfg_scale=1.5, temperature=0.5))
    by_default = core.generate_clips(tuned, 2, tmp_path / "a", seed=3, num_samples=2)
    explicit = core.generate_clips(plain_models, 2, tmp_path / "b", cfg_scale=1.5, temperature=0.5, seed=3,
                                   num_samples=2)
    plain = core.generate_clips(plain_models, 2, tmp_path / "c", seed=3, num_samples=2)
    assert torch.equal(by_default.tokens, explicit.tokens) and not torch.equal(by_default.tokens, plain.tokens)


def test_a_demo_models_sampling_settings_come_from_its_demo_json(model_dirs, tmp_path):
    demo = tmp_path / "demo"
    (demo / "ar").mkdir(parents=True)
    shutil.copytree(model_dirs["ar"], demo / "ar" / "model")
    (demo / "demo.json").write_text(json.dumps({"config": {"cfg_scale": 1.5, "temperature": 0.5, "top_k": 0}}))
    loaded = core.load_models(model_dirs["tokenizer"], demo / "ar" / "model")
    assert loaded.sampling == core.SamplingSettings(cfg_scale=1.5, temperature=0.5)
    assert core.sampling_settings(str(model_dirs["ar"])) == core.SamplingSettings()  # outside a demo folder
    (demo / "demo.json").write_text(json.dumps({"config": {"cfg_scale": 1.5}}))
    with pytest.raises(ValueError, match=r"demo\.json should hold the demo's sampling settings \(config\.cfg_scale "
                                         r"and config\.temperature\); found no key 'temperature'"):
        core.load_models(model_dirs["tokenizer"], demo / "ar" / "model")


def test_continue_conditions_on_the_first_frames(models, clip_file, tmp_path):
    c = core.continue_clip(models, clip_file, tmp_path, context_frames=3, temperature=1.0, seed=5)
    frames, _ = read_video(clip_file)
    context = center_crop(resize_short_side(to_tensor(frames[:8]), 32), 32)[None, :, :3]
    expected = generate(models.fp, frame_prediction_condition(models.tokenizer, context), temperature=1.0,
                        generator=torch.Generator().manual_seed(5))
    assert torch.equal(c.tokens, expected)
    assert read_video(c.video)[0].shape == (8, 256, 514, 3)
    assert "frames 1-3 of the upload condition the model" in c.summary()


def test_continue_refuses_bad_input(models, model_dirs, tmp_path):
    short = write_mp4(tmp_path / "short.mp4", synthetic_clip(0, np.random.default_rng(0), frames=2, size=32))
    with pytest.raises(ValueError, match=r"the clip has 2 frame\(s\); the context needs 4"):
        core.continue_clip(models, short, tmp_path, context_frames=4)
    with pytest.raises(ValueError, match="the context must be 1 to 7 frames for this 8-frame model, got 8"):
        core.continue_clip(models, short, tmp_path, context_frames=8)
    with pytest.raises(ValueError, match="no frame-prediction model is loaded: start `larp app` with --fp_model"):
        core.continue_clip(core.load_models(model_dirs["tokenizer"]), short, tmp_path)


def test_load_models_checks_that_they_fit(model_dirs, tmp_path):
    with pytest.raises(CheckpointError, match="is a frame-prediction model; pass it with --fp_model"):
        core.load_models(model_dirs["tokenizer"], model_dirs["fp"])
    with pytest.raises(CheckpointError, match="is a class-conditional model; pass it with --ar_model"):
        core.load_models(model_dirs["tokenizer"], fp_model=model_dirs["ar"])
    other = LARPTokenizer(tokenizer_preset("larp-sanity-32")).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"vocab_size is 128 but the tokenizer's codebook has 1024 codes; they do "
                                         r"not fit together \(.*ar\)"):
        core.load_models(other, model_dirs["ar"])
    with pytest.raises(CheckpointError, match="neither a model folder"):
        core.load_models(tmp_path / "missing")


def test_class_names(model_dirs, tmp_path):
    assert core.class_names(2, "synthetic") == (("red_square_horizontal", "yellow_circle_up"), True)
    assert core.class_names(2, "index") == (("class 0", "class 1"), False)
    names = tmp_path / "names.txt"
    names.write_text("walk\n\nrun\n")
    assert core.class_names(2, str(names)) == (("walk", "run"), False)
    with pytest.raises(ValueError, match="names.txt holds 2 class names; the model has 3 classes"):
        core.class_names(3, str(names))
    with pytest.raises(ValueError, match="one of auto, synthetic, index or a text file"):
        core.class_names(3, "colours")
    # auto: the synthetic names for a model inside a `larp demo` folder (DEMO/ar/model beside DEMO/demo.json)
    assert core.class_names(2, "auto", str(model_dirs["ar"])) == (("class 0", "class 1"), False)
    demo = tmp_path / "demo"
    (demo / "ar" / "model").mkdir(parents=True)
    (demo / "demo.json").write_text("{}")
    assert core.class_names(2, "auto", str(demo / "ar" / "model"))[1] is True
    assert core.class_names(31, "auto", str(demo / "ar" / "model"))[1] is False  # more than the set has


def test_synthetic_verdict_reads_real_clips():
    video = to_tensor(synthetic_clip(4, np.random.default_rng(3), frames=16, size=64))
    assert core.synthetic_verdict(video, 10) == synthetic_class(4).name == core.class_names(10, "synthetic")[0][4]
    assert core.synthetic_verdict(torch.zeros(3, 16, 64, 64), 10) == "no object"


def test_synthetic_verdict_is_the_reports_strict_rule(monkeypatch):
    """A blob of the right colour and path is not the class (the lenient classifier would say it is)."""
    video = to_tensor(synthetic_clip(4, np.random.default_rng(3), frames=16, size=64))
    spec = synthetic_class(4)
    monkeypatch.setattr(core, "clip_attributes", lambda v: (spec.colour, None, spec.motion))
    assert core.synthetic_verdict(video, 10) == f"{spec.colour} ? {spec.motion}: no class"


def test_demo_clips_fit_the_tokenizer(models, tmp_path):
    paths = core.demo_clips(models, tmp_path)
    assert [p.name for p in paths] == ["red_square_horizontal.mp4", "yellow_circle_up.mp4", "green_triangle_down.mp4"]
    assert read_video(paths[0])[0].shape == (16, 32, 32, 3)  # two windows of the model's 8 frames


def test_side_by_side_enlarges_small_clips_only(tmp_path):
    white, black = np.full((2, 20, 30, 3), 255, np.uint8), np.zeros((2, 20, 30, 3), np.uint8)
    shown, _ = read_video(core.write_side_by_side(tmp_path / "small.mp4", [white, black], fps=8))
    assert shown.shape == (2, 240, 2 * 360 + 2, 3)  # 12x: the largest whole factor up to 256 rows
    assert shown[:, :, :355].min() > 240 and shown[:, :, 367:].max() < 15  # white left, black right
    large = np.zeros((2, 300, 40, 3), np.uint8)
    assert read_video(core.write_side_by_side(tmp_path / "large.mp4", [large], fps=8))[0].shape == (2, 300, 40, 3)
