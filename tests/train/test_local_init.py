"""The local linear initialisation (larp.train.local_init)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from larp import LARPTokenizer, tokenizer_preset
from larp.data.synthetic import synthetic_clip
from larp.models.config import TokenizerConfig
from larp.train.codebook import AntiCollapse, CodebookOptions
from larp.train.local_init import local_linear_init
from larp.utils.config import apply_overrides, to_dict


def synthetic(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    clips = np.stack([synthetic_clip(i % 10, rng) for i in range(n)])
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255


def model(*overrides: str) -> LARPTokenizer:
    torch.manual_seed(0)
    data = apply_overrides(to_dict(tokenizer_preset("larp-synthetic-64")), list(overrides))
    return LARPTokenizer(TokenizerConfig.from_json_dict(data))


def psnr(recon: torch.Tensor, video: torch.Tensor) -> float:
    mse = (recon.clamp(0, 1) - video).pow(2).flatten(1).mean(1)
    return float((-10 * torch.log10(mse)).mean())


@pytest.fixture(scope="module")
def clips() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic(24, seed=0), synthetic(8, seed=1)


def test_starts_as_a_linear_autoencoder_far_above_the_mean_video(clips):
    train, val = clips
    m = model()
    report = local_linear_init(m, train, generator=torch.Generator().manual_seed(0))
    assert report["routing_encoder"] > 0.9 and report["routing_decoder"] > 0.95
    with torch.no_grad():
        recon = m.decode_latents(m.bottleneck.project(m.encode_continuous(val)))
        fresh = model()
        fresh_recon = fresh.decode_latents(fresh.bottleneck.project(fresh.encode_continuous(val)))
    mean_video = psnr(train.mean(0, keepdim=True).expand_as(val), val)
    assert psnr(fresh_recon, val) < mean_video + 0.5  # the released init: nothing about the clip gets through
    assert psnr(recon, val) > mean_video + 3.0  # measured: ~23 dB against ~19 dB
    # Only values change: the state dict has the same keys and shapes as a fresh model's.
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}


def test_released_latent_position_base_cannot_route_the_decoder(clips, caplog):
    # With base 10,000 the 1-D latent embedding is band-limited: latent positions are not linearly separable.
    report = local_linear_init(model("latent_pe_scale_factor=10000"), clips[0][:8])
    assert report["routing_decoder"] < 0.5
    # Training says so and names the key to change.
    ac = AntiCollapse(model("latent_pe_scale_factor=10000"), CodebookOptions(local_linear_init=True))
    with caplog.at_level("WARNING", logger="larp.train.codebook"):
        ac.setup(clips[0][:8])
    assert "does not tell the 64 latents apart" in caplog.text
    assert "model.config.latent_pe_scale_factor (now 10000)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="larp.train.codebook"):
        AntiCollapse(model(), CodebookOptions(local_linear_init=True)).setup(clips[0][:8])
    assert "latent_pe_scale_factor" not in caplog.text


WHOLE_CLIP_16 = ("patch_size=16", "decoder_patch_size=16", "temporal_patch_size=16", "decoder_temporal_patch_size=16")


def test_several_latents_per_patch_hold_slices_of_it_coarse_to_fine(clips):
    # 64 latents for 16 whole-clip patches: four per patch, each a slice of its principal components.
    train, val = clips
    m = model(*WHOLE_CLIP_16)
    report = local_linear_init(m, train, generator=torch.Generator().manual_seed(0))
    assert report["routing_encoder"] > 0.95 and report["routing_decoder"] > 0.95
    with torch.no_grad():
        unit = m.bottleneck.project(m.encode_continuous(val))  # (B, 64, d): latent i = slice i // 16
        recon = psnr(m.decode_latents(unit), val)

        def without(s: int) -> float:  # slice s of every patch replaced by its mean over the clips
            u = unit.clone()
            u[:, s * 16:(s + 1) * 16] = torch.nn.functional.normalize(unit[:, s * 16:(s + 1) * 16].mean(0), dim=-1)
            return psnr(m.decode_latents(u), val)

        losses = [recon - without(s) for s in range(4)]
    assert recon > psnr(train.mean(0, keepdim=True).expand_as(val), val) + 5.0  # measured: +6.9 dB
    assert all(x > 0.1 for x in losses)  # every slice carries something (measured: 7.0, 1.7, 0.8, 0.4 dB) ...
    assert losses[0] > losses[1] > losses[2] > losses[3]  # ... and the first ones the most


def test_anti_collapse_starts_sliced_tokens_and_their_codebook(clips):
    # The training path: the sliced initialisation, then the codebook from the encoder's outputs (k-means).
    train, val = clips
    m = model(*WHOLE_CLIP_16)
    options = CodebookOptions(local_linear_init=True, init_from_encoder=True, init_kmeans_iters=5)
    ac = AntiCollapse(m, options, generator=torch.Generator().manual_seed(0))
    ac.setup(train)
    assert ac.init_report["routing_encoder"] > 0.95 and ac.init_report["routing_decoder"] > 0.95
    with torch.no_grad():
        codes = m.encode(val, deterministic=True)
        recon = m.decode(codes)
    assert len(codes.unique()) > 64  # the slices do not share a handful of codes (measured: 407 of 512 tokens)
    assert psnr(recon, val) > psnr(train.mean(0, keepdim=True).expand_as(val), val) + 2.0  # measured: +3.0 dB


@pytest.mark.parametrize(("tokens", "found"), [(40, "40 latents for 16 patches"), (48, "48 latents for 16 patches")])
def test_several_latents_per_patch_need_a_whole_number_that_divides_the_heads(tokens, found):
    # 40 is not a multiple of the 16 patches; 48 is (3 per patch) but 3 slices do not divide 4 heads.
    m = model(*WHOLE_CLIP_16, f"bottleneck_token_num={tokens}")
    with pytest.raises(ValueError, match=f"{found} need a whole number of latents per patch that divides"):
        local_linear_init(m, torch.rand(4, 3, 16, 64, 64))


def test_anti_collapse_runs_it_and_reports_routing(clips):
    m = model()
    ac = AntiCollapse(m, CodebookOptions(local_linear_init=True), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="codebook.local_linear_init needs videos"):
        ac.setup(None)
    ac.setup(clips[0][:8])
    assert ac.init_report["routing_decoder"] > 0.95
    assert not torch.equal(m.final_layer.linear.weight, torch.zeros_like(m.final_layer.linear.weight))


def test_fewer_latents_than_patches_own_runs_of_patches(clips):
    # 32 latents for 64 patches: each latent owns two neighbouring patches and attends to both.
    train, val = clips
    m = model("bottleneck_token_num=32")
    report = local_linear_init(m, train, generator=torch.Generator().manual_seed(0))
    assert report["routing_encoder"] > 0.95 and report["routing_decoder"] > 0.95
    with torch.no_grad():
        recon = m.decode_latents(m.bottleneck.project(m.encode_continuous(val)))
    assert psnr(recon, val) > psnr(train.mean(0, keepdim=True).expand_as(val), val) + 1.0  # measured: +1.4 dB


@pytest.mark.parametrize("geometry", [
    ("patch_size=8", "decoder_patch_size=8", "temporal_patch_size=16", "decoder_temporal_patch_size=16"),
    ("patch_size=8", "decoder_patch_size=8", "temporal_patch_size=8", "decoder_temporal_patch_size=8"),
])
def test_routes_on_axes_of_eight_positions(clips, geometry):
    # 8x8 spatial grids: the sin-cos embedding's finest directions are ~2e-5 of its largest; the reads need
    # them, and patch content must stay out of them (it did not, and routing fell to 0.05).
    train, val = clips
    m = model(*geometry)
    report = local_linear_init(m, train, generator=torch.Generator().manual_seed(0))
    assert report["routing_encoder"] > 0.85 and report["routing_decoder"] > 0.95
    with torch.no_grad():
        recon = m.decode_latents(m.bottleneck.project(m.encode_continuous(val)))
    gain = psnr(recon, val) - psnr(train.mean(0, keepdim=True).expand_as(val), val)
    assert gain > 1.5  # measured: +4.7 dB (8x8x16, one patch per latent), +2.3 dB (8x8x8, two per latent)
