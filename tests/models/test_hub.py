"""Strict, pickle-free loading and saving of model folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
from larp.utils.errors import CheckpointError
from tests.conftest import official


@pytest.fixture()
def tiny_folder(tmp_path):
    torch.manual_seed(0)
    model = LARPTokenizer(tokenizer_preset("larp-tiny"))
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.1)
    return model, model.save_pretrained(tmp_path / "tok")


def test_round_trip_is_identical(tiny_folder):
    model, folder = tiny_folder
    loaded = LARPTokenizer.from_pretrained(folder)
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 8, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))
        assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))


def test_ar_round_trip(tmp_path):
    model = LARPAR(ar_preset("ar-tiny"))
    loaded = LARPAR.from_pretrained(model.save_pretrained(tmp_path / "ar"))
    assert loaded.config == model.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_of_the_other_kind_is_named(tiny_folder, tmp_path):
    _, tokenizer_folder = tiny_folder
    with pytest.raises(CheckpointError, match=r"holds a tokenizer, not an AR model \(its config.json has "
                                              r"bottleneck_token_num, .*\); pass it where a tokenizer is expected"):
        LARPAR.from_pretrained(tokenizer_folder)
    ar_folder = LARPAR(ar_preset("ar-tiny")).save_pretrained(tmp_path / "ar")
    with pytest.raises(CheckpointError, match=r"holds an AR model, not a tokenizer .* vocab_size"):
        LARPTokenizer.from_pretrained(ar_folder)


def test_unknown_config_key_is_named(tiny_folder):
    _, folder = tiny_folder
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder_dept"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) \['encoder_dept'\]"):
        LARPTokenizer.from_pretrained(folder)


def test_nested_unknown_config_key_is_named(tiny_folder):
    _, folder = tiny_folder
    cfg = json.loads((folder / "config.json").read_text())
    cfg["bottleneck"]["args"]["regularizer"]["args"]["codebook_sise"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="regularizer.args: unknown key.*codebook_sise"):
        LARPTokenizer.from_pretrained(folder)


def test_wrong_config_type_and_unsupported_value(tiny_folder):
    _, folder = tiny_folder
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "encoder_depth": "two"}))
    with pytest.raises(CheckpointError, match="encoder_depth: expected an integer, got 'two'"):
        LARPTokenizer.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "learned_encoder_patch_pe": True}))
    with pytest.raises(CheckpointError, match="learned_encoder_patch_pe=True is not supported"):
        LARPTokenizer.from_pretrained(folder)


def test_missing_unexpected_and_mismatched_tensors_are_named(tiny_folder):
    _, folder = tiny_folder
    file = folder / "model.safetensors"
    state = load_file(str(file))
    state.pop("encoder.blocks.0.norm1.weight")
    state["extra.weight"] = torch.zeros(1)
    state["decoder_latent_pe"] = torch.zeros(1, 31, 64)
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as err:
        LARPTokenizer.from_pretrained(folder)
    text = str(err.value)
    assert "missing tensors ['encoder.blocks.0.norm1.weight']" in text
    assert "unexpected tensors ['extra.weight']" in text
    assert "decoder_latent_pe: checkpoint (1, 31, 64) vs model (1, 32, 64)" in text


def test_truncated_and_corrupt_weights_are_named(tiny_folder):
    _, folder = tiny_folder
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupted"):
        LARPTokenizer.from_pretrained(folder)
    file.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        LARPTokenizer.from_pretrained(folder)


def test_missing_files_and_bad_json(tiny_folder):
    _, folder = tiny_folder
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        LARPTokenizer.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing .*config.json"):
        LARPTokenizer.from_pretrained(folder)


def test_released_ar_config_cannot_load_as_tokenizer(tmp_path):
    folder = tmp_path / "ar"
    shutil.copytree(official("ar_tiny"), folder)
    with pytest.raises(CheckpointError, match="holds an AR model, not a tokenizer"):
        LARPTokenizer.from_pretrained(folder)


def test_without_network_a_hub_id_uses_the_cache_at_once(tmp_path, monkeypatch):
    import huggingface_hub

    from larp.models import hub

    calls = []

    def snapshot(repo, **kwargs):
        calls.append(kwargs["local_files_only"])
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    for online in (False, True):
        monkeypatch.setattr(hub, "host_resolves", lambda url, online=online: online)
        assert hub.resolve_folder("owner/model") == tmp_path
    assert calls == [True, False]  # the cache only, without network; a normal look-up otherwise


def test_offline_hub_id_without_cache_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointError) as err:
        LARPTokenizer.from_pretrained("hywang66/LARP-L-long-tokenizer")
    text = str(err.value)
    assert "hywang66/LARP-L-long-tokenizer" in text
    assert "huggingface.co/hywang66/LARP-L-long-tokenizer" in text and "model.safetensors" in text
    assert "`hf download hywang66/LARP-L-long-tokenizer config.json model.safetensors" in text
    assert "huggingface-cli" not in text


def test_hub_cache_is_used_offline(tmp_path, monkeypatch):
    """A repo id resolves through a populated hub cache with no network (the released layout)."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    snap = cache / "models--hywang66--LARP-L-long-AR" / "snapshots" / ("0" * 40)
    shutil.copytree(official("ar_tiny"), snap)
    (cache / "models--hywang66--LARP-L-long-AR" / "refs").mkdir()
    (cache / "models--hywang66--LARP-L-long-AR" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = LARPAR.from_pretrained("hywang66/LARP-L-long-AR")
    assert model.config.num_classes == 5


def test_not_a_folder_nor_repo_id(tmp_path):
    with pytest.raises(CheckpointError, match="neither a model folder"):
        LARPTokenizer.from_pretrained(str(tmp_path / "nope"))


# ------------------------------------------------------------------------------------ bounded, safe loading
def _edit_weights(folder, **changes):
    file = folder / "model.safetensors"
    state = load_file(str(file))
    state.update(changes)
    save_file(state, str(file))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int8])
def test_non_float_weights_are_refused(tiny_folder, dtype):
    _, folder = tiny_folder
    _edit_weights(folder, **{"final_layer.linear.weight": torch.zeros(384, 64, dtype=dtype)})
    with pytest.raises(CheckpointError, match=r"tensors of the wrong type \['final_layer.linear.weight: "):
        LARPTokenizer.from_pretrained(folder)


def test_half_precision_weights_load_as_float32(tiny_folder):
    model, folder = tiny_folder
    state = {k: v.to(torch.bfloat16) for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(state, str(folder / "model.safetensors"))
    loaded = LARPTokenizer.from_pretrained(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.final_layer.linear.weight, state["final_layer.linear.weight"].float())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tiny_folder, bad):
    model, folder = tiny_folder
    weight = model.final_layer.linear.weight.detach().clone()
    weight[3, 5] = bad
    _edit_weights(folder, **{"final_layer.linear.weight": weight})
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 tensor\(s\) \['final_layer.linear.weight'\]"):
        LARPTokenizer.from_pretrained(folder)


def test_a_pickle_named_model_safetensors_never_runs(tiny_folder, tmp_path):
    _, folder = tiny_folder
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    (folder / "model.safetensors").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        LARPTokenizer.from_pretrained(folder)
    assert not marker.exists()


@pytest.mark.parametrize("key,value,message", [
    ("encoder_hidden_size", 10**9, r"encoder_hidden_size=1000000000 is out of range; expected an integer in \[1, 16,384\]"),
    ("encoder_depth", 10**7, r"encoder_depth=10000000 is out of range"),
    ("frame_num", 0, r"frame_num=0 is out of range"),
    ("latent_pe_scale_factor", float("inf"), r"latent_pe_scale_factor=inf must be a finite number > 0"),
])
def test_absurd_config_sizes_fail_before_building(tiny_folder, monkeypatch, key, value, message):
    _, folder = tiny_folder
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(LARPTokenizer, "__init__", lambda *a: pytest.fail("built before the size check"))
    with pytest.raises(CheckpointError, match=message):
        LARPTokenizer.from_pretrained(folder)


def test_absurd_codebook_and_ar_width_are_refused(tiny_folder, tmp_path):
    _, folder = tiny_folder
    cfg = json.loads((folder / "config.json").read_text())
    cfg["bottleneck"]["args"]["regularizer"]["args"]["codebook_size"] = 10**9
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"codebook_size=1000000000 is out of range"):
        LARPTokenizer.from_pretrained(folder)
    ar = LARPAR(ar_preset("ar-tiny")).save_pretrained(tmp_path / "ar")
    cfg = json.loads((ar / "config.json").read_text())
    (ar / "config.json").write_text(json.dumps({**cfg, "dim": 10**9}))
    with pytest.raises(CheckpointError, match=r"AR config: dim=1000000000 is out of range"):
        LARPAR.from_pretrained(ar)


def test_model_is_built_on_meta_and_checked_against_the_header_first(tiny_folder, monkeypatch):
    """A config within limits but larger than its weight file fails on the shapes, built on the meta device.

    (Modest sizes: were the model ever materialised before the check again, the test must fail, not
    exhaust the machine's memory.)"""
    _, folder = tiny_folder
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(encoder_hidden_size=512, encoder_num_heads=8, encoder_depth=4)
    (folder / "config.json").write_text(json.dumps(cfg))
    devices = []
    original = LARPTokenizer.__init__

    def spy(self, config):
        devices.append(torch.empty(()).device.type)  # the default device while the model is built
        original(self, config)

    monkeypatch.setattr(LARPTokenizer, "__init__", spy)
    with pytest.raises(CheckpointError) as err:
        LARPTokenizer.from_pretrained(folder)
    assert devices == ["meta"]
    text = str(err.value)
    assert "x_embedder.proj.weight: checkpoint (64, 3, 4, 8, 8) vs model (512, 3, 4, 8, 8)" in text
    assert "the model has" in text and "values in" in text and "the file holds" in text


def test_non_persistent_buffers_are_computed_after_a_meta_build(tmp_path):
    from larp.models.hub import HubModelMixin

    class Config:
        def __init__(self, n):
            self.n = n

        def to_json_dict(self):
            return {"n": self.n}

        @classmethod
        def from_json_dict(cls, data):
            return cls(**data)

    class WithoutHook(HubModelMixin, torch.nn.Module):
        config_class = Config

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.linear = torch.nn.Linear(config.n, config.n)
            self.register_buffer("table", torch.arange(config.n) * 0.5, persistent=False)

    class WithHook(WithoutHook):
        def init_non_persistent_buffers(self):
            self.table = torch.arange(self.config.n) * 0.5

    model = WithHook(Config(4))
    folder = model.save_pretrained(tmp_path / "m")
    loaded = WithHook.from_pretrained(folder)
    assert torch.equal(loaded.table, torch.arange(4) * 0.5) and torch.equal(loaded.linear.weight, model.linear.weight)
    with pytest.raises(CheckpointError, match=r"that it cannot compute \(\['table'\]\)"):
        WithoutHook.from_pretrained(folder)


def test_loaded_fixed_embeddings_equal_freshly_computed_ones(tiny_folder):
    model, folder = tiny_folder
    loaded = LARPTokenizer.from_pretrained(folder)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, dict(loaded.named_buffers())[name]), name


# ------------------------------------------------------------------------------------ files, card, upload
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_files_honour_the_umask(tmp_path, umask):
    import os

    old = os.umask(umask)
    try:
        folder = LARPAR(ar_preset("ar-tiny")).save_pretrained(tmp_path / "ar")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_model_card_has_config_recipe_metrics_and_usage(tmp_path):
    model = LARPTokenizer(tokenizer_preset("larp-tiny"))
    folder = model.save_pretrained(tmp_path / "tok", recipe={"steps": 1200, "lr": 1e-4},
                                   metrics={"psnr_db": 24.891, "lpips": 0.1234})
    card = (folder / "README.md").read_text()
    data = ModelCard(card).data
    assert (data.library_name, data.license) == ("larp", "mit")
    assert data.tags == ["larp", "video-tokenizer", "arxiv:2410.21264"] and data.metrics == ["psnr_db", "lpips"]
    assert 'LARPTokenizer.from_pretrained("path/to/this/folder")' in card
    n = sum(p.numel() for p in model.state_dict().values())
    assert f"{n:,} parameters" in card
    assert "Clips of 8 frames of 32x32 pixels <-> 32 tokens from a codebook of 128 codes." in card
    assert json.dumps(model.config.to_json_dict(), indent=2, sort_keys=True) in card
    assert '"steps": 1200' in card and "| psnr_db | 24.89 |" in card and "| lpips | 0.1234 |" in card
    bare = (LARPAR(ar_preset("ar-tiny")).save_pretrained(tmp_path / "ar") / "README.md").read_text()
    assert bare.count("Not recorded") == 2 and "5 classes" in bare
    assert ModelCard(bare).data.metrics is None and "video-generation" in ModelCard(bare).data.tags


def test_write_card_rewrites_a_saved_folders_card_with_training_facts_and_evaluations(tmp_path):
    from larp.models.hub import write_card

    model = LARPAR(ar_preset("ar-tiny"))
    folder = model.save_pretrained(tmp_path / "ar")
    weights = (folder / "model.safetensors").read_bytes()
    write_card(folder, "LARPAR", recipe={"run": {"max_steps": 7}}, metrics={"val/loss": 4.25},
               training={"steps": 7, "train_data": ["a.csv (3 videos)"], "eval_step": 6},
               evaluations={"larp demo: 10 samples": {"sample_sfvd": 1262.4, "samples": 10}})
    card = (folder / "README.md").read_text()
    assert (folder / "model.safetensors").read_bytes() == weights  # only the card changes
    assert f"{sum(p.numel() for p in model.state_dict().values()):,} parameters" in card
    assert "- Optimiser steps: 7" in card and "- Training data: a.csv (3 videos)" in card
    assert "(step 6), on the validation clips" in card and "| val/loss | 4.25 |" in card
    assert "### larp demo: 10 samples" in card and "| sample_sfvd | 1262 |" in card
    assert ModelCard(card).data.metrics == ["loss", "sample_sfvd"]  # measured figures, not counts
    assert "Not recorded" not in card


class _FakeApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, repo_id, folder_path, **kw):
        from pathlib import Path

        files = sorted(p.name for p in Path(folder_path).iterdir())
        # What would be uploaded loads strictly.
        loaded = LARPAR.from_pretrained(folder_path)
        self.calls.append(("upload_folder", repo_id, files, loaded.config.num_classes, kw["commit_message"]))

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"

        return Info()


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    model = LARPAR(ar_preset("ar-tiny"))
    url = model.push_to_hub("me/ar-tiny", private=True, metrics={"fvd": 12.5})
    assert url == "https://huggingface.co/me/ar-tiny/commit/abc"
    assert _FakeApi.calls[0] == ("create_repo", "me/ar-tiny", {"private": True, "exist_ok": True,
                                                                "repo_type": "model"})
    assert _FakeApi.calls[1] == ("upload_folder", "me/ar-tiny", ["README.md", "config.json", "model.safetensors"],
                                 5, "Upload LARPAR with larp")


def test_push_to_hub_refuses_offline_and_bad_ids(monkeypatch):
    model = LARPAR(ar_preset("ar-tiny"))
    with pytest.raises(ValueError, match="repo_id must look like 'owner/name'"):
        model.push_to_hub("no-owner")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        model.push_to_hub("me/ar-tiny")
