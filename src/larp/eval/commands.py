"""`larp fvd REAL FAKE` and `larp eval tokenizer`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from larp.data.datasets import VideoClipDataset
from larp.data.prepare import VIDEO_EXTENSIONS, VideoRow
from larp.eval import fvd as fvd_lib
from larp.eval.metrics import LPIPSWeightsError
from larp.eval.protocols import PROTOCOLS, evaluate_tokenizer, video_feature_stats
from larp.utils.device import resolve_device
from larp.utils.errors import CheckpointError
from larp.utils.files import write_json

# Errors that describe bad input; the command prints them without a traceback.
USER_ERRORS = (fvd_lib.DetectorError, LPIPSWeightsError, CheckpointError, FileNotFoundError, ValueError)



def list_videos(folder: Path) -> list[VideoRow]:
    """Every video file under `folder` (recursively, sorted by path), unlabelled."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    return [VideoRow(id=p.stem, path=str(p), action="", label=-1) for p in files]


def _check_input(path: Path) -> list[VideoRow] | None:
    """Rows of a video folder, or None for an .npz statistics file; anything else is an error."""
    if path.is_dir():
        rows = list_videos(path)
        if len(rows) < 2:
            exts = ", ".join(sorted(VIDEO_EXTENSIONS))
            raise ValueError(f"{path} holds {len(rows)} video files ({exts}); FVD needs at least 2")
        return rows
    if path.is_file() and path.suffix == ".npz":
        return None
    raise FileNotFoundError(f"{path} is neither a folder of videos nor an .npz statistics file")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--i3d_path", default=None,
                   help=f"the I3D detector file (default: ${fvd_lib.ENV_I3D_PATH}, then the cache, then a "
                        "verified download)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers reading videos")
    p.add_argument("--seed", type=int, default=0, help="seeds each video's clip start")
    p.add_argument("--out", default=None, help="also write the result as JSON to this file")
    p.add_argument("--stats_dir", default=None, help="also save the feature statistics (.npz) here")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fvd", help="FVD between two folders of videos or .npz statistics files",
        description="FVD between REAL and FAKE, each a folder of videos (searched recursively; one clip per "
                    "video, shorter side resized to --size, centre crop) or an .npz of feature statistics "
                    "saved by larp (statistics merge across shards by adding sums).")
    p.add_argument("real")
    p.add_argument("fake")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    _add_common(p)
    p.set_defaults(func=run_fvd)

    ev = sub.add_parser("eval", help="evaluate a model (see `larp eval tokenizer -h`)")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    t = ev_sub.add_parser(
        "tokenizer", help="rFVD, PSNR, SSIM and LPIPS of a tokenizer's reconstructions",
        description="Reconstruct one seeded clip per video of a dataset CSV and report rFVD, PSNR, SSIM and "
                    "LPIPS, with the protocol written next to the numbers. Protocols: "
                    + "; ".join(f"{k}: {v.description}" for k, v in PROTOCOLS.items()))
    t.add_argument("--tokenizer", required=True, help="a tokenizer folder or Hugging Face repo id")
    t.add_argument("--dataset_csv", required=True,
                   help="the metadata CSV, or a folder holding the protocol's CSV (ucf101_train1.csv, ...)")
    t.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper")
    t.add_argument("--num_clips", type=int, default=None, help="a seeded subset of the videos (default: all)")
    t.add_argument("--use_amp", action="store_true", help="mixed precision for the tokenizer")
    t.add_argument("--det", action=argparse.BooleanOptionalAction, default=True,
                   help="deterministic (argmax) quantisation, the protocol's default; --no-det samples codes")
    t.add_argument("--no_lpips", action="store_true", help="skip LPIPS (it needs the VGG-16 ImageNet weights)")
    _add_common(t)
    t.set_defaults(func=run_eval_tokenizer, batch_size=8)


def _stats_for(path: Path, rows: list[VideoRow] | None, extractor: fvd_lib.I3DFeatureExtractor | None,
               args: argparse.Namespace) -> fvd_lib.FeatureStats:
    if rows is None:
        return fvd_lib.FeatureStats.load(path)
    dataset = VideoClipDataset(rows, num_frames=args.num_frames, size=args.size, train=False, seed=args.seed)
    return video_feature_stats(dataset, extractor, args.batch_size, args.num_workers)


def run_fvd(args: argparse.Namespace) -> int:
    try:
        real, fake = Path(args.real), Path(args.fake)
        inputs = {"real": (real, _check_input(real)), "fake": (fake, _check_input(fake))}
        extractor, detector_record = None, None
        if any(rows is not None for _, rows in inputs.values()):
            device = resolve_device(args.device)
            path = fvd_lib.resolve_detector_path(args.i3d_path)
            extractor = fvd_lib.I3DFeatureExtractor(fvd_lib.load_detector(path, device), args.batch_size)
            detector_record = {"path": str(path), "sha256": fvd_lib.sha256_of(path)}
        stats = {name: _stats_for(path, rows, extractor, args) for name, (path, rows) in inputs.items()}
        value = fvd_lib.fvd(stats["real"], stats["fake"])
    except USER_ERRORS as exc:
        print(f"larp fvd: error: {exc}", file=sys.stderr)
        return 1
    if args.stats_dir:
        for name, (_, rows) in inputs.items():
            if rows is not None:
                stats[name].save(Path(args.stats_dir) / f"{name}.npz")
    print(f"FVD {value:.4f} ({stats['real'].count} real, {stats['fake'].count} generated)")
    if args.out:
        clips = {"num_frames": args.num_frames, "size": args.size, "seed": args.seed,
                 "clip_start": "per video i: numpy default_rng([seed, i]) draws a start among those that fit"}
        write_json(args.out, {
            "fvd": value,
            **{name: {"source": str(path), "kind": "statistics" if rows is None else "videos",
                      "count": stats[name].count} for name, (path, rows) in inputs.items()},
            "clips": clips if extractor is not None else None,
            "detector": detector_record,
        })
    return 0


def run_eval_tokenizer(args: argparse.Namespace) -> int:
    from larp.models.tokenizer import LARPTokenizer

    try:
        tokenizer = LARPTokenizer.from_pretrained(args.tokenizer)
        result = evaluate_tokenizer(
            tokenizer, args.dataset_csv, protocol=args.protocol, num_clips=args.num_clips, seed=args.seed,
            batch_size=args.batch_size, device=resolve_device(args.device), use_amp=args.use_amp,
            deterministic=args.det, detector=args.i3d_path, lpips=not args.no_lpips,
            num_workers=args.num_workers, stats_dir=args.stats_dir)
    except USER_ERRORS as exc:
        print(f"larp eval tokenizer: error: {exc}", file=sys.stderr)
        return 1
    result["tokenizer"] = args.tokenizer
    m = result["metrics"]
    line = f"rFVD {m['rfvd']:.3f}  PSNR {m['psnr']:.3f}  SSIM {m['ssim']:.4f}"
    if "lpips" in m:
        line += f"  LPIPS {m['lpips']:.4f}"
    print(f"{line}  ({result['protocol']['num_clips']} clips, protocol {args.protocol})")
    if args.out:
        write_json(args.out, result)
    return 0
