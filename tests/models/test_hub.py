"""Strict, pickle-free loading and saving of model folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
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
    with pytest.raises(CheckpointError, match="unknown key"):
        LARPTokenizer.from_pretrained(folder)


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
