"""`reconstruction_metrics`: one evaluation of a tokenizer's reconstructions for every caller."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from larp.data.synthetic import synthetic_clip
from larp.data.video_io import to_tensor
from larp.eval.metrics import psnr, ssim
from larp.eval.reconstruction import codebook_stats, reconstruction_metrics
from larp.models.config import tokenizer_preset
from larp.models.tokenizer import LARPTokenizer
from larp.train.codebook import CodebookMonitor
from tests.eval.conftest import StandInI3D


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return LARPTokenizer(tokenizer_preset("larp-tiny")).eval()


def videos(n: int, frames: int = 8, size: int = 32) -> torch.Tensor:
    return torch.stack([to_tensor(synthetic_clip(k % 10, np.random.default_rng([3, k]), frames, size))
                        for k in range(n)])


class Identity(nn.Module):
    """A 'tokenizer' whose reconstruction is its input (one code per clip), to test the object metrics."""

    codebook_size = 4

    def check_video(self, video: torch.Tensor) -> None:
        assert video.ndim == 5

    def encode_continuous(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def quantize(self, hidden: torch.Tensor, deterministic: bool, generator: torch.Generator | None):
        class Q:
            quantized = hidden
            indices = torch.zeros(len(hidden), 1, dtype=torch.long)
        return Q()

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        return quantized


def test_metrics_equal_a_hand_computation_and_batch_forms_agree(tiny):
    clips = videos(6)
    with torch.no_grad():
        idx = tiny.encode(clips, deterministic=True)
        recon = tiny.decode(idx).clamp(0, 1)
    monitor = CodebookMonitor(tiny.codebook_size, window=10)
    monitor.update(idx)
    batches = [clips[:4], clips[4:]]
    result = reconstruction_metrics(batches, tiny, keep_examples=5)
    m = result.metrics
    assert m["psnr"] == pytest.approx(float(psnr(recon, clips).mean()), abs=1e-4)
    assert m["ssim"] == pytest.approx(float(ssim(recon, clips).mean()), abs=1e-5)
    assert result.per_clip["psnr"] == pytest.approx(psnr(recon, clips).tolist(), abs=1e-4)
    stats = monitor.stats()
    assert (m["codebook_usage"], m["codes_used"]) == (stats["codebook_usage"], stats["codes_used"])
    assert m["codebook_perplexity"] == pytest.approx(stats["codebook_perplexity"])
    assert m["clips"] == 6 and "object_iou" not in m and "rfvd" not in m
    real, rec = result.examples
    assert real.shape == (5, 3, 8, 32, 32) and torch.equal(real, clips[:5])
    assert torch.allclose(rec, recon[:5], atol=1e-5)
    # (video, labels) pairs and dataset-style dicts give the same figures, and keep the labels.
    pairs = reconstruction_metrics([(clips[:4], [0, 1, 2, 3]), (clips[4:], torch.tensor([4, 5]))], tiny)
    dicts = reconstruction_metrics([{"video": clips[:4], "label": torch.arange(4)},
                                    {"video": clips[4:], "label": torch.tensor([4, 5])}], tiny)
    assert pairs.metrics["psnr"] == pytest.approx(m["psnr"]) and pairs.metrics["clips"] == 6
    assert pairs.labels == dicts.labels == [0, 1, 2, 3, 4, 5]
    assert dicts.metrics["psnr"] == pytest.approx(m["psnr"])


def test_detector_lpips_and_errors(tiny):
    clips = videos(4)
    lpips_calls = []

    def fake_lpips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lpips_calls.append(len(x))
        return (x - y).abs().flatten(1).mean(1)

    result = reconstruction_metrics([clips[:2], clips[2:]], tiny, lpips=fake_lpips, detector=StandInI3D())
    assert lpips_calls == [2, 2] and result.metrics["lpips"] > 0
    assert result.real_stats.count == 4 and result.recon_stats.count == 4 and result.metrics["rfvd"] > 0
    with pytest.raises(ValueError, match="got no clips"):
        reconstruction_metrics([], tiny)
    with pytest.raises(ValueError, match="one label per clip, got 1 labels for 4 clips"):
        reconstruction_metrics([(clips, [0])], tiny)
    with pytest.raises(ValueError, match="expected batches of videos"):
        reconstruction_metrics([(clips, [0, 1, 2, 3], "extra")], tiny)


def test_synthetic_object_metrics_of_a_perfect_reconstruction():
    clips = videos(20, frames=16, size=64)
    labels = [k % 10 for k in range(20)]
    result = reconstruction_metrics([(clips[:10], labels[:10]), (clips[10:], labels[10:])], Identity(),
                                    synthetic=True)
    m = result.metrics
    assert m["psnr"] == 100.0 and m["object_iou"] == 1.0 and m["object_psnr"] == 100.0
    assert m["strict_accuracy"] == 1.0 and m["coherent_fraction"] == 1.0
    assert m["sfvd"] == pytest.approx(0.0, abs=1e-6)
    assert m["codebook_usage"] == 0.25 and m["codebook_perplexity"] == pytest.approx(1.0)
    assert len(result.objects.iou) == 20
    # Without labels the object metrics stay, the class accuracies go.
    unlabelled = reconstruction_metrics([clips], Identity(), synthetic=True).metrics
    assert unlabelled["object_iou"] == 1.0 and "strict_accuracy" not in unlabelled


def test_codebook_stats():
    stats = codebook_stats(torch.tensor([2, 2, 0, 0]))
    assert stats == {"codebook_usage": 0.5, "codebook_perplexity": pytest.approx(2.0), "codes_used": 2.0}
    assert codebook_stats(torch.zeros(3, dtype=torch.long))["codebook_perplexity"] == 0.0


def test_prior_scores_match_the_tokenizers_own_prior_loss(tiny):
    video = videos(3)
    result = reconstruction_metrics([video], tiny, prior=True)
    with torch.no_grad():
        out = tiny(video, deterministic=True)  # the training forward: first-round prior logits and accuracy
        logits = tiny.prior_logits(out.indices)
    labels = out.indices[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels).item()
    assert result.metrics["prior_ce"] == pytest.approx(ce, rel=1e-5)
    assert result.metrics["prior_top1"] == pytest.approx(out.prior.top1.item(), abs=1e-6)
    assert result.metrics["prior_top5"] == pytest.approx(out.prior.top5.item(), abs=1e-6)
    assert 0 <= result.metrics["prior_top1"] <= result.metrics["prior_top5"] <= 1
    assert "prior_ce" not in reconstruction_metrics([video], tiny).metrics  # only when asked
