"""`larp fvd REAL FAKE` and `larp eval tokenizer`.

Light at import (argparse only): torch, the detector and the models load when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from larp.utils import cli as opts

if TYPE_CHECKING:
    from larp.data.prepare import VideoRow
    from larp.eval import fvd as fvd_lib

ENV_I3D_PATH = "LARP_I3D_PATH"  # larp.eval.fvd.ENV_I3D_PATH (a test keeps them equal)


def list_videos(folder: Path) -> list[VideoRow]:
    """Every video file under `folder` (recursively, sorted by path), unlabelled."""
    from larp.data.prepare import VIDEO_EXTENSIONS, VideoRow

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    return [VideoRow(id=p.stem, path=str(p), action="", label=-1) for p in files]


def _check_input(path: Path) -> list[VideoRow] | None:
    """Rows of a video folder, or None for an .npz statistics file; anything else is an error."""
    from larp.data.prepare import VIDEO_EXTENSIONS

    if path.is_dir():
        rows = list_videos(path)
        if len(rows) < 2:
            exts = ", ".join(sorted(VIDEO_EXTENSIONS))
            raise ValueError(f"{path} holds {len(rows)} video files ({exts}); FVD needs at least 2")
        return rows
    if path.is_file() and path.suffix == ".npz":
        return None
    raise FileNotFoundError(f"{path} is neither a folder of videos nor an .npz statistics file")


def _check_outputs(args: argparse.Namespace, stats_names: list[str]) -> None:
    """Refuse, before any work, to replace the JSON or statistics files without --overwrite."""
    if args.out:
        opts.check_output(args.out, args.overwrite)
    if args.stats_dir:
        for name in stats_names:
            opts.check_output(Path(args.stats_dir) / f"{name}.npz", args.overwrite)


def _add_common(p: argparse.ArgumentParser, batch_size: int) -> None:
    opts.add_option(p, "i3d_path", default=None, metavar="FILE",
                    help=f"the I3D detector file (default: ${ENV_I3D_PATH}, then ~/.cache/larp/"
                         "i3d_torchscript.pt, then a verified download)")
    opts.add_device(p)
    opts.add_batch_size(p, batch_size, help="clips per forward pass")
    opts.add_num_workers(p)
    opts.add_seed(p, help="seeds each video's clip start")
    opts.add_output(p, required=False, metavar="JSON", help="also write the result as JSON to this file "
                                                            "(default: print only)")
    opts.add_option(p, "stats_dir", default=None, metavar="FOLDER",
                    help="also save the feature statistics (.npz) here (default: not saved)")
    opts.add_overwrite(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fvd", help="FVD between two folders of videos or .npz statistics files",
        description="FVD between REAL and FAKE, each a folder of videos (searched recursively; one clip per "
                    "video, shorter side resized to --size, centre crop) or an .npz of feature statistics "
                    "saved by larp (statistics merge across shards by adding sums).")
    p.add_argument("real", help="folder of real videos, or real statistics (.npz)")
    p.add_argument("fake", help="folder of generated videos, or their statistics (.npz)")
    opts.add_option(p, "num_frames", type=opts.positive_int, default=16, help="frames per clip")
    opts.add_option(p, "size", type=opts.positive_int, default=128, help="clip width and height")
    _add_common(p, batch_size=8)
    opts.add_frame_budgets(p)
    opts.add_memory_budget(p)
    p.set_defaults(func=run_fvd)

    from larp.eval.protocols import PROTOCOLS

    ev = sub.add_parser("eval", help="evaluate a model (see `larp eval tokenizer -h`)")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    t = ev_sub.add_parser(
        "tokenizer", help="rFVD, PSNR, SSIM and LPIPS of a tokenizer's reconstructions",
        description="Reconstruct one seeded clip per video of a dataset CSV and report rFVD, PSNR, SSIM and "
                    "LPIPS, with the protocol written next to the numbers. Protocols: "
                    + "; ".join(f"{k}: {v.description}" for k, v in PROTOCOLS.items()))
    opts.add_tokenizer(t)
    opts.add_dataset_csv(t, help="the metadata CSV, or a folder holding the protocol's CSV "
                                 "(ucf101_train1.csv, ...)")
    opts.add_option(t, "protocol", choices=sorted(PROTOCOLS), default="paper", help="evaluation protocol")
    opts.add_option(t, "num_clips", type=opts.positive_int, default=None,
                    help="a seeded subset of the videos (default: all)")
    opts.add_dtype(t, default=None, help="tokenizer precision under autocast (default: float32; bfloat16 and "
                                      "float16 run under autocast)")
    opts.add_option(t, "use_amp", action="store_true",
                    help="the reference's mixed precision: float16 on CUDA, bfloat16 on CPUs (or use --dtype)")
    opts.add_option(t, "det", action=opts.BooleanOption, default=True,
                    help="deterministic (argmax) quantisation, the protocol's choice (default: on); --no_det samples codes")
    opts.add_option(t, "no_lpips", action="store_true", help="skip LPIPS (it needs the VGG-16 ImageNet weights)")
    opts.add_option(t, "no_fvd", action="store_true", help="skip rFVD (it needs the I3D detector file)")
    opts.add_option(t, "manifest", default=None, metavar="FILE",
                    help="the manifest.json of `larp data check`: the CSV must be one of its lists (same files, "
                         "order, labels and sizes), and its SHA-256 is recorded with the numbers (default: none)")
    _add_common(t, batch_size=8)
    t.set_defaults(func=run_eval_tokenizer)


def _stats_for(path: Path, rows: list[VideoRow] | None, extractor: fvd_lib.I3DFeatureExtractor | None,
               args: argparse.Namespace) -> fvd_lib.FeatureStats:
    from larp.data.datasets import VideoClipDataset
    from larp.eval import fvd as fvd_lib
    from larp.eval.protocols import video_feature_stats

    if rows is None:
        return fvd_lib.FeatureStats.load(path)
    dataset = VideoClipDataset(rows, num_frames=args.num_frames, size=args.size, train=False, seed=args.seed)
    return video_feature_stats(dataset, extractor, args.batch_size, args.num_workers)


def run_fvd(args: argparse.Namespace) -> int:
    from larp.eval import fvd as fvd_lib
    from larp.utils.budget import check_budget, check_memory
    from larp.utils.device import resolve_device
    from larp.utils.files import write_json

    check_budget(f"the clip size (--size {args.size}, in pixels)", args.size * args.size, args.max_frame_pixels,
                 "--max_frame_pixels")
    check_budget("--num_frames", args.num_frames, args.max_frames, "--max_frames")
    check_memory(f"a batch of {args.batch_size} clips of {args.num_frames} frames of {args.size}x{args.size}",
                 args.batch_size * args.num_frames * args.size * args.size * 3 * 4, args.max_memory_mb)
    real, fake = Path(args.real), Path(args.fake)
    inputs = {"real": (real, _check_input(real)), "fake": (fake, _check_input(fake))}
    _check_outputs(args, [name for name, (_, rows) in inputs.items() if rows is not None])
    extractor, detector_record = None, None
    if any(rows is not None for _, rows in inputs.values()):
        device = resolve_device(args.device)
        path = fvd_lib.resolve_detector_path(args.i3d_path)
        extractor = fvd_lib.I3DFeatureExtractor(fvd_lib.load_detector(path, device), args.batch_size)
        detector_record = {"path": str(path), "sha256": fvd_lib.sha256_of(path)}
    stats = {name: _stats_for(path, rows, extractor, args) for name, (path, rows) in inputs.items()}
    value = fvd_lib.fvd(stats["real"], stats["fake"])
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
    from larp.eval.protocols import evaluate_tokenizer
    from larp.models.tokenizer import LARPTokenizer
    from larp.utils.device import resolve_device
    from larp.utils.files import write_json

    _check_outputs(args, [] if args.no_fvd else ["real", "recon"])
    tokenizer = LARPTokenizer.from_pretrained(args.tokenizer)
    result: dict[str, Any] = evaluate_tokenizer(
        tokenizer, args.dataset_csv, protocol=args.protocol, num_clips=args.num_clips, seed=args.seed,
        batch_size=args.batch_size, device=resolve_device(args.device), use_amp=args.use_amp, dtype=args.dtype,
        deterministic=args.det, detector=args.i3d_path, lpips=not args.no_lpips, fvd=not args.no_fvd,
        num_workers=args.num_workers, stats_dir=args.stats_dir, manifest=args.manifest)
    result["tokenizer"] = args.tokenizer
    m = result["metrics"]
    parts = [f"rFVD {m['rfvd']:.3f}"] if "rfvd" in m else []
    parts += [f"PSNR {m['psnr']:.3f}", f"SSIM {m['ssim']:.4f}"]
    if "lpips" in m:
        parts.append(f"LPIPS {m['lpips']:.4f}")
    print(f"{'  '.join(parts)}  ({result['protocol']['num_clips']} clips, protocol {args.protocol})")
    if args.out:
        write_json(args.out, result)
    return 0
