"""`larp tokenize`, `larp decode` and `larp reconstruct`: whole videos through a tokenizer (larp.videos.tokens)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from larp.data.video_io import MP4Writer, read_video, to_uint8
from larp.models.tokenizer import LARPTokenizer
from larp.utils.device import DTYPES, resolve_device
from larp.utils.errors import CheckpointError
from larp.videos.layout import SPATIAL_MODES
from larp.videos.tokens import (
    DEFAULT_FPS,
    PSNRMeter,
    VideoTokens,
    iter_decode,
    iter_reconstruct,
    tokenize_video,
)

# Errors that describe bad input (VideoReadError and VideoTokensError are ValueErrors): one line, no trace.
USER_ERRORS = (CheckpointError, ValueError, OSError)


def _error(command: str, exc: BaseException) -> int:
    message = " ".join(str(exc).split())  # one line, whatever the cause's own formatting
    print(f"larp {command}: error: {message}", file=sys.stderr)
    return 1



def _load_tokenizer(name: str, device: torch.device) -> tuple[LARPTokenizer, str]:
    """The model and the id to record: a local folder as an absolute path, a hub id as given."""
    model = LARPTokenizer.from_pretrained(name, map_location=device)
    path = Path(name).expanduser()
    return model, str(path.resolve()) if path.is_dir() else name


def _mp4_path(value: str) -> Path:
    path = Path(value)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"the output must be an .mp4 file, got {value!r}")
    return path


def _write(path: Path, chunks: Iterable[torch.Tensor], fps: float) -> None:
    """Stream float chunks (3, t, H, W) into `path` via a temporary file, so a failure leaves no half file."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        with MP4Writer(tmp, fps) as writer:
            for chunk in chunks:
                for frame in to_uint8(chunk):
                    writer.write(frame)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _outputs(videos: list[str], out: str) -> list[Path]:
    """One .npz per video: `out` itself for one video, else (or when `out` is a folder) out/<stem>.npz."""
    target = Path(out)
    if len(videos) == 1 and not (target.is_dir() or out.endswith(("/", "\\"))):
        return [target]
    if target.exists() and not target.is_dir():
        raise ValueError(f"-o {out} must be a folder when tokenizing {len(videos)} videos")
    paths = [target / f"{Path(v).stem}.npz" for v in videos]
    clashes = sorted({p.name for p in paths if paths.count(p) > 1})
    if clashes:
        raise ValueError(f"several videos would write the same token file(s) {clashes}; tokenize them separately")
    return paths


def run_tokenize(args: argparse.Namespace) -> int:
    try:
        outputs = _outputs(args.videos, args.output)
        device = resolve_device(args.device)
        model, model_id = _load_tokenizer(args.tokenizer, device)
    except USER_ERRORS as exc:
        return _error("tokenize", exc)
    failed = 0
    for video, out in zip(args.videos, outputs, strict=True):
        try:
            frames, fps = read_video(video)
            tokens = tokenize_video(model, frames, spatial=args.spatial, overlap=args.overlap, fps=fps,
                                    tokenizer_id=model_id, batch_size=args.batch_size, device=device,
                                    dtype=DTYPES[args.dtype])
            tokens.save(out)
        except USER_ERRORS as exc:
            failed += 1
            _error("tokenize", exc)
            continue
        print(f"wrote {out}: {tokens.num_windows} windows x {tokens.num_tiles} tiles x {tokens.num_tokens} "
              f"tokens ({tokens.num_frames} frames, {frames.shape[2]}x{frames.shape[1]}, {fps:g} fps)")
    return 1 if failed else 0


def run_decode(args: argparse.Namespace) -> int:
    try:
        out = _mp4_path(args.output)
        tokens = VideoTokens.load(args.tokens)
        name = args.tokenizer or tokens.tokenizer
        if not name:
            raise ValueError(f"{args.tokens} does not name its tokenizer; pass --tokenizer")
        device = resolve_device(args.device)
        model, _ = _load_tokenizer(name, device)
        chunks = iter_decode(model, tokens, batch_size=args.batch_size, device=device, dtype=DTYPES[args.dtype])
        _write(out, chunks, tokens.fps or DEFAULT_FPS)
    except USER_ERRORS as exc:
        return _error("decode", exc)
    _, t, h, w = tokens.output_shape
    print(f"wrote {out}: {t} frames, {w}x{h}")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    try:
        out = _mp4_path(args.output)
        device = resolve_device(args.device)
        model, _ = _load_tokenizer(args.tokenizer, device)
        frames, fps = read_video(args.video)
        meter = PSNRMeter()
        chunks = iter_reconstruct(model, frames, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                                  device=device, dtype=DTYPES[args.dtype], meter=meter)
        _write(out, chunks, fps)
    except USER_ERRORS as exc:
        return _error("reconstruct", exc)
    t, h, w = frames.shape[:3]
    print(f"wrote {out}: {t} frames, {w}x{h}")
    print(f"PSNR: {meter.value:.2f} dB")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="compute precision (bfloat16/float16 run under autocast)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4,
                   help="clips (windows x tiles) per forward pass")


def _add_overlap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overlap", type=int, default=None,
                   help="pixels shared by neighbouring tiles, blended with a linear ramp (default: a quarter "
                        "of the model's frame size)")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "tokenize", help="videos -> token files (.npz)",
        description="Tokenize whole videos of any length, frame rate and size: consecutive windows of the "
                    "model's T frames (the last padded by repeating its last frame) and, per --spatial, "
                    "crop: shorter side resized to the model's size, centre crop (one clip per window); "
                    "cover: resized the same way, overlapping tiles along the longer side (the whole frame); "
                    "tile: overlapping tiles at the native resolution. Each .npz holds the tokens and "
                    "everything `larp decode` needs.")
    t.add_argument("videos", nargs="+", metavar="VIDEO")
    t.add_argument("--tokenizer", required=True, help="a tokenizer folder or Hugging Face repo id")
    t.add_argument("-o", "--output", required=True,
                   help="the .npz for one video, or a folder receiving <video name>.npz per video")
    t.add_argument("--spatial", choices=SPATIAL_MODES, default="crop", help="spatial layout (default: crop)")
    _add_overlap(t)
    _add_common(t)
    t.set_defaults(func=run_tokenize)

    d = sub.add_parser(
        "decode", help="a token file -> mp4",
        description="Decode a token file written by `larp tokenize` into an mp4 at the original frame rate "
                    "and frame count: the original frame size for cover/tile tokens, the centre crop's region "
                    "at the original scale for crop tokens.")
    d.add_argument("tokens", help="the .npz written by `larp tokenize`")
    d.add_argument("-o", "--output", required=True, help="the .mp4 to write")
    d.add_argument("--tokenizer", default=None,
                   help="a tokenizer folder or Hugging Face repo id (default: the one named in the token file)")
    _add_common(d)
    d.set_defaults(func=run_decode)

    r = sub.add_parser(
        "reconstruct", help="a video -> its reconstruction through a tokenizer (mp4) and its PSNR",
        description="Tokenize and decode a whole video; the mp4 has the input's frame count, size and frame "
                    "rate. By default the frame is resized so its shorter side fits the model and covered by "
                    "overlapping tiles along the longer side, then resized back; --tile tiles the native "
                    "resolution instead. Prints the PSNR of the reconstruction against the decoded input "
                    "(before the mp4's own compression).")
    r.add_argument("video", metavar="VIDEO")
    r.add_argument("--tokenizer", required=True, help="a tokenizer folder or Hugging Face repo id")
    r.add_argument("-o", "--output", required=True, help="the .mp4 to write")
    r.add_argument("--tile", action="store_true", help="tile the native resolution (more tokens, finer detail)")
    _add_overlap(r)
    _add_common(r)
    r.set_defaults(func=run_reconstruct)
