"""Evaluation protocols as named, recorded procedures (docs/method.md).

- `evaluate_tokenizer`: rFVD, PSNR, SSIM and LPIPS of a tokenizer's reconstructions over a dataset CSV,
  one seeded clip per video; the returned dict records the protocol next to the numbers.
  Protocols: "paper" (UCF-101 split-1 train videos, as in the paper) and "heldout" (the test videos).
- `ucf_gfvd_chunks` / `ChunkDataset`: the gFVD real set of the class-conditional UCF-101 protocol.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from larp.data.datasets import VideoClipDataset, VideoCSVDataset, read_video_csv
from larp.data.manifest import verify_manifest
from larp.data.prepare import VideoRow
from larp.data.transforms import ClipTransform
from larp.data.video_io import probe_video, read_clip
from larp.eval import fvd as fvd_lib
from larp.eval.metrics import LPIPSMetric
from larp.eval.reconstruction import reconstruction_metrics
from larp.utils.device import resolve_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerProtocol:
    """How a tokenizer is evaluated: which split, how many clips, how they are cut."""

    name: str
    split: str
    csv_name: str  # the file picked when --dataset_csv is a folder of prepared CSVs
    expected_videos: int  # UCF-101 split 1; a different count is logged, not refused
    description: str
    num_frames: int = 16
    size: int = 128
    clips_per_video: int = 1


PROTOCOLS: dict[str, TokenizerProtocol] = {
    "paper": TokenizerProtocol(
        name="paper", split="train", csv_name="ucf101_train1.csv", expected_videos=9537,
        description="LARP paper rFVD: one 16-frame clip (seeded random start) per UCF-101 split-1 training "
                    "video, 128x128, deterministic VQ; real statistics from the same clips"),
    "heldout": TokenizerProtocol(
        name="heldout", split="test", csv_name="ucf101_test1.csv", expected_videos=3783,
        description="held-out rFVD: as the paper's protocol, on the UCF-101 split-1 test videos (no overlap "
                    "with the training videos)"),
}


def get_protocol(name: str | TokenizerProtocol) -> TokenizerProtocol:
    if isinstance(name, TokenizerProtocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def resolve_protocol_csv(dataset_csv: str | os.PathLike, protocol: TokenizerProtocol) -> Path:
    """A CSV file as given, or the protocol's file (`ucf101_train1.csv`, ...) inside a folder."""
    path = Path(dataset_csv)
    if path.is_dir():
        path = path / protocol.csv_name
        if not path.is_file():
            raise FileNotFoundError(f"{dataset_csv} is a folder without {protocol.csv_name}, the CSV of the "
                                    f"{protocol.name!r} protocol ({protocol.split} split); build it with "
                                    "`larp prepare-data` or pass the CSV file itself")
        return path
    if not path.is_file():
        raise FileNotFoundError(f"dataset CSV not found: {dataset_csv}")
    other = "test" if protocol.split == "train" else "train"
    if other in path.name.lower() and protocol.split not in path.name.lower():
        log.warning("protocol %r evaluates the %s split but the CSV is named %s", protocol.name,
                    protocol.split, path.name)
    return path


def select_clips(num_videos: int, num_clips: int | None, seed: int, fvd: bool = True) -> list[int]:
    """All videos in CSV order, or a seeded sample of `num_clips` of them (in sorted order); at least two
    when the FVD is computed, one without it."""
    if num_clips is None:
        return list(range(num_videos))
    if fvd and num_clips < 2:
        raise ValueError(f"num_clips must be at least 2 (FVD needs two samples; --no_fvd takes one), got {num_clips}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    if num_clips > num_videos:
        raise ValueError(f"asked for {num_clips} clips (one per video) but the dataset CSV lists only "
                         f"{num_videos} videos")
    return sorted(random.Random(seed).sample(range(num_videos), num_clips))


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype:
    """float16 where the reference ran (CUDA); CPU autocast supports bfloat16; float32 when AMP is off."""
    if not enabled:
        return torch.float32
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _detector_record(detector: torch.nn.Module | str | os.PathLike | None,
                     device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    if isinstance(detector, torch.nn.Module):
        return detector, {"source": "module passed by the caller"}
    path = fvd_lib.resolve_detector_path(detector)
    return fvd_lib.load_detector(path, device), {"path": str(path), "sha256": fvd_lib.sha256_of(path)}


def evaluate_tokenizer(
    tokenizer: torch.nn.Module,
    dataset_csv: str | os.PathLike,
    *,
    protocol: str | TokenizerProtocol = "paper",
    num_clips: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    use_amp: bool = False,
    dtype: str | None = None,
    deterministic: bool = True,
    detector: torch.nn.Module | str | os.PathLike | None = None,
    lpips: bool | LPIPSMetric = True,
    num_workers: int = 0,
    stats_dir: str | os.PathLike | None = None,
    progress: bool = True,
    fvd: bool = True,
    manifest: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """rFVD, PSNR, SSIM (and LPIPS) of `tokenizer` over one clip per video of `dataset_csv`;
    `fvd=False` leaves rFVD out (no I3D detector needed). Precision: `dtype` ("float32", "bfloat16",
    "float16" under autocast); else `use_amp` as the reference (float16 on CUDA, bfloat16 on CPU), else float32.

    Clip size and length follow the tokenizer (the released one takes 16x128x128, the protocol's clips).
    Every check (CSV, clip count, detector, LPIPS weights) runs before the first clip is read.
    `stats_dir`: also save the real and reconstruction feature statistics there (`real.npz`, `recon.npz`).
    `manifest`: a `larp data check` manifest that must list the CSV's files; its SHA-256 is recorded."""
    proto = get_protocol(protocol)
    device = torch.device(device)
    if dtype is not None and use_amp:
        raise ValueError(f"pass either dtype ({dtype!r}) or use_amp, not both")
    compute_dtype = resolve_dtype(dtype, device) if dtype is not None else amp_dtype(device, use_amp)
    csv_path = resolve_protocol_csv(dataset_csv, proto)
    rows = read_video_csv(csv_path)
    indices = select_clips(len(rows), num_clips, seed, fvd=fvd)
    manifest_record = verify_manifest(manifest, rows, csv_path) if manifest is not None else None
    # The paper's figures are over the whole UCF-101 split-1 list; any other list is a custom protocol.
    standard = len(rows) == proto.expected_videos and num_clips is None
    if not standard:
        log.warning("%s: %d videos, %d clips; the %r protocol is defined on the %d videos of the UCF-101 split-1 "
                    "%s list, so these figures are a custom protocol's, not comparable to the paper's", csv_path,
                    len(rows), len(indices), proto.name, proto.expected_videos, proto.split)
    det_module, det_record = _detector_record(detector, device) if fvd else (None, None)
    lpips_metric = LPIPSMetric(device) if lpips is True else (lpips or None)

    _, frames, size, _ = tokenizer.video_shape
    dataset = VideoCSVDataset(csv_path, num_frames=frames, size=size, train=False, seed=seed)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    generator = None if deterministic else torch.Generator(device).manual_seed(seed)
    # The bar does not promise an rFVD it skips, nor the paper's protocol on another list.
    desc = f"{'rFVD' if fvd else 'reconstruction'} ({proto.name if standard else 'custom'})"
    result = reconstruction_metrics(
        tqdm(loader, desc=desc, unit="batch", disable=not progress), tokenizer,
        device=device, dtype=compute_dtype, deterministic=deterministic, generator=generator,
        lpips=lpips_metric, detector=det_module)
    real_stats, recon_stats, count = result.real_stats, result.recon_stats, int(result.metrics["clips"])
    metrics = {k: result.metrics[k] for k in ("rfvd", "psnr", "ssim", "lpips") if k in result.metrics}
    if stats_dir is not None and det_module is not None:
        real_stats.save(Path(stats_dir) / "real.npz")
        recon_stats.save(Path(stats_dir) / "recon.npz")
    record = {
        **asdict(proto),
        "dataset_csv": str(csv_path),
        "dataset_manifest": manifest_record,
        "videos_in_csv": len(rows),
        "num_clips": count,
        "clip_selection": "all videos" if num_clips is None else f"random.Random({seed}).sample, sorted",
        "num_frames": frames,
        "size": size,
        "seed": seed,
        "clip_start": f"per video i: numpy default_rng([{seed}, i]) draws a start among those that fit",
        "deterministic": deterministic,
        "use_amp": use_amp,
        "dtype": str(compute_dtype).removeprefix("torch."),
        "detector": det_record,
        "lpips": None if lpips_metric is None else "lpips 0.1, net vgg, per frame, normalize=True",
    }
    if not standard:
        record.update(name="custom", procedure=proto.name, expected_videos=None,
                      description=f"custom: the {proto.name!r} protocol's procedure on {csv_path.name} "
                                  f"({len(rows)} videos, {count} clips), not on the {proto.expected_videos} videos "
                                  f"of the UCF-101 split-1 {proto.split} list; not comparable to the paper's figures")
    if (frames, size) != (proto.num_frames, proto.size):
        record["note"] = (f"clips are {frames}x{size}x{size} (the tokenizer's shape), not the protocol's "
                          f"{proto.num_frames}x{proto.size}x{proto.size}; numbers are not comparable to the paper")
    return {"metrics": metrics, "protocol": record}


# ------------------------------------------------------------------------------------------ gFVD chunks
@dataclass(frozen=True)
class Chunk:
    """One non-overlapping clip [start, start + num_frames) of a video, with its class label."""

    path: str
    start: int
    label: int
    video_index: int


def ucf_gfvd_chunks(
    dataset: VideoClipDataset | str | os.PathLike,
    num_samples: int = 10_000,
    seed: int = 42,
    chunk_frames: int = 16,
    frame_counts: list[int] | None = None,
) -> list[Chunk]:
    """The gFVD real set: index every chunk [16i, 16i+16) of every video, then pick `num_samples` with
    `random.Random(seed).sample(range(len(index)), num_samples)`, in the order that call returns.

    `dataset` is a CSV path or a dataset of videos; `frame_counts` (one per video) skips probing."""
    rows: list[VideoRow] = (dataset.rows if isinstance(dataset, VideoClipDataset)
                            else read_video_csv(dataset))
    if frame_counts is None:
        frame_counts = [probe_video(row.path).num_frames for row in tqdm(rows, desc="probing", unit="video")]
    if len(frame_counts) != len(rows):
        raise ValueError(f"got {len(frame_counts)} frame counts for {len(rows)} videos")
    index = [Chunk(row.path, i * chunk_frames, row.label, v)
             for v, (row, n) in enumerate(zip(rows, frame_counts, strict=True))
             for i in range(n // chunk_frames)]
    if num_samples > len(index):
        raise ValueError(f"asked for {num_samples} clips but the {len(rows)} videos hold only {len(index)} "
                         f"non-overlapping {chunk_frames}-frame chunks")
    return [index[i] for i in random.Random(seed).sample(range(len(index)), num_samples)]


class ChunkDataset(Dataset):
    """The chosen chunks as clips: `{"video": (3, T, size, size) in [0, 1], "label", "path"}`."""

    def __init__(self, chunks: list[Chunk], num_frames: int = 16, size: int = 128):
        self.chunks = chunks
        self.num_frames = num_frames
        self.transform = ClipTransform(size, train=False)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        chunk = self.chunks[index]
        frames = read_clip(chunk.path, self.num_frames, start=chunk.start)
        return {"video": self.transform(frames), "label": chunk.label, "path": chunk.path}


def video_feature_stats(dataset: Dataset, extractor: fvd_lib.I3DFeatureExtractor, batch_size: int = 16,
                        num_workers: int = 0, progress: bool = True) -> fvd_lib.FeatureStats:
    """I3D feature statistics of every clip of a dataset whose items hold "video" (3, T, H, W) in [0, 1]."""
    stats = fvd_lib.FeatureStats()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    for batch in tqdm(loader, desc="I3D features", unit="batch", disable=not progress):
        stats.add(extractor(batch["video"]))
    return stats

