"""`larp tokenize`, `larp decode` and `larp reconstruct`: whole videos through a tokenizer (larp.videos.tokens).

Light at import (argparse only): the models and torch load when a command runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from larp.utils import cli as opts
from larp.utils.budget import budget_args, check_frames
from larp.utils.errors import USER_ERRORS, LarpError, one_line
from larp.utils.outputs import exclusive_output
from larp.videos.defaults import DEFAULT_BATCH, DEFAULT_SPATIAL, SPATIAL_MODES

if TYPE_CHECKING:
    import torch

    from larp.models.tokenizer import LARPTokenizer

# `reconstruct` offers the two layouts that give back the whole frame.


def _load_tokenizer(name: str, device: torch.device) -> LARPTokenizer:
    from larp.models.tokenizer import LARPTokenizer

    return LARPTokenizer.from_pretrained(name, map_location=device)


def recorded_tokenizer(name: str, token_file: Path) -> str:
    """What a token file records: a hub id as given; a local folder as a path relative to the token file
    (`./model`, `../runs/x/model`), so that the two can move together, or absolute where no relative path
    exists (another drive)."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return name
    try:
        rel = os.path.relpath(folder.resolve(), token_file.resolve().parent)
    except ValueError:
        return str(folder.resolve())
    return rel if rel.startswith("..") else f"./{Path(rel).as_posix()}"


def resolve_recorded_tokenizer(recorded: str, token_file: Path) -> str:
    """The folder or hub id a token file names: a relative path is read against the token file's folder."""
    if not recorded:
        raise LarpError(f"{token_file} does not name its tokenizer; pass --tokenizer FOLDER_OR_REPO_ID")
    if recorded.startswith(("./", "../", ".\\", "..\\")):
        folder = token_file.parent / recorded
        if not folder.is_dir():
            raise LarpError(f"{token_file} was made with the tokenizer {recorded} (relative to the token file: "
                            f"{folder.resolve()}), which is not there; pass --tokenizer FOLDER_OR_REPO_ID")
        return str(folder)
    return recorded


def _mp4_path(value: str, overwrite: bool) -> Path:
    path = Path(value)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"the output must be an .mp4 file, got {value!r}")
    return opts.check_output(path, overwrite)


def _write(path: Path, chunks: Iterable[torch.Tensor], fps: float) -> None:
    """Stream float chunks (3, t, H, W) into `path`; a failure leaves no half file."""
    from larp.data.video_write import write_mp4_streams

    write_mp4_streams([path], (chunk[None] for chunk in chunks), fps)


def _outputs(videos: list[str], out: str, overwrite: bool) -> list[Path]:
    """One .npz per video: `out` itself for one video, else (or when `out` is a folder) out/<stem>.npz."""
    target = Path(out)
    if len(videos) == 1 and not (target.is_dir() or out.endswith(("/", "\\"))):
        paths = [target]
    else:
        if target.exists() and not target.is_dir():
            raise ValueError(f"-o {out} must be a folder when tokenizing {len(videos)} videos")
        paths = [target / f"{Path(v).stem}.npz" for v in videos]
        clashes = sorted({p.name for p in paths if paths.count(p) > 1})
        if clashes:
            raise ValueError(f"several videos would write the same token file(s) {clashes}; tokenize them "
                             "separately")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise LarpError(f"{', '.join(existing)} exist(s) already; pass --overwrite to replace")
    return paths


class _Bar:
    """A progress bar driven by `progress(done, total)` callbacks (the library's encoding loops)."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="clip", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tokenize(args: argparse.Namespace) -> int:
    outputs = _outputs(args.videos, args.out, args.overwrite)
    single = len(outputs) == 1 and outputs[0] == Path(args.out)
    with exclusive_output(args.out, "tokenize", folder=not single):
        return _tokenize(args, outputs)


def _tokenize(args: argparse.Namespace, outputs: list[Path]) -> int:
    from larp.data.video_io import probe_video
    from larp.utils.device import DTYPES, resolve_device
    from larp.videos.tokens import tokenize_video

    for video in args.videos:  # every declared size against the budgets, before any work
        try:
            info = probe_video(video)
        except USER_ERRORS:
            continue  # an unreadable file is reported with the others below
        check_frames(video, info.num_frames, info.height, info.width, **budget_args(args))
    device = resolve_device(args.device)
    model = _load_tokenizer(args.tokenizer, device)
    failed = 0
    for video, out in zip(args.videos, outputs, strict=True):
        bar = _Bar(f"encode {Path(video).name}")
        try:
            # The file is streamed window by window (memory does not grow with its length); fps is its own.
            tokens = tokenize_video(model, video, spatial=args.spatial, overlap=args.overlap,
                                    tokenizer_id=recorded_tokenizer(args.tokenizer, out),
                                    batch_size=args.batch_size, device=device, dtype=DTYPES[args.dtype],
                                    progress=bar)
            bar.close()
            tokens.save(out)
        except USER_ERRORS as exc:  # the other videos are still tokenized; the exit status says one failed
            bar.close()
            failed += 1
            print(f"larp tokenize: error: {one_line(exc)}", file=sys.stderr)
            continue
        print(f"wrote {out}: {tokens.num_windows} windows x {tokens.num_tiles} tiles x {tokens.num_tokens} "
              f"tokens ({tokens.num_frames} frames, {tokens.layout.original_size[1]}x"
              f"{tokens.layout.original_size[0]}, {tokens.fps:g} fps)")
    return 1 if failed else 0


def run_decode(args: argparse.Namespace) -> int:
    out = _mp4_path(args.out, args.overwrite)
    with exclusive_output(out, "decode", folder=False):
        return _decode(args, out)


def _decode(args: argparse.Namespace, out: Path) -> int:
    from larp.utils.device import DTYPES, resolve_device
    from larp.videos.tokens import DEFAULT_FPS, VideoTokens, iter_decode

    token_file = Path(args.tokens)
    tokens = VideoTokens.load(token_file)
    _, t, h, w = tokens.output_shape
    check_frames(f"the video {token_file} declares", t, h, w, **budget_args(args))  # before any work
    device = resolve_device(args.device)
    if args.tokenizer:
        model = _load_tokenizer(args.tokenizer, device)
    else:
        name = resolve_recorded_tokenizer(tokens.tokenizer, token_file)
        try:
            model = _load_tokenizer(name, device)
        except USER_ERRORS as exc:
            raise LarpError(f"{one_line(exc)} (the tokenizer recorded in {token_file}; pass --tokenizer "
                            "FOLDER_OR_REPO_ID to use another copy)") from exc
    chunks = iter_decode(model, tokens, batch_size=args.batch_size, device=device, dtype=DTYPES[args.dtype])
    _write(out, opts.progress(chunks, total=tokens.num_windows, desc="decode", unit="window"),
           tokens.fps or DEFAULT_FPS)
    _, t, h, w = tokens.output_shape
    print(f"wrote {out}: {t} frames, {w}x{h}")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    out = _mp4_path(args.out, args.overwrite)
    with exclusive_output(out, "reconstruct", folder=False):
        return _reconstruct(args, out)


def _reconstruct(args: argparse.Namespace, out: Path) -> int:
    from larp.data.video_io import probe_video
    from larp.utils.device import DTYPES, resolve_device
    from larp.videos.layout import plan_windows
    from larp.videos.tokens import PSNRMeter, iter_reconstruct

    info = probe_video(args.video)  # the file itself is streamed window by window, twice
    check_frames(args.video, info.num_frames, info.height, info.width, **budget_args(args))
    device = resolve_device(args.device)
    model = _load_tokenizer(args.tokenizer, device)
    meter, bar, done = PSNRMeter(), _Bar("encode"), [0]
    chunks = iter_reconstruct(model, args.video, tile=args.spatial == "tile", overlap=args.overlap,
                              batch_size=args.batch_size, device=device, dtype=DTYPES[args.dtype], meter=meter,
                              progress=bar)

    def decoded() -> Iterable[Any]:
        first = True
        for chunk in chunks:
            if first:  # the encoding is done when the first decoded window arrives
                bar.close()
                first = False
            done[0] += chunk.shape[1]
            yield chunk

    windows = len(plan_windows(info.num_frames, model.video_shape[1]))
    try:
        _write(out, opts.progress(decoded(), total=windows, desc="decode", unit="window"), info.fps)
    finally:
        bar.close()
    print(f"wrote {out}: {done[0]} frames, {info.width}x{info.height}")
    print(f"PSNR: {meter.value:.2f} dB")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    opts.add_device(p)
    opts.add_dtype(p)
    opts.add_batch_size(p, DEFAULT_BATCH, help="clips (windows x tiles) per forward pass")
    opts.add_overwrite(p)
    opts.add_frame_budgets(p)


def _add_overlap(p: argparse.ArgumentParser) -> None:
    opts.add_option(p, "overlap", type=opts.non_negative_int, default=None,
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
                    "everything `larp decode` needs, including the tokenizer (a hub id as given, a local "
                    "folder relative to the token file).")
    t.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (mp4, avi, mkv, webm, ...)")
    opts.add_tokenizer(t)
    opts.add_output(t, "--output", metavar="OUT",
                    help="the .npz for one video, or a folder receiving <video name>.npz per video")
    opts.add_option(t, "spatial", choices=SPATIAL_MODES, default=DEFAULT_SPATIAL, help="spatial layout")
    _add_overlap(t)
    _add_common(t)
    t.set_defaults(func=run_tokenize)

    d = sub.add_parser(
        "decode", help="a token file -> mp4",
        description="Decode a token file written by `larp tokenize` into an mp4 at the original frame rate "
                    "and frame count: the original frame size for cover/tile tokens, the centre crop's region "
                    "at the original scale for crop tokens.")
    d.add_argument("tokens", help="the .npz written by `larp tokenize`")
    opts.add_output(d, "--output", metavar="MP4", help="the .mp4 to write")
    opts.add_tokenizer(d, required=False,
                       help="a tokenizer folder or Hugging Face repo id (default: the one the token file names)")
    _add_common(d)
    d.set_defaults(func=run_decode)

    r = sub.add_parser(
        "reconstruct", help="a video -> its reconstruction through a tokenizer (mp4) and PSNR",
        description="Tokenize and decode a whole video; the mp4 has the input's frame count, size and frame "
                    "rate. With --spatial cover (the default) the frame is resized so its shorter side fits "
                    "the model and covered by overlapping tiles along the longer side, then resized back; "
                    "--spatial tile (or --tile) tiles the native resolution instead (more tokens, finer "
                    "detail). Prints the PSNR of the reconstruction against the decoded input (before the "
                    "mp4's own compression).")
    r.add_argument("video", metavar="VIDEO", help="the video file")
    opts.add_tokenizer(r)
    opts.add_output(r, "--output", metavar="MP4", help="the .mp4 to write")
    opts.add_option(r, "spatial", choices=("cover", "tile"), default=DEFAULT_SPATIAL,
                    help="spatial layout (as in `larp tokenize`; crop would not give the whole frame back)")
    r.add_argument("--tile", dest="spatial", action="store_const", const="tile",
                   help="the same as --spatial tile")
    _add_overlap(r)
    _add_common(r)
    r.set_defaults(func=run_reconstruct)
