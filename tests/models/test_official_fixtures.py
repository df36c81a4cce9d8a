"""The released checkpoint format: load each official fixture and reproduce the reference outputs."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from larp import LARPAR, LARPTokenizer
from larp.models.layers import sincos_1d, sincos_3d
from larp.sample.generate import generate
from tests.conftest import official

ATOL = 1e-4


def test_tokenizer_fixture_reproduces_reference():
    folder = official("tokenizer_tiny")
    tok = LARPTokenizer.from_pretrained(folder)
    io = load_file(str(folder / "io.safetensors"))
    with torch.no_grad():
        idx = tok.encode(io["video"])
        assert torch.equal(idx, io["indices"])
        q = tok.bottleneck.regularizer.lookup(idx)
        torch.testing.assert_close(q, io["regularized_z"], atol=ATOL, rtol=0)
        torch.testing.assert_close(tok.bottleneck.out_linear(q), io["encoded"], atol=ATOL, rtol=0)
        out = tok(io["video"])  # eval mode: deterministic codes, reconstruction from the quantised vectors
        assert torch.equal(out.indices, io["indices"])
        torch.testing.assert_close(out.recon, io["recon"], atol=ATOL, rtol=0)
        torch.testing.assert_close(tok.decode(io["indices"]), io["recon_from_indices"], atol=ATOL, rtol=0)
        torch.testing.assert_close(tok.prior_predict(q), io["prior_pred"], atol=ATOL, rtol=0)
        torch.testing.assert_close(tok.prior_logits(io["indices"]), io["prior_logits"], atol=ATOL, rtol=0)


def test_prior_is_deterministic_in_eval_mode():
    # The reference drops attention in eval mode; ours must not.
    tok = LARPTokenizer.from_pretrained(official("tokenizer_tiny"))
    idx = torch.randint(0, tok.codebook_size, (2, tok.num_tokens))
    with torch.no_grad():
        assert torch.equal(tok.prior_logits(idx), tok.prior_logits(idx))


def test_fixed_position_embeddings_match_the_released_buffers():
    folder = official("tokenizer_tiny")
    state = load_file(str(folder / "model.safetensors"))
    tok = LARPTokenizer.from_pretrained(folder)
    c = tok.config
    # Recomputed from scratch, not loaded: a fresh model must hold the same buffers.
    torch.testing.assert_close(sincos_3d(c.encoder_hidden_size, *c.encoder_grid), state["encoder_patch_pe"])
    torch.testing.assert_close(sincos_3d(c.decoder_hidden_size, *c.decoder_grid),
                               state["decoder_patch_query_embed"])
    torch.testing.assert_close(sincos_1d(c.decoder_hidden_size, torch.arange(c.bottleneck_token_num)).float()[None],
                               state["decoder_latent_pe"])
    fresh = LARPTokenizer(c)
    for name in ("encoder_patch_pe", "decoder_patch_query_embed", "decoder_latent_pe"):
        assert torch.equal(fresh.state_dict()[name], state[name]), name


def _check_ar(name: str) -> None:
    folder = official(name)
    ar = LARPAR.from_pretrained(folder)
    io = load_file(str(folder / "io.safetensors"))
    opts = json.loads((folder / "sampling.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(ar.logits(io["tokens"], io["cond"]), io["logits"], atol=ATOL, rtol=0)
    greedy = generate(ar, io["cond"], cfg_scale=opts["cfg_scale"], top_k=opts["top_k"])
    assert torch.equal(greedy, io["greedy"])


def test_class_conditional_ar_fixture():
    _check_ar("ar_tiny")


def test_frame_prediction_ar_fixture():
    _check_ar("ar_fp_tiny")


def test_saved_checkpoint_keeps_the_released_format(tmp_path):
    folder = official("tokenizer_tiny")
    tok = LARPTokenizer.from_pretrained(folder)
    out = tok.save_pretrained(tmp_path / "tok")
    assert json.loads((out / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    saved, original = load_file(str(out / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in original)
    for name in ("ar_tiny", "ar_fp_tiny"):
        src = official(name)
        out = LARPAR.from_pretrained(src).save_pretrained(tmp_path / name)
        assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
