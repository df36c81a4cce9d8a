"""Codebook health and anti-collapse options (larp.train.codebook)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from larp import LARPTokenizer, tokenizer_preset
from larp.models.quantizer import code_entropy_loss
from larp.train.codebook import (
    AntiCollapse,
    CodebookMonitor,
    CodebookOptions,
    apply_init,
    init_codebook_from_encoder,
    reinit_dead_codes,
    set_temperature,
    spherical_kmeans,
    temperature_at,
)
from tests.conftest import official


def tiny() -> LARPTokenizer:
    return LARPTokenizer(tokenizer_preset("larp-tiny"))


def videos(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 32, 32, generator=g)


def collapse(model: LARPTokenizer) -> None:
    """A collapsed codebook: code 0 sits on the mean direction of the encoder's outputs, the others opposite."""
    with torch.no_grad():
        z = model.bottleneck.project(model.encode_continuous(videos())).reshape(-1, model.config.bottleneck_dim)
        mean = z.mean(0)
        emb = model.bottleneck.regularizer.embedding.weight
        emb.copy_(-mean.expand_as(emb) + 0.01 * torch.randn_like(emb))
        emb[0] = mean


def argmax_usage(model: LARPTokenizer, v: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad():
        return torch.unique(model.encode(v)).numel()


# ------------------------------------------------------------------------------------------------ monitor
def test_monitor_usage_perplexity_and_window():
    m = CodebookMonitor(8, window=2)
    m.update(torch.tensor([0, 0, 1, 1]))
    assert m.usage() == 2 / 8
    assert m.perplexity() == pytest.approx(2.0)
    m.update(torch.tensor([[2, 3], [2, 3]]))
    assert m.usage() == 4 / 8
    assert m.perplexity() == pytest.approx(4.0)
    m.update(torch.tensor([4]))  # the first step leaves the window
    assert m.counts().tolist() == [0, 0, 2, 2, 1, 0, 0, 0]
    assert m.usage() == 3 / 8


def test_monitor_dead_codes_counts_steps_since_last_hit():
    m = CodebookMonitor(4, window=10)
    m.update(torch.tensor([0, 1]))
    m.update(torch.tensor([1]))
    m.update(torch.tensor([1]))
    assert m.dead_codes(2).tolist() == [True, False, True, True]  # code 0 unused for the last 2 steps
    assert m.dead_codes(3).tolist() == [False, False, True, True]


def test_monitor_warns_once_per_collapse(caplog):
    m = CodebookMonitor(100, window=2, warn_below=0.1)
    with caplog.at_level(logging.WARNING, logger="larp.train.codebook"):
        for _ in range(4):
            m.update(torch.tensor([3, 3, 3]))
            m.stats()
    warnings = [r for r in caplog.records if "codebook collapse" in r.getMessage()]
    assert len(warnings) == 1
    assert "1.0% of 100 codes" in warnings[0].getMessage()
    m.update(torch.arange(50))
    assert m.stats()["codes_used"] == 50


def test_monitor_rejects_out_of_range_indices():
    m = CodebookMonitor(4)
    with pytest.raises(ValueError, match=r"\[0, 4\), got \[0, 4\]"):
        m.update(torch.tensor([0, 4]))


# ----------------------------------------------------------------------------------- codebook placement
def test_init_from_encoder_puts_codes_on_encoder_outputs_and_raises_usage():
    model = tiny()
    collapse(model)
    v = videos()
    assert argmax_usage(model, v) == 1
    init_codebook_from_encoder(model, v, noise=0.0, generator=torch.Generator().manual_seed(0))
    z = model.bottleneck.project(model.encode_continuous(v)).reshape(-1, 8).detach()
    code = model.bottleneck.regularizer.codebook
    # every code is one of the encoder outputs (4 videos x 32 tokens = 128 = K rows, a permutation)
    assert torch.allclose((code @ z.t()).max(1).values, torch.ones(128), atol=1e-5)
    assert argmax_usage(model, v) > 32


def test_reinit_dead_codes_moves_only_dead_rows_and_clears_adam_state():
    model = tiny()
    emb = model.bottleneck.regularizer.embedding.weight
    opt = torch.optim.Adam([emb], lr=1e-3)
    emb.grad = torch.ones_like(emb)
    opt.step()
    before = emb.detach().clone()
    dead = torch.zeros(128, dtype=torch.bool)
    dead[[3, 7, 100]] = True
    latents = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    n = reinit_dead_codes(model, dead, latents, noise=0.0, generator=torch.Generator().manual_seed(0),
                          optimizer=opt)
    assert n == 3
    assert torch.equal(emb[~dead], before[~dead])
    flat = latents.reshape(-1, 8)
    for row in emb[dead].detach():
        assert (flat - row).abs().sum(1).min() < 1e-6
    assert opt.state[emb]["exp_avg"][dead].abs().sum() == 0
    assert opt.state[emb]["exp_avg"][~dead].abs().sum() > 0
    assert reinit_dead_codes(model, torch.zeros(128, dtype=torch.bool), latents) == 0
    with pytest.raises(ValueError, match=r"bool mask of shape \(128,\)"):
        reinit_dead_codes(model, torch.zeros(64, dtype=torch.bool), latents)


# ------------------------------------------------------------------------------------------ temperature
def test_temperature_anneal_is_geometric():
    assert temperature_at(0, 1.0, 0.01, 100) == pytest.approx(1.0)
    assert temperature_at(50, 1.0, 0.01, 100) == pytest.approx(0.1)
    assert temperature_at(100, 1.0, 0.01, 100) == 0.01
    assert temperature_at(5, 1.0, 0.03, 0) == 0.03
    with pytest.raises(ValueError, match="positive"):
        temperature_at(0, 0.0, 0.03, 10)


def test_low_temperature_sampling_equals_argmax_and_high_spreads():
    model = tiny().train()
    h = model.encode_continuous(videos())
    det = model.quantize(h, deterministic=True).indices
    set_temperature(model, 1e-4)
    assert torch.equal(model.quantize(h, generator=torch.Generator().manual_seed(1)).indices, det)
    set_temperature(model, 10.0)
    hot = model.quantize(h, generator=torch.Generator().manual_seed(1)).indices
    assert torch.unique(hot).numel() > torch.unique(det).numel()
    with pytest.raises(ValueError):
        set_temperature(model, 0.0)


# ---------------------------------------------------------------------------------------- entropy term
def test_entropy_loss_values_and_it_spreads_a_collapsed_codebook():
    sim_same = torch.full((1, 4, 4), -1.0)
    sim_same[..., 0] = 1.0  # every token confidently on code 0
    assert float(code_entropy_loss(sim_same, 0.01)) == pytest.approx(0.0, abs=1e-6)
    sim_spread = torch.full((1, 4, 4), -1.0)
    sim_spread[0, torch.arange(4), torch.arange(4)] = 1.0  # each token on its own code
    assert float(code_entropy_loss(sim_spread, 0.01)) == pytest.approx(-math.log(4), abs=1e-5)

    # A collapsed encoder: all outputs in a narrow cone, so few random codes are ever nearest.
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.nn.functional.normalize(torch.randn(8), dim=0)
                                      + 0.1 * torch.randn(256, 8), dim=-1)
    codes = torch.nn.Parameter(torch.randn(32, 8))
    opt = torch.optim.Adam([codes], lr=0.05)

    def used() -> int:
        return torch.unique((z @ torch.nn.functional.normalize(codes, dim=-1).t()).argmax(-1)).numel()

    start = used()
    for _ in range(100):
        loss = code_entropy_loss(z @ torch.nn.functional.normalize(codes, dim=-1).t(), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start <= 10 and used() >= 2 * start


# -------------------------------------------------------------------------------------------- init options
def test_apply_init_sets_requested_parts_only():
    model = tiny()
    released_q = model.encoder_latent_query_embed.detach().clone()
    apply_init(model)
    assert model.final_layer.linear.weight.abs().sum() == 0
    assert torch.equal(model.encoder_latent_query_embed, released_q)
    apply_init(model, final_layer_std=0.02, query_std=1.0, generator=torch.Generator().manual_seed(0))
    assert model.final_layer.linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.encoder_latent_query_embed.std().item() == pytest.approx(1.0, rel=0.1)
    assert model.final_layer.linear.bias.abs().sum() == 0


# ----------------------------------------------------------------------------------- the trainer's object
def test_default_options_leave_the_released_numerics_unchanged():
    folder = official("tokenizer_tiny")
    model = LARPTokenizer.from_pretrained(folder)
    io = load_file(str(folder / "io.safetensors"))
    ac = AntiCollapse(model)
    ac.setup(io["video"])
    assert ac.before_step(0) == model.config.vq.stochastic_temperature
    assert ac._hook is None
    model.eval()
    with torch.no_grad():
        out = model(io["video"])
    assert torch.equal(out.indices, io["indices"])
    torch.testing.assert_close(out.recon, io["recon"], atol=1e-4, rtol=0)
    stats = ac.after_step(0, out.indices)
    assert stats["codes_reinitialised"] == 0
    assert stats["codes_used"] == torch.unique(io["indices"]).numel()


def test_dead_code_reinit_raises_usage_on_a_collapsed_model():
    cfg = tokenizer_preset("larp-tiny")
    cfg.vq.stochastic_temperature = 1e-4  # sampling ~ argmax, so that the collapse persists without help
    model = LARPTokenizer(cfg).train()
    collapse(model)
    v = videos()
    ac = AntiCollapse(model, CodebookOptions(dead_code_steps=2, reinit_noise=0.0),
                      generator=torch.Generator().manual_seed(0))
    reinit = []
    for step in range(3):
        ac.before_step(step)
        with torch.no_grad():
            out = model(v, step, 3)
        reinit.append(ac.after_step(step, out.indices)["codes_reinitialised"])
    assert reinit == [0, 127, 0]  # after 2 steps, every code but the one in use; then a grace period
    assert ac.reinitialised == 127
    assert argmax_usage(model, v) > 32
    ac.close()
    assert ac._hook is None


def test_options_validate():
    with pytest.raises(ValueError, match="monitor_window"):
        AntiCollapse(tiny(), CodebookOptions(monitor_window=0))
    with pytest.raises(ValueError, match="init_from_encoder needs videos"):
        AntiCollapse(tiny(), CodebookOptions(init_from_encoder=True)).setup()


def test_monitor_state_round_trip_resumes_exactly():
    a = CodebookMonitor(16, window=3)
    for step in range(5):
        a.update(torch.tensor([step, step + 1]))
    b = CodebookMonitor(16, window=3)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.update(torch.tensor([9]))
    assert torch.equal(a.counts(), b.counts())
    assert torch.equal(a.dead_codes(2), b.dead_codes(2))
    assert a.stats() == b.stats()


def test_spherical_kmeans_lowers_quantisation_distortion_and_keeps_unused_centres():
    g = torch.Generator().manual_seed(0)
    # Points around 8 directions; centres start on 8 of the points, some sharing a cluster.
    directions = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    z = torch.nn.functional.normalize(directions.repeat(50, 1) + 0.2 * torch.randn(400, 16, generator=g), dim=-1)
    start = z[:8].clone()
    start[7] = -directions.mean(0)  # far from every point: gets no assignment
    start = torch.nn.functional.normalize(start, dim=-1)

    def distortion(centres: torch.Tensor) -> float:
        return float(1 - (z @ centres.t()).max(-1).values.mean())

    refined = spherical_kmeans(z, start, iters=10)
    assert distortion(refined) < 0.7 * distortion(start)
    assert torch.allclose(refined.norm(dim=-1), torch.ones(8))
    assert torch.allclose(refined[7], start[7])  # an empty cluster keeps its centre
    assert torch.allclose(spherical_kmeans(z, start, iters=0), start)


def test_codebook_init_with_kmeans_changes_only_with_iterations():
    m1, m2 = tiny(), tiny()
    m2.load_state_dict(m1.state_dict())
    init_codebook_from_encoder(m1, videos(), generator=torch.Generator().manual_seed(0))
    init_codebook_from_encoder(m2, videos(), generator=torch.Generator().manual_seed(0), kmeans_iters=3)
    with torch.no_grad():
        z = torch.nn.functional.normalize(m1.bottleneck.project(m1.encode_continuous(videos())).flatten(0, 1), dim=-1)

    def fit(m: LARPTokenizer) -> float:
        cb = m.bottleneck.regularizer.codebook.detach()
        return float((z @ cb.t()).max(-1).values.mean())

    assert not torch.equal(m1.bottleneck.regularizer.embedding.weight, m2.bottleneck.regularizer.embedding.weight)
    assert fit(m2) >= fit(m1) - 1e-6
    with pytest.raises(ValueError, match="init_kmeans_iters"):
        AntiCollapse(tiny(), CodebookOptions(init_kmeans_iters=-1))
