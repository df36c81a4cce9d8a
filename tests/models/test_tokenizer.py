"""LARPTokenizer behaviour beyond the fixtures: input checks, stochastic codes, losses and gradients."""

from __future__ import annotations

import pytest
import torch

from larp import LARPTokenizer, tokenizer_preset
from larp.models.quantizer import sample_categorical


@pytest.fixture(scope="module")
def tok() -> LARPTokenizer:
    torch.manual_seed(0)
    model = LARPTokenizer(tokenizer_preset("larp-tiny"))
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)  # so gradients reach the encoder
    return model.eval()


def video(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 8, 32, 32)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 8, 32, 32), "rank 4"),
    (torch.rand(1, 4, 8, 32, 32), "expected 3 channels"),
    (torch.rand(1, 3, 7, 32, 32), "expected 8 frames"),
    (torch.rand(1, 3, 8, 32, 16), "expected frames of 32x32"),
    ((torch.rand(1, 3, 8, 32, 32) * 255).to(torch.uint8), "dtype torch.uint8"),
    (torch.rand(1, 3, 8, 32, 32) * 2 - 1, "looks like [-1, 1]"),
    (torch.full((1, 3, 8, 32, 32), float("nan")), "values in [nan"),
])
def test_encode_rejects_bad_video(tok, bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        tok.encode(bad)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 31, dtype=torch.long), r"got shape \(2, 31\)"),
    (torch.zeros(32, dtype=torch.long), r"got shape \(32,\)"),
    (torch.full((1, 32), 128), r"got indices in \[128, 128\]"),
    (torch.full((1, 32), -1), r"got indices in \[-1, -1\]"),
    (torch.zeros(1, 32), "dtype torch.float32"),
])
def test_decode_rejects_bad_indices(tok, bad, message):
    with pytest.raises(ValueError, match=message):
        tok.decode(bad)
    with pytest.raises(ValueError, match=message):
        tok.prior_logits(bad)


def test_eval_codes_are_argmax_and_training_codes_are_sampled(tok):
    x = video()
    with torch.no_grad():
        h = tok.encode_continuous(x)
        sim = tok.bottleneck.project(h) @ tok.bottleneck.regularizer.codebook.t()
        assert torch.equal(tok.encode(x), sim.argmax(-1))
        # Sampling at a high temperature must differ from argmax, and be reproducible with a generator.
        tok.bottleneck.regularizer.set_temperature(10.0)
        try:
            a = tok.encode(x, deterministic=False, generator=torch.Generator().manual_seed(1))
            b = tok.encode(x, deterministic=False, generator=torch.Generator().manual_seed(1))
        finally:
            tok.bottleneck.regularizer.set_temperature(tok.config.vq.stochastic_temperature)
        assert torch.equal(a, b)
        assert not torch.equal(a, sim.argmax(-1))


def test_vq_loss_matches_hand_computation(tok):
    z = torch.nn.functional.normalize(torch.randn(2, 32, 8), dim=-1)
    out = tok.bottleneck.regularizer(z, deterministic=True)
    q = tok.bottleneck.regularizer.codebook[out.indices]
    expected = 0.25 * ((q - z) ** 2).mean() + 1.0 * ((q - z) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.quantized, q)  # straight-through: same values as the codes


@pytest.mark.parametrize("codebook_grad", [False, True])
def test_prior_loss_reaches_the_encoder_and_the_codebook_only_when_asked(tok, codebook_grad):
    tok.train()
    try:
        out = tok(video(), step=10, total_steps=100, generator=torch.Generator().manual_seed(0),
                  prior_codebook_grad=codebook_grad)
        tok.zero_grad()
        out.prior.loss.backward()
        enc = tok.encoder_latent_query_embed.grad
        book = tok.bottleneck.regularizer.embedding.weight.grad
        assert enc is not None and enc.abs().sum() > 0
        # The reference detaches the codebook in the prior's logits; the option lets the loss reach it.
        assert (book is not None and book.abs().sum() > 0) == codebook_grad
        assert tok.decoder.blocks[0].attn.qkv.weight.grad is None  # the prior loss never touches the decoder
    finally:
        tok.zero_grad()
        tok.eval()


def test_prior_loss_averages_rounds_with_scheduled_sampling(tok):
    # With ratio 0 the second round sees the true sequence, so both rounds give the same logits and the
    # loss equals the plain cross-entropy of the prior's logits.
    idx = torch.randint(0, 128, (2, 32))
    q = tok.bottleneck.regularizer.lookup(idx)
    with torch.no_grad():
        out = tok.prior_loss(q, idx, step=0, total_steps=100)
        ce = torch.nn.functional.cross_entropy(tok.prior_logits(idx).reshape(-1, 128), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ce)
    assert tok.scheduled_sampling_ratio(0, 100) == 0.0
    assert tok.scheduled_sampling_ratio(15, 100) == pytest.approx(0.25)
    assert tok.scheduled_sampling_ratio(90, 100) == pytest.approx(0.5)


def test_decode_runs_on_the_input_device_and_dtype(tok):
    idx = torch.randint(0, 128, (1, 32))
    with torch.no_grad():
        rec = tok.decode(idx)
    assert rec.shape == (1, 3, 8, 32, 32) and rec.dtype == torch.float32


def test_tokenizer_without_prior_refuses_prior_calls():
    cfg = tokenizer_preset("larp-tiny")
    cfg.prior_model.name = "none"
    model = LARPTokenizer(cfg)
    assert model.prior_model is None
    assert not any(k.startswith("prior_model.") for k in model.state_dict())
    with pytest.raises(ValueError, match="no prior model"):
        model.prior_logits(torch.zeros(1, 32, dtype=torch.long))


def test_sample_categorical_follows_the_probabilities():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    rows = (probs * 7).expand(40_000, 5)  # unnormalised rows are fine
    draws = sample_categorical(rows, torch.Generator().manual_seed(0))
    assert draws.shape == (40_000,) and draws.dtype == torch.int64
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.01)
    assert freq[1] == 0 and freq[4] == 0  # impossible codes are never drawn, last one included
    again = sample_categorical(rows, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    one_hot = torch.zeros(3, 2, 6).index_fill_(-1, torch.tensor([5]), 1.0)
    assert torch.equal(sample_categorical(one_hot), torch.full((3, 2), 5))


# ------------------------------------------------------------------------------- the quantiser's codebook
def quantizer():
    from larp.models.config import VQArgs
    from larp.models.quantizer import StochasticVQ

    torch.manual_seed(0)
    return StochasticVQ(4, VQArgs(codebook_size=6))


def test_codebook_is_the_normalised_embedding_and_temperature_must_be_positive():
    from larp.models.config import VQArgs
    from larp.models.quantizer import StochasticVQ

    q = quantizer()
    assert torch.allclose(q.codebook, q.embedding.weight / q.embedding.weight.norm(dim=-1, keepdim=True))
    assert torch.allclose(q.codebook.norm(dim=-1), torch.ones(6))
    q.set_temperature(0.5)
    assert q.temperature == 0.5
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"the sampling temperature must be > 0, got {bad}"):
            q.set_temperature(bad)
    assert q.temperature == 0.5
    with pytest.raises(ValueError, match="must be > 0, got -0.03"):
        StochasticVQ(4, VQArgs(codebook_size=6, stochastic_temperature=-0.03))
    StochasticVQ(4, VQArgs(codebook_size=6, stochastic=False, stochastic_temperature=0.0))  # never used


def test_replace_codes_sets_the_masked_rows_and_clears_their_adam_state():
    q = quantizer()
    opt = torch.optim.Adam(q.parameters(), lr=0.1)
    q.embedding.weight.grad = torch.ones(6, 4)
    opt.step()
    before = q.embedding.weight.detach().clone()
    mask = torch.tensor([False, True, False, False, True, False])
    rows = torch.arange(8.0).reshape(2, 4)
    q.replace_codes(mask, rows, opt)
    assert torch.equal(q.embedding.weight[mask], rows) and torch.equal(q.embedding.weight[~mask], before[~mask])
    state = opt.state[q.embedding.weight]
    assert state["exp_avg"][mask].abs().sum() == 0 and state["exp_avg"][~mask].abs().min() > 0
    with pytest.raises(ValueError, match=r"expected rows of shape \(2, 4\), got \(3, 4\)"):
        q.replace_codes(mask, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"expected a bool mask of shape \(6,\), got torch.int64 \(6,\)"):
        q.replace_codes(mask.long(), rows)


def test_init_codebook_puts_codes_on_latents_then_kmeans_spreads_them():
    latents = torch.nn.functional.normalize(torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    flat = latents.reshape(-1, 4)
    q = quantizer()
    q.init_codebook(latents, noise=0.0, generator=torch.Generator().manual_seed(0))
    distance = torch.cdist(q.embedding.weight, flat).min(dim=1).values
    assert distance.max() < 1e-6  # every code is one of the 15 latents, without repeats
    assert torch.unique(torch.cdist(q.embedding.weight, flat).argmin(dim=1)).numel() == 6

    def distortion(codes: torch.Tensor) -> float:
        return float((flat @ torch.nn.functional.normalize(codes.detach(), dim=-1).t()).max(dim=1).values.mean())

    on_latents = distortion(q.embedding.weight)
    q.init_codebook(latents, noise=0.0, generator=torch.Generator().manual_seed(0), kmeans_iters=5)
    assert distortion(q.embedding.weight) >= on_latents  # k-means brings the codes closer to the latents
    with pytest.raises(ValueError, match="latents must have the codebook's width 4, got 3"):
        q.init_codebook(torch.zeros(5, 3))
