"""AR training: token cache equivalence, both data paths, resume, weight decay groups, pairing checks."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
from larp.data.datasets import VideoCSVDataset
from larp.data.synthetic import write_synthetic_dataset
from larp.data.transforms import ClipTransform
from larp.data.video_io import read_clip
from larp.train import checkpoint as ckpt
from larp.train.ar_task import ARTask, check_pair, decay_groups
from larp.train.config import ARTrainConfig, load_recipe
from larp.train.engine import TrainingInterrupted
from larp.train.run import train
from larp.train.token_cache import (
    TokenCacheDataset,
    build_token_cache,
    pad_context,
    read_cache_meta,
    window_start,
)
from tests.train.conftest import ar_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tiny_data, tiny_tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "tokens"
    tok = LARPTokenizer.from_pretrained(tiny_tokenizer)
    ds = VideoCSVDataset(tiny_data["train"], num_frames=8, size=32)
    build_token_cache(tok, ds, out, tokenizer_id=str(tiny_tokenizer), windows_per_video=2, flip=True, seed=3,
                      fp_context_frames=3, batch_size=5, shard_size=16, progress=False)
    return out


def test_cache_encodes_each_distinct_window_once(tiny_tokenizer, tmp_path):
    data = write_synthetic_dataset(tmp_path / "long", classes=2, clips_per_class=4, frames=11, size=32, seed=1)
    ds = VideoCSVDataset(data["train"], num_frames=8, size=32)
    meta = build_token_cache(LARPTokenizer.from_pretrained(tiny_tokenizer), ds, tmp_path / "tokens",
                             tokenizer_id="t", windows_per_video=3, flip=False, seed=0, progress=False)
    # 11-frame videos have 4 possible starts: 3 seeded draws collide now and then.
    distinct = [sorted({window_start(11, 8, 0, v, w) for w in range(3)}) for v in range(len(ds))]
    assert any(len(d) < 3 for d in distinct) and any(len(d) > 1 for d in distinct)  # both cases occur
    entries = list(TokenCacheDataset(tmp_path / "tokens").entries())
    assert meta.num_entries == sum(len(d) for d in distinct)
    assert [sorted(s for v, s, _ in entries if v == video) for video in range(len(ds))] == distinct


def test_cache_holds_the_tokens_of_the_clips_it_names(cache, tiny_data, tiny_tokenizer):
    tok = LARPTokenizer.from_pretrained(tiny_tokenizer)
    ds = TokenCacheDataset(cache)
    meta = read_cache_meta(cache)
    # 16 videos of exactly 8 frames: their 2 windows coincide and are encoded once, each also flipped.
    assert meta.num_entries == len(ds) == 16 * 1 * 2 and len(meta.shards) > 1
    videos = VideoCSVDataset(tiny_data["train"], num_frames=8, size=32)
    entries = list(ds.entries())
    assert {e[2] for e in entries} == {True, False}
    for i in (0, 1, 7, 31):
        video, start, flip = entries[i]
        # Independent path: read the window, centre-crop, flip, encode (what on-the-fly training does).
        clip = ClipTransform(32, train=False)(read_clip(videos.rows[video].path, 8, start))
        clip = clip.flip(-1) if flip else clip
        with torch.no_grad():
            tokens = tok.encode(clip[None])
            cond = tok.encode(pad_context(clip[None], 3))
        assert torch.equal(ds[i]["tokens"], tokens[0]) and torch.equal(ds[i]["cond"], cond[0])
        assert ds[i]["label"] == videos.rows[video].label


def test_cache_files_honour_the_umask(tiny_data, tiny_tokenizer, tmp_path):
    ds = VideoCSVDataset(tiny_data["train"], num_frames=8, size=32)
    old = os.umask(0o002)
    try:
        build_token_cache(LARPTokenizer.from_pretrained(tiny_tokenizer), ds, tmp_path / "tokens", tokenizer_id="t",
                          flip=False, shard_size=8, progress=False)
    finally:
        os.umask(old)
    files = list((tmp_path / "tokens").iterdir())
    assert len(files) > 2 and all(f.stat().st_mode & 0o777 == 0o664 for f in files), files


def test_cache_refuses_to_overwrite(cache, tiny_data, tiny_tokenizer):
    tok = LARPTokenizer.from_pretrained(tiny_tokenizer)
    ds = VideoCSVDataset(tiny_data["train"], num_frames=8, size=32)
    with pytest.raises(FileExistsError, match="already holds a token cache"):
        build_token_cache(tok, ds, cache, tokenizer_id="x", progress=False)


def test_cache_and_on_the_fly_batches_give_the_same_tokens(cache, tiny_data, tiny_tokenizer, tmp_path):
    recipe = ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "a", f"data.train_csv={tiny_data['train']}")
    from larp.train.engine import setup_context

    task = ARTask(recipe, setup_context(recipe.run))
    ds = TokenCacheDataset(cache)
    videos = VideoCSVDataset(tiny_data["train"], num_frames=8, size=32)
    picks = [0, 5, 9]
    clips = []
    for i in picks:
        video, start, flip = list(ds.entries())[i]
        clip = ClipTransform(32, train=False)(read_clip(videos.rows[video].path, 8, start))
        clips.append(clip.flip(-1) if flip else clip)
    online, _ = task.encode_batch({"video": torch.stack(clips), "label": torch.zeros(3, dtype=torch.long)})
    cached, _ = task.encode_batch({"tokens": torch.stack([ds[i]["tokens"] for i in picks]),
                                   "label": torch.zeros(3, dtype=torch.long)})
    assert torch.equal(online, cached)


def test_ar_training_from_cache_resumes_exactly(cache, tiny_data, tiny_tokenizer, tmp_path, monkeypatch):
    full = ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "full", f"data.token_cache={cache}")
    metrics = train(full, ARTask)
    assert metrics["val/loss"] > 0 and (tmp_path / "full" / "samples" / "ar_step00000006.png").exists()
    part = ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "part", f"data.token_cache={cache}")
    original = ARTask.train_step

    def interrupting(self, batch, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, step)

    monkeypatch.setattr(ARTask, "train_step", interrupting)
    with pytest.raises(TrainingInterrupted):
        train(part, ARTask)
    monkeypatch.setattr(ARTask, "train_step", original)
    train(part, ARTask, resume=True)
    a = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "full" / "checkpoints")[-1])["task"]
    b = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "part" / "checkpoints")[-1])["task"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    exported = LARPAR.from_pretrained(tmp_path / "part" / "model")
    assert all(torch.equal(v, b["model"][k]) for k, v in exported.state_dict().items())


def test_frame_prediction_training_from_cache(cache, tiny_data, tiny_tokenizer, tmp_path):
    recipe = ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "fp", f"data.token_cache={cache}",
                       "model.config.frame_prediction=true", "model.config.cls_token_num=33",
                       "num_cond_frames=3", "run.max_steps=2", "run.eval_every=2")
    metrics = train(recipe, ARTask)
    assert metrics["val/loss"] > 0
    bad = ar_recipe(tiny_data, tiny_tokenizer, tmp_path / "fp2", f"data.token_cache={cache}",
                    "model.config.frame_prediction=true", "model.config.cls_token_num=33", "num_cond_frames=5")
    with pytest.raises(ValueError, match="stores 3 context frames"):
        train(bad, ARTask)


def test_weight_decay_applies_to_linear_weights_only():
    model = LARPAR(ar_preset("ar-tiny"))
    decayed, plain = decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decayed["params"]} == {
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) for n in [n + ".weight"]}
    assert "abs_pe" in {names[id(p)] for p in plain["params"]}
    assert "tok_embeddings.weight" in {names[id(p)] for p in plain["params"]}
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0


def test_tokenizer_and_ar_model_must_fit():
    tok = LARPTokenizer(tokenizer_preset("larp-tiny"))
    cfg = ar_preset("ar-tiny")
    cfg.vocab_size = 256
    with pytest.raises(ValueError, match="vocab_size is 256 but the tokenizer's codebook has 128 codes"):
        check_pair(tok, LARPAR(cfg))
    cfg = ar_preset("ar-tiny")
    cfg.max_seq_len = 64
    with pytest.raises(ValueError, match="makes max_seq_len=64 tokens but the tokenizer uses 32 tokens per clip"):
        check_pair(tok, LARPAR(cfg))


@pytest.mark.parametrize("name", ["ucf101_ar_lp.yaml", "k600_fp_lp.yaml", "tiny_synthetic_ar.yaml"])
def test_shipped_ar_recipes_load(name):
    recipe = load_recipe(ARTrainConfig, REPO / "configs" / name)
    cfg = recipe.model_config()
    assert cfg.frame_prediction == ("fp" in name)
    if "lp" in name:
        assert (cfg.n_layer, cfg.dim, recipe.optim.lr, recipe.optim.betas, recipe.optim.weight_decay) == (
            30, 1280, 6e-4, (0.9, 0.95), 0.05)


def test_a_cache_from_another_tokenizer_is_refused(cache, tiny_data, tiny_tokenizer, tmp_path):
    from larp import tokenizer_preset
    from larp.train.token_cache import tokenizer_fingerprint

    meta = read_cache_meta(cache)
    assert meta.tokenizer_sha256 == tokenizer_fingerprint(LARPTokenizer.from_pretrained(tiny_tokenizer))
    torch.manual_seed(1)
    other = LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(tmp_path / "other")
    recipe = ar_recipe(tiny_data, other, tmp_path / "run", f"data.token_cache={cache}")
    with pytest.raises(ValueError, match=rf"token cache {cache} was made by another tokenizer \(.*weights sha256 "
                                         rf"{meta.tokenizer_sha256[:12]}\.\.\.\) than tokenizer.path"):
        train(recipe, ARTask)
    assert not (tmp_path / "run" / "checkpoints").exists()
