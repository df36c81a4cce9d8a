"""One evaluation of a tokenizer's reconstructions, for training validation, the demo and the protocols.

`reconstruction_metrics(batches, tokenizer, ...)` encodes, quantises and decodes every batch and returns
the mean PSNR and SSIM (and LPIPS when given a metric), the codebook usage of the chosen codes, I3D feature
statistics when given a detector (for rFVD), and, for clips of the synthetic dataset, the object metrics of
`larp.eval.synthetic` (object IoU and PSNR, coherent fraction, sFVD, strict accuracy with labels)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from larp.eval import fvd as fvd_lib
from larp.eval.metrics import psnr, ssim
from larp.eval.synthetic import ObjectScores
from larp.utils.device import autocast

Batch = torch.Tensor | tuple[torch.Tensor, Any] | Mapping[str, Any]


@torch.no_grad()
def reconstruct_batch(tokenizer: torch.nn.Module, video: torch.Tensor, deterministic: bool = True,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode, quantise and decode a batch (no prior loss): (reconstruction, not clamped; code indices)."""
    tokenizer.check_video(video)
    q = tokenizer.quantize(tokenizer.encode_continuous(video), deterministic, generator)
    return tokenizer.decode_latents(q.quantized), q.indices


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage (fraction of codes chosen at least once), perplexity (exp of the entropy of the code histogram:
    K when uniform, 1 when collapsed) and the number of codes used, from a histogram (K,)."""
    c = counts.double()
    total = float(c.sum())
    p = c[c > 0] / total if total else c[:0]
    return {"codebook_usage": float((c > 0).double().mean()),
            "codebook_perplexity": float(torch.exp(-(p * p.log()).sum())) if total else 0.0,
            "codes_used": float((c > 0).sum())}


@torch.no_grad()
def prior_scores(tokenizer: torch.nn.Module, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per clip (B,): the prior's cross-entropy (nats per token), top-1 and top-5 accuracy when it predicts
    codes 1..N-1 of `indices` (B, N) from the ones before (teacher forcing, no dropout in eval mode)."""
    logits = tokenizer.prior_logits(indices).float()  # (B, N-1, K)
    labels = indices[:, 1:].long()
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)
    top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    return {"prior_ce": ce.cpu(), "prior_top1": (top5[..., 0] == labels).float().mean(1).cpu(),
            "prior_top5": (top5 == labels.unsqueeze(-1)).any(-1).float().mean(1).cpu()}


@dataclass
class ReconstructionResult:
    """What `reconstruction_metrics` measured: dataset means, per-clip values and optional extras."""

    metrics: dict[str, float]
    per_clip: dict[str, list[float]]
    labels: list[int] = field(default_factory=list)
    objects: ObjectScores | None = None  # synthetic clips only
    real_stats: fvd_lib.FeatureStats | None = None  # with a detector
    recon_stats: fvd_lib.FeatureStats | None = None
    examples: tuple[torch.Tensor, torch.Tensor] | None = None  # the first `keep_examples` (real, recon)


def _split(batch: Batch) -> tuple[torch.Tensor, list[int] | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        video, labels = batch["video"], batch.get("label")
    elif isinstance(batch, tuple | list) and len(batch) == 2:
        video, labels = batch
    else:
        raise ValueError(f"expected batches of videos (B, 3, T, H, W), (video, labels) pairs or dicts with "
                         f"'video' (and 'label'), got {type(batch).__name__}")
    if labels is None:
        return video, None
    labels = labels.tolist() if isinstance(labels, torch.Tensor) else [int(y) for y in labels]
    if len(labels) != len(video):
        raise ValueError(f"expected one label per clip, got {len(labels)} labels for {len(video)} clips")
    return video, labels


@torch.no_grad()
def reconstruction_metrics(
    batches: Iterable[Batch],
    tokenizer: torch.nn.Module,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
    lpips: Any | None = None,
    prior: bool = False,
    detector: torch.nn.Module | None = None,
    synthetic: bool = False,
    num_classes: int = 10,
    keep_examples: int = 0,
    progress: bool = False,
) -> ReconstructionResult:
    """Reconstruct every batch and measure the reconstructions.

    batches: videos (B, 3, T, H, W) in [0, 1], or (video, labels) pairs, or dicts with "video" (and
      "label"), e.g. a DataLoader over `VideoCSVDataset`.
    device, dtype: where the tokenizer runs and its autocast dtype (None or float32: full precision).
    deterministic: argmax codes (the evaluation default) or sampled ones (with `generator`).
    lpips: a callable (real, recon) -> per-clip LPIPS (B,), e.g. `larp.eval.metrics.LPIPSMetric`.
    prior: also score the tokenizer's prior on the chosen codes (teacher forcing): prior_ce (nats per
      token), prior_top1 and prior_top5 over tokens 1..N-1.
    detector: an I3D module: real and reconstruction feature statistics are returned and `rfvd` measured.
    synthetic: the clips come from the synthetic dataset: object IoU, object / background PSNR, coherent
      fraction and sFVD (against the real clips themselves), and with labels the strict accuracy and the
      lenient class accuracy among `num_classes` classes.
    keep_examples: keep the first this many real clips and their reconstructions (CPU, clamped).

    metrics holds psnr, ssim (and lpips, prior_ce/top1/top5), codebook_usage, codebook_perplexity, codes_used, clips, rfvd
    with a detector, and for synthetic clips the keys of `ObjectScores.summary` (object_iou, object_psnr,
    background_psnr, coherent_fraction, sfvd, strict_accuracy, colour/shape/motion_accuracy, ...)."""
    device = torch.device(device)
    tokenizer = tokenizer.to(device).eval()
    per_clip: dict[str, list[float]] = {"psnr": [], "ssim": []}
    if lpips is not None:
        per_clip["lpips"] = []
    if prior:
        per_clip.update(prior_ce=[], prior_top1=[], prior_top5=[])
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    objects = ObjectScores.empty() if synthetic else None
    real_stats = fvd_lib.FeatureStats() if detector is not None else None
    recon_stats = fvd_lib.FeatureStats() if detector is not None else None
    all_labels: list[int] = []
    kept_real: list[torch.Tensor] = []
    kept_recon: list[torch.Tensor] = []
    for batch in tqdm(batches, desc="reconstruct", unit="batch", disable=not progress):
        video, labels = _split(batch)
        video = video.to(device).float()
        with autocast(device, dtype):
            recon, indices = reconstruct_batch(tokenizer, video, deterministic, generator)
        recon = recon.float().clamp(0, 1)
        counts += torch.bincount(indices.reshape(-1).long().cpu(), minlength=tokenizer.codebook_size)
        per_clip["psnr"] += psnr(recon, video).tolist()
        per_clip["ssim"] += ssim(recon, video).tolist()
        if lpips is not None:
            per_clip["lpips"] += [float(v) for v in lpips(recon, video)]
        if prior:
            for key, values in prior_scores(tokenizer, indices).items():
                per_clip[key] += values.tolist()
        if detector is not None:
            real_stats.add(fvd_lib.extract_features(detector, video))
            recon_stats.add(fvd_lib.extract_features(detector, recon))
        if objects is not None:
            objects.add(video.cpu(), recon.cpu())
        if labels is not None:
            all_labels += labels
        have = sum(len(v) for v in kept_real)
        if have < keep_examples:
            kept_real.append(video[: keep_examples - have].cpu())
            kept_recon.append(recon[: keep_examples - have].cpu())
    n = len(per_clip["psnr"])
    if n == 0:
        raise ValueError("reconstruction_metrics got no clips (an empty dataset or loader?)")
    if synthetic and all_labels and len(all_labels) != n:
        raise ValueError(f"got labels for {len(all_labels)} of {n} clips; give labels with every batch or none")
    metrics = {k: float(np.mean(v)) for k, v in per_clip.items()}
    metrics.update(codebook_stats(counts))
    metrics["clips"] = float(n)
    if detector is not None:
        metrics["rfvd"] = fvd_lib.fvd(real_stats, recon_stats) if n >= 2 else math.nan
    if objects is not None:
        metrics.update(objects.summary(all_labels or None, num_classes=num_classes))
    examples = (torch.cat(kept_real), torch.cat(kept_recon)) if kept_real else None
    return ReconstructionResult(metrics, per_clip, all_labels, objects, real_stats, recon_stats, examples)
