"""The work behind `larp generate`: videos of a class, or a long continuation by chained frame prediction,
from model folders (or hub ids) alone, with no dataset CSV and no FVD (that is `larp sample`)."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from larp.data.transforms import ClipTransform
from larp.data.video_io import probe_video, read_clip
from larp.data.video_write import write_mp4_streams
from larp.models.ar import LARPAR
from larp.models.tokenizer import LARPTokenizer
from larp.sample.condition import check_pair
from larp.sample.defaults import DEFAULT_CFG_SCALE, DEFAULT_COND_FRAMES
from larp.sample.generate import check_sampling_args, generate, in_dtype
from larp.sample.long import check_long_args, iter_long, plan_windows
from larp.utils.budget import DEFAULT_MAX_FRAMES, DEFAULT_MAX_MEMORY_MB, check_budget, check_memory
from larp.utils.device import resolve_device, resolve_dtype
from larp.utils.files import write_json
from larp.utils.outputs import exclusive_output


@dataclass
class GenerateConfig:
    tokenizer: str
    out: str
    ar_model: str | None = None  # class-conditional model
    fp_model: str | None = None  # frame-prediction model
    frame_prediction: bool = False
    class_id: int | None = None
    context: str | None = None  # a video to continue (frame prediction)
    num_videos: int = 1
    num_frames: int | None = None  # frame prediction: frames of the long video
    num_cond_frames: int = DEFAULT_COND_FRAMES
    cfg_scale: float = DEFAULT_CFG_SCALE
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    fps: float = 8.0
    device: str = "auto"
    dtype: str | None = None
    compile: bool = False
    overwrite: bool = False
    max_frames: int = DEFAULT_MAX_FRAMES  # budgets (larp.utils.budget), checked before any work
    max_memory_mb: int = DEFAULT_MAX_MEMORY_MB


def check_config(cfg: GenerateConfig) -> None:
    """Raise a ValueError naming the option that is missing or does not belong to the chosen mode."""
    if cfg.frame_prediction:
        if not cfg.fp_model:
            raise ValueError("--frame_prediction needs --fp_model (a frame-prediction AR model)")
        if cfg.num_frames is None:
            raise ValueError("--frame_prediction needs --num_frames (the length of the video to write)")
        if (cfg.context is None) == (cfg.ar_model is None):
            raise ValueError("--frame_prediction starts from --context VIDEO or from a class-conditional sample "
                             "(--ar_model and --class_id): give exactly one of --context and --ar_model")
    else:
        for name in ("fp_model", "context", "num_frames"):
            if getattr(cfg, name) is not None:
                raise ValueError(f"--{name} is for --frame_prediction; add it or leave --{name} out")
        if not cfg.ar_model:
            raise ValueError("class-conditional generation needs --ar_model (or add --frame_prediction)")
    if cfg.ar_model and cfg.class_id is None:
        raise ValueError("--ar_model samples a class: pass --class_id")
    if cfg.num_videos < 1:
        raise ValueError(f"--num_videos must be >= 1, got {cfg.num_videos}")
    check_sampling_args(cfg.cfg_scale, cfg.temperature, cfg.top_k, cfg.top_p)
    if not 0 < cfg.fps <= 1000:  # NaN fails the comparison
        raise ValueError(f"--fps must be in (0, 1000], got {cfg.fps}")
    if cfg.num_frames is not None:
        check_budget("--num_frames", cfg.num_frames, cfg.max_frames, "--max_frames")


def check_memory_budget(cfg: GenerateConfig, tokenizer: LARPTokenizer) -> None:
    """The decoded clips of one batch are held at once (float32; a long video a window and its context at a
    time, as it is written while it is made): refuse sizes over the memory budget before sampling."""
    _, t, h, w = tokenizer.video_shape
    frames = t + (cfg.num_cond_frames if cfg.frame_prediction else 0)
    check_memory(f"{cfg.num_videos} video(s) of {frames} frames of {w}x{h}",
                 cfg.num_videos * frames * 3 * h * w * 4, cfg.max_memory_mb)


def _load(cfg: GenerateConfig, device: torch.device) -> tuple[LARPTokenizer, LARPAR | None, LARPAR | None]:
    tok = LARPTokenizer.from_pretrained(cfg.tokenizer, map_location=device).eval()
    ar = fp = None
    if cfg.ar_model:
        ar = LARPAR.from_pretrained(cfg.ar_model, map_location=device).eval()
        if ar.config.frame_prediction:
            raise ValueError(f"--ar_model {cfg.ar_model} is a frame-prediction model; pass it as --fp_model")
        check_pair(tok, ar, f"(--ar_model {cfg.ar_model}, --tokenizer {cfg.tokenizer})")
        if not 0 <= cfg.class_id < ar.config.num_classes:
            raise ValueError(f"--class_id must be in [0, {ar.config.num_classes - 1}] for {cfg.ar_model}, "
                             f"got {cfg.class_id}")
    if cfg.fp_model:
        fp = LARPAR.from_pretrained(cfg.fp_model, map_location=device).eval()
        if not fp.config.frame_prediction:
            raise ValueError(f"--fp_model {cfg.fp_model} is a class-conditional model; pass it as --ar_model")
        check_pair(tok, fp, f"(--fp_model {cfg.fp_model}, --tokenizer {cfg.tokenizer})")
    return tok, ar, fp


def read_context(path: str | Path, tokenizer: LARPTokenizer) -> torch.Tensor:
    """The first T frames of a video (fewer if it is shorter), shorter side resized to the tokenizer's size
    and centre-cropped: (3, t, H, W) in [0, 1]."""
    _, t, h, w = tokenizer.video_shape
    if h != w:
        raise ValueError(f"the tokenizer takes {h}x{w} frames; --context supports square tokenizers only")
    n = min(t, probe_video(path).num_frames)
    if n < 1:
        raise ValueError(f"--context {path} has no frames")
    return ClipTransform(h, train=False)(read_clip(path, n, start=0))


def run_generate(cfg: GenerateConfig, progress: bool = True) -> dict[str, Any]:
    """Generate and write the videos; return the record also written to OUT/generate.json. One run writes
    into a folder at a time (a second one stops with an error naming the first)."""
    check_config(cfg)
    with exclusive_output(cfg.out, "generate"):
        return _run_generate(cfg, progress)


def _run_generate(cfg: GenerateConfig, progress: bool) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, allowed=("float32", "bfloat16"))
    out = Path(cfg.out)
    names = ([f"long_{i:03d}.mp4" for i in range(cfg.num_videos)] if cfg.frame_prediction
             else [f"class{cfg.class_id}_{i:03d}.mp4" for i in range(cfg.num_videos)])
    existing = [n for n in names if (out / n).exists()]
    if existing and not cfg.overwrite:
        raise ValueError(f"{out / existing[0]} exists already; pass --overwrite to replace it")
    tok, ar, fp = _load(cfg, device)
    check_memory_budget(cfg, tok)
    low = None if dtype == torch.float32 else dtype
    # Cast once (not per call and window): a compiled step then keeps the same weights from call to call.
    ar, fp = (None if m is None else in_dtype(m, low) for m in (ar, fp))
    t0 = time.perf_counter()
    g = torch.Generator(device).manual_seed(cfg.seed)
    options = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=g,
                   compile=cfg.compile)

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr)

    start = None
    if ar is not None:
        cond = torch.full((cfg.num_videos,), cfg.class_id, dtype=torch.long, device=device)
        say(f"sampling {cfg.num_videos} clip(s) of class {cfg.class_id} ({ar.num_tokens} tokens each)")
        tokens = generate(ar, cond, cfg_scale=cfg.cfg_scale, cfg_interval=cfg.cfg_interval, **options)
        with torch.no_grad():
            start = tok.decode(tokens).clamp(0, 1).float()
    record: dict[str, Any] = {"config": asdict(cfg), "videos": []}
    if cfg.frame_prediction:
        if start is None:
            start = read_context(cfg.context, tok)[None].to(device).expand(cfg.num_videos, -1, -1, -1, -1)
        check_long_args(fp, tok, start.shape[2], cfg.num_frames, cfg.num_cond_frames)

        def on_window(i: int, total: int) -> None:
            say(f"window {i + 1}/{total}: {fp.num_tokens} tokens from the last {cfg.num_cond_frames} frames")

        chunks = iter_long(fp, tok, start, cfg.num_frames, context_frames=cfg.num_cond_frames,
                           on_window=on_window, **options)
        record["start_frames"] = start.shape[2]
        record["windows"] = len(plan_windows(start.shape[2], cfg.num_frames, tok.video_shape[1], cfg.num_cond_frames))
    else:
        chunks = iter([start])
    out.mkdir(parents=True, exist_ok=True)
    frames = write_mp4_streams([out / name for name in names], chunks, cfg.fps)  # written as they are made
    record["videos"] = [{"file": name, "frames": frames} for name in names]
    record["seconds"] = time.perf_counter() - t0
    write_json(out / "generate.json", record)
    return record
