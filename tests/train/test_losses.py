"""Tokenizer-training losses against hand-computed values (docs/method.md, training recipes)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lpips
import pytest
import torch

from larp.eval import metrics
from larp.eval.metrics import vgg_trunk_state
from larp.models.layers import sincos_3d
from larp.train.losses import (
    VGG16_BYTES,
    VGG16_FILE,
    VGG16_URL,
    DiscriminatorConfig,
    LeCam,
    PerceptualLoss,
    VideoDiscriminator,
    d_loss_hinge,
    d_loss_smoothed_bce,
    discriminator_loss,
    from_reference_disc_name,
    g_loss_hinge,
    g_loss_non_saturating,
    generator_adversarial_loss,
    motion_weights,
    pixel_loss,
    r1_penalty,
    require_vgg_weights,
    smoothed_targets,
)
from larp.utils.files import sha256_of


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, t: float) -> float:
    return -(t * math.log(_sigmoid(x)) + (1.0 - t) * math.log(1.0 - _sigmoid(x)))


# ------------------------------------------------------------------------------------------- pixel loss


def test_pixel_loss_values():
    recon, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert pixel_loss(recon, target).item() == pytest.approx(1.5)  # (1 + 2) / 2
    assert pixel_loss(recon, target, "l2").item() == pytest.approx(2.5)  # (1 + 4) / 2
    half = pixel_loss(recon.half(), target.half())
    assert half.dtype == torch.float32 and half.item() == pytest.approx(1.5)


def test_pixel_loss_bad_input():
    with pytest.raises(ValueError, match=r"recon has shape \(2,\) but target has \(3,\)"):
        pixel_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="'l1' or 'l2', got 'l3'"):
        pixel_loss(torch.zeros(2), torch.zeros(2), "l3")  # type: ignore[arg-type]


def test_weighted_pixel_loss_is_the_weighted_mean():
    recon, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert pixel_loss(recon, target, weights=torch.tensor([1.0, 3.0])).item() == pytest.approx((1 + 3 * 2) / 4)
    assert pixel_loss(recon, target, "l2", torch.tensor([1.0, 3.0])).item() == pytest.approx((1 + 3 * 4) / 4)
    # Uniform weights: the plain mean, whatever their size.
    assert pixel_loss(recon, target, weights=torch.full((2,), 7.0)).item() == pytest.approx(1.5)


def _square_clip(moving: bool) -> torch.Tensor:
    """(1, 3, 8, 16, 16): a grey clip with a red 3x3 square, moving 2 px per frame or still."""
    video = torch.full((1, 3, 8, 16, 16), 0.5)
    for t in range(8):
        x = 1 + (2 * t if moving else 0)
        video[0, :, t, 4:7, x:x + 3] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return video


def test_motion_weights_mark_what_moves():
    video = _square_clip(moving=True)
    w = motion_weights(video, weight=10.0)
    assert w.shape == (1, 1, 8, 16, 16)
    assert torch.all(w[0, 0, 0, 4:7, 1:4] == 11.0)  # the square where it is now: 0.4 from the median grey
    assert torch.all(w[0, 0, :, 10:, :] == 1.0)  # rows it never crosses
    assert torch.all(w[0, 0, 0, 4:7, 8:] == 1.0)  # where it is not in this frame and rarely is
    # A still square is part of the static scene: no weight anywhere.
    assert torch.all(motion_weights(_square_clip(moving=False), weight=10.0) == 1.0)
    assert torch.all(motion_weights(video, weight=0.0) == 1.0)


def test_motion_weighted_loss_counts_errors_on_the_moving_object_more():
    video = _square_clip(moving=True)
    w = motion_weights(video, weight=10.0)
    on_object, on_background = video.clone(), video.clone()
    on_object[0, :, 0, 4:7, 1:4] += 0.1  # the same error on nine pixels of the object, or of the background
    on_background[0, :, 0, 12:15, 1:4] += 0.1
    plain = pixel_loss(on_object, video), pixel_loss(on_background, video)
    assert plain[0].item() == pytest.approx(plain[1].item())
    weighted = pixel_loss(on_object, video, weights=w), pixel_loss(on_background, video, weights=w)
    assert weighted[0].item() == pytest.approx(11 * weighted[1].item())


def test_motion_weights_bad_input():
    with pytest.raises(ValueError, match=r"expected videos \(B, C, T, H, W\), got shape \(3, 8, 16, 16\)"):
        motion_weights(torch.zeros(3, 8, 16, 16), weight=1.0)
    with pytest.raises(ValueError, match="expected weight >= 0 and threshold > 0, got -1.0 and 0.1"):
        motion_weights(torch.zeros(1, 3, 8, 16, 16), weight=-1.0)


# ------------------------------------------------------------------------------------- adversarial losses


def test_smoothed_bce_reproduces_targets_by_hand():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.0])
    loss = d_loss_smoothed_bce(real, fake, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    n_real, n_fake = torch.randn(3, generator=g).tolist(), torch.randn(2, generator=g).tolist()
    t_real = [max(1.0 - abs(0.15 * n), 0.7) for n in n_real]
    t_fake = [min(abs(0.15 * n), 0.3) for n in n_fake]
    real_term = sum(_bce(x, t) for x, t in zip(real.tolist(), t_real, strict=True)) / 3
    fake_term = sum(_bce(x, t) for x, t in zip(fake.tolist(), t_fake, strict=True)) / 2
    assert loss.item() == pytest.approx(real_term + fake_term, rel=1e-6)  # summed, as the reference
    # Given standard normals (a replayed draw) give the same targets as the generator's.
    g = torch.Generator().manual_seed(7)
    noise = (torch.randn(3, generator=g), torch.randn(2, generator=g))
    assert d_loss_smoothed_bce(real, fake, noise=noise).item() == pytest.approx(loss.item(), rel=1e-7)
    # The same seed gives the same loss; another seed another one.
    assert d_loss_smoothed_bce(real, fake, torch.Generator().manual_seed(7)).item() == loss.item()
    assert d_loss_smoothed_bce(real, fake, torch.Generator().manual_seed(8)).item() != loss.item()


def test_smoothed_targets_ranges_and_clamps():
    logits = torch.zeros(20000)
    real_t, fake_t = smoothed_targets(logits, logits, torch.Generator().manual_seed(0))
    assert real_t.min().item() == pytest.approx(0.7) and real_t.max().item() <= 1.0
    assert fake_t.max().item() == pytest.approx(0.3) and fake_t.min().item() >= 0.0
    # |N(0, 0.15)| exceeds 0.3 with probability 4.6%: those are the clamped ones.
    assert 0.03 < (real_t == 0.7).float().mean().item() < 0.06
    assert 0.03 < (fake_t == 0.3).float().mean().item() < 0.06
    assert fake_t.mean().item() == pytest.approx(0.15 * math.sqrt(2 / math.pi), abs=3e-3)


def test_hinge_and_non_saturating_values():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.5])
    # relu(1 - real) = [0.5, 0] -> 0.25; relu(1 + fake) = [0, 1.5] -> 0.75; averaged -> 0.5
    assert d_loss_hinge(real, fake).item() == pytest.approx(0.5)
    assert g_loss_hinge(fake).item() == pytest.approx(0.75)
    # -log sigmoid(0) = log 2, -log sigmoid(log 3) = log(4/3)
    ns = g_loss_non_saturating(torch.tensor([0.0, math.log(3.0)]))
    assert ns.item() == pytest.approx(0.5 * math.log(8.0 / 3.0), rel=1e-6)
    assert g_loss_non_saturating(torch.tensor([-100.0])).item() == pytest.approx(100.0)  # stable, not inf
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx(0.5)
    assert generator_adversarial_loss("bce", torch.tensor([0.0])).item() == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="'bce' or 'hinge', got 'wgan'"):
        discriminator_loss("wgan", real, fake)  # type: ignore[arg-type]


def test_lecam_ema_and_penalty_after_two_updates():
    lecam = LeCam()  # decay 0.999, both averages start at 0
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -3.0])
    # The penalty uses the averages before the update: relu(2 - 0)^2 + relu(0 - (-2))^2 = 8.
    assert lecam.penalty(real, fake).item() == pytest.approx(8.0)
    lecam.update(real.mean(), fake.mean())
    assert lecam.ema_real.item() == pytest.approx(0.002) and lecam.ema_fake.item() == pytest.approx(-0.002)
    real, fake = torch.tensor([4.0, 6.0]), torch.tensor([0.0, 2.0])  # means 5 and 1
    # relu(5 - (-0.002))^2 + relu(0.002 - 1)^2 = 5.002^2 + 0
    assert lecam.penalty(real, fake).item() == pytest.approx(5.002**2, rel=1e-6)
    lecam.update(real, fake)  # logits are averaged first
    ema_real, ema_fake = 0.999 * 0.002 + 0.001 * 5, 0.999 * -0.002 + 0.001 * 1
    assert lecam.ema_real.item() == pytest.approx(ema_real)
    assert lecam.ema_fake.item() == pytest.approx(ema_fake)
    # Buffers: the EMAs are checkpointed and restored.
    restored = LeCam()
    restored.load_state_dict(lecam.state_dict())
    assert restored.penalty(real, fake).item() == pytest.approx(lecam.penalty(real, fake).item(), rel=1e-7)
    assert restored.num_updates.item() == 2
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\), got 1.0"):
        LeCam(1.0)


def test_r1_penalty_on_linear_and_quadratic_discriminators():
    w = torch.randn(3, 2, 2, 2, requires_grad=True)
    x = torch.randn(4, 3, 2, 2, 2, requires_grad=True)
    logits = (x * w).flatten(1).sum(1)  # linear: the gradient is w for every sample
    penalty = r1_penalty(logits, x)
    assert penalty.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-6)
    (grad_w,) = torch.autograd.grad(penalty, w)  # create_graph: it trains the discriminator
    torch.testing.assert_close(grad_w, 2 * w.detach())

    logits = x.pow(2).flatten(1).sum(1)  # quadratic: gradient 2x, penalty mean_b 4 ||x_b||^2
    expected = (4 * x.detach().pow(2).flatten(1).sum(1)).mean()
    assert r1_penalty(logits, x).item() == pytest.approx(expected.item(), rel=1e-6)

    with pytest.raises(ValueError, match="requires_grad=True"):
        r1_penalty(torch.zeros(2), torch.zeros(2, 3))


# ------------------------------------------------------------------------------------------ discriminator

SMALL = DiscriminatorConfig(width=32, heads=2, depth=2, temporal_patch=2, patch=4, frames=4, size=8)


def test_discriminator_shape_and_time_order():
    disc = VideoDiscriminator(SMALL).eval()
    video = torch.rand(3, 3, 4, 8, 8)
    logits = disc(video)
    assert logits.shape == (3,)
    reversed_logits = disc(video.flip(2))
    assert (logits - reversed_logits).abs().min().item() > 1e-4
    # Each clip is scored on its own (no mixing across the batch).
    torch.testing.assert_close(disc(video[1:2]), logits[1:2])


def test_discriminator_matches_its_definition():
    disc = VideoDiscriminator(SMALL).eval()
    video = torch.rand(2, 3, 4, 8, 8)
    # By hand: patches of the [0, 1] video as it is + fixed PE, CLS first without PE, blocks, norm, head on CLS.
    x = disc.patch_embed.proj(video).flatten(2).transpose(1, 2) + sincos_3d(32, 2, 2, 2)
    x = torch.cat([disc.cls_token.expand(2, -1, -1), x], dim=1)
    for block in disc.blocks:
        x = block(x)
    expected = disc.head(disc.norm(x[:, 0]))[:, 0]
    torch.testing.assert_close(disc(video), expected)
    assert all(b.attn.qkv.bias is None for b in disc.blocks)  # qkv bias off
    assert "pos_embed" not in disc.state_dict()  # fixed, rebuilt from the config
    assert disc.cls_token.shape == (1, 1, 32)


def test_discriminator_reads_the_reference_names():
    disc = VideoDiscriminator(SMALL)
    names = {"patch_embed.proj.weight": "x_embedder.proj.weight", "blocks.1.mlp.fc2.bias":
             "transformer_encoder.blocks.1.mlp.fc2.bias", "norm.weight": "norm_final.weight", "head.bias": "fc.bias",
             "cls_token": "cls_token"}
    for ours, theirs in names.items():
        assert from_reference_disc_name(theirs) == ours
    # A reference state dict: larp's tensors (plus 1) under the reference's names.
    theirs = {k.replace("patch_embed.", "x_embedder.").replace("blocks.", "transformer_encoder.blocks.")
              .replace("norm.", "norm_final.").replace("head.", "fc."): v + 1 for k, v in disc.state_dict().items()}
    other = VideoDiscriminator(SMALL)
    other.load_reference_state_dict({**theirs, "encoder_pos_embed": sincos_3d(32, 2, 2, 2)})
    for name, value in disc.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], value + 1)
    with pytest.raises(ValueError, match="encoder_pos_embed of the reference discriminator is not"):
        other.load_reference_state_dict({**theirs, "encoder_pos_embed": torch.zeros(1, 8, 32)})
    with pytest.raises(ValueError, match="missing.*fc.weight|missing.*head.weight"):
        other.load_reference_state_dict({k: v for k, v in theirs.items() if k != "fc.weight"})


def test_discriminator_bad_input_and_config():
    disc = VideoDiscriminator(SMALL)
    with pytest.raises(ValueError, match=r"expects \(B, 3, 4, 8, 8\) videos in \[0, 1\], got \(1, 3, 5, 8, 8\)"):
        disc(torch.rand(1, 3, 5, 8, 8))
    with pytest.raises(ValueError, match="width 30 is not divisible by its 4 heads"):
        DiscriminatorConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="frames 6 are not divisible by its temporal patch 4"):
        DiscriminatorConfig(frames=6)
    with pytest.raises(ValueError, match="size 100 is not divisible by its patch 8"):
        DiscriminatorConfig(size=100)


# ------------------------------------------------------------------------------------- perceptual loss


@pytest.fixture(scope="module")
def perceptual() -> PerceptualLoss:
    return PerceptualLoss(pretrained_trunk=False)  # random trunk: runs offline


def test_perceptual_zero_for_identical_positive_otherwise(perceptual):
    a = torch.rand(2, 3, 2, 32, 32)
    assert perceptual(a, a.clone()).item() == 0.0
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert perceptual(a, b).item() > 0.0


def test_perceptual_folds_time_into_the_batch(perceptual):
    a, b = torch.rand(2, 3, 3, 32, 32), torch.rand(2, 3, 3, 32, 32)
    per_frame = [perceptual.lpips(a[i, :, t], b[i, :, t], normalize=True).item()
                 for i in range(2) for t in range(3)]
    assert perceptual(a, b).item() == pytest.approx(sum(per_frame) / 6, rel=1e-5)
    with pytest.raises(ValueError, match=r"two \(B, 3, T, H, W\) videos of the same shape"):
        perceptual(a, b[:, :, :2])


def test_perceptual_is_frozen_but_passes_gradient(perceptual):
    assert not any(p.requires_grad for p in perceptual.parameters())
    perceptual.train()
    assert not perceptual.training and not perceptual.lpips.training  # dropout stays off
    a = torch.rand(1, 3, 1, 32, 32, requires_grad=True)
    perceptual(a, torch.rand(1, 3, 1, 32, 32)).backward()
    assert a.grad is not None and a.grad.abs().sum().item() > 0


def test_vgg_trunk_state_maps_torchvision_names(perceptual):
    trunk = perceptual.lpips.net
    # torchvision names: features.{index in vgg16().features}.{weight|bias}
    vgg = {f"features.{k.split('.', 1)[1]}": torch.randn_like(v) for k, v in trunk.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(1)  # extra keys are ignored
    mapped = vgg_trunk_state(trunk, vgg)
    assert mapped.keys() == trunk.state_dict().keys()
    assert torch.equal(mapped["slice5.28.weight"], vgg["features.28.weight"])
    assert torch.equal(mapped["slice1.0.bias"], vgg["features.0.bias"])
    del vgg["features.0.weight"]
    with pytest.raises(ValueError, match="missing 'features.0.weight'.*'slice1.0.weight'"):
        vgg_trunk_state(trunk, vgg, "f.pth")
    vgg["features.0.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"'features.0.weight' has shape \(2, 2\), expected \(64, 3, 3, 3\)"):
        vgg_trunk_state(trunk, vgg, "f.pth")


# ------------------------------------------------------------------------------------------ VGG weights


def _checkpoints(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.delenv("TORCH_HUB", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub" / "checkpoints"


def test_require_vgg_weights_missing(tmp_path, monkeypatch):
    folder = _checkpoints(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError) as err:
        require_vgg_weights()
    message = str(err.value)
    for part in (VGG16_FILE, str(folder), VGG16_URL, "perceptual_weight=0"):
        assert part in message
    # PerceptualLoss fails the same way, before building anything; it never downloads.
    with pytest.raises(FileNotFoundError, match=VGG16_FILE):
        PerceptualLoss()
    assert not folder.exists()


def test_require_vgg_weights_present_and_wrong_size_or_hash(tmp_path, monkeypatch):
    folder = _checkpoints(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    path = folder / VGG16_FILE
    with open(path, "wb") as f:
        f.truncate(VGG16_BYTES)  # sparse: no disk used
    # The right size but not the right bytes: refused by the SHA-256 check, before any unpickling.
    with pytest.raises(ValueError, match=f"has SHA-256 [0-9a-f]{{64}}, expected {metrics.VGG_SHA256}"):
        require_vgg_weights()
    with pytest.raises(ValueError, match="has SHA-256"):
        PerceptualLoss()
    with open(path, "wb") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match=f"has 1,000 bytes, expected {VGG16_BYTES:,}"):
        require_vgg_weights()


def _fake_vgg(path: Path, monkeypatch, seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in VGG-16 file (the trunk's tensors only), accepted by pinning its own size and hash."""
    g = torch.Generator().manual_seed(seed)
    widths = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256), (512, 256),
              (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # the convolutions of vgg16().features
    state = {}
    for i, (out, inp) in zip(indices, widths, strict=True):
        state[f"features.{i}.weight"] = torch.randn(out, inp, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(out, generator=g) * 0.01
    state["classifier.0.weight"] = torch.zeros(2, 2)  # present in the real file, unused by LPIPS
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    monkeypatch.setattr(metrics, "VGG_SIZE", path.stat().st_size)
    monkeypatch.setattr(metrics, "VGG_SHA256", sha256_of(path))
    return state


def test_perceptual_loads_the_trunk_from_the_cache(tmp_path, monkeypatch, perceptual):
    folder = _checkpoints(tmp_path, monkeypatch)
    trunk = _fake_vgg(folder / VGG16_FILE, monkeypatch)
    loads = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    loaded = PerceptualLoss()
    assert loads == [True, True]  # the VGG file and the heads, both without unpickling objects
    assert torch.equal(loaded.lpips.net.slice3.get_submodule("14").weight, trunk["features.14.weight"])
    # The linear heads come from the lpips wheel, as with the random trunk.
    assert torch.equal(loaded.lpips.lin2.model[1].weight, perceptual.lpips.lin2.model[1].weight)
    assert not any(t.is_meta for t in loaded.state_dict().values())


def test_a_planted_pickle_in_the_vgg_cache_never_runs(tmp_path, monkeypatch):
    folder = _checkpoints(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = folder / VGG16_FILE
    torch.save({"features.0.weight": Payload()}, path)
    # With the real pinned hash the file is refused before it is opened as a pickle ...
    with pytest.raises(ValueError, match="bytes, expected 553,433,881"):
        PerceptualLoss()
    with pytest.raises(ValueError, match="bytes, expected 553,433,881"):
        metrics.LPIPSMetric()
    # ... and were its hash the pinned one, weights_only=True would still refuse the object.
    monkeypatch.setattr(metrics, "VGG_SIZE", path.stat().st_size)
    monkeypatch.setattr(metrics, "VGG_SHA256", sha256_of(path))
    with pytest.raises(ValueError, match="could not read the weights .*vgg16-397923af.pth"):
        PerceptualLoss()
    with pytest.raises(ValueError, match="could not read the weights .*vgg16-397923af.pth"):
        metrics.LPIPSMetric()  # evaluation's path: torchvision never gets to unpickle it
    assert not marker.exists()


@pytest.mark.slow
def test_built_network_equals_lpips_own_construction(tmp_path, monkeypatch):
    """build_lpips gives the numbers of lpips.LPIPS(net="vgg", version="0.1") holding the same trunk."""
    folder = _checkpoints(tmp_path, monkeypatch)
    trunk = _fake_vgg(folder / VGG16_FILE, monkeypatch)
    ours = PerceptualLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    reference.net.load_state_dict(vgg_trunk_state(reference.net, trunk))
    reference.eval()
    a, b = torch.rand(2, 3, 1, 32, 32), torch.rand(2, 3, 1, 32, 32)
    with torch.no_grad():
        expected = reference(a[:, :, 0], b[:, :, 0], normalize=True).mean().item()
        assert ours(a, b).item() == expected  # the same network, bit for bit
