"""What the app's page does, without the page: load the models, reconstruct an uploaded video, generate clips
of a class, continue a clip with a frame-prediction model. Each call writes its files into a folder the
caller gives and returns them with the figures to show.

Bad input (a file that is not a video, a clip too short, a class out of range, ...) raises a ValueError or a
`LarpError` whose one-line message is meant for the page. `progress(fraction, text)` callbacks report long
work."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from larp.data.synthetic import MAX_CLASSES, clip_attributes, synthetic_classes, synthetic_clip
from larp.data.transforms import center_crop, pad_frames, resize_short_side
from larp.data.video_io import MP4Writer, probe_video, read_clip, read_video, to_tensor, to_uint8, write_mp4
from larp.models.ar import LARPAR
from larp.models.tokenizer import LARPTokenizer
from larp.sample import frame_prediction_condition, generate
from larp.sample.condition import check_pair
from larp.sample.defaults import DEFAULT_CFG_SCALE
from larp.utils.errors import CheckpointError, one_line
from larp.videos.tokens import DEFAULT_FPS, PSNRMeter, VideoTokens, iter_decode, tokenize_video

Progress = Callable[[float, str], None]

DEMO_DIR = Path("runs/demo")
MAX_FRAMES = 128  # frames of an upload that are used (the first ones): keeps a request to seconds on a CPU
MAX_PIXELS = 1920 * 1080  # larger frames are refused before decoding
MAX_SAMPLES = 8
DISPLAY_HEIGHT = 256  # small clips are shown enlarged (nearest neighbour, whole factors) to this height
GAP = 2  # pixels between clips shown side by side
BATCH = 4  # clips per forward pass
CLASS_NAME_MODES = ("auto", "synthetic", "index")


def _no_progress(fraction: float, text: str) -> None:
    pass


def demo_model_paths(demo: str | Path = DEMO_DIR) -> tuple[Path, Path]:
    """Where `larp demo --out DEMO` leaves its tokenizer and its class-conditional AR model."""
    return Path(demo) / "tokenizer" / "model", Path(demo) / "ar" / "model"


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class SamplingSettings:
    """The Generate tab's starting guidance and temperature: a demo model's own settings (`larp demo` measured
    them on its models), else the library's defaults."""

    cfg_scale: float = DEFAULT_CFG_SCALE
    temperature: float = 1.0


@dataclass
class AppModels:
    """The models the page uses: a tokenizer, and optionally a class-conditional and a frame-prediction model."""

    tokenizer: LARPTokenizer
    tokenizer_id: str
    ar: LARPAR | None = None
    ar_id: str = ""
    fp: LARPAR | None = None
    fp_id: str = ""
    class_names: tuple[str, ...] = ()
    synthetic: bool = False  # the class names are the synthetic set's: its analytic classifier applies
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    @property
    def device(self) -> torch.device:
        param = next(self.tokenizer.parameters(), None)
        return param.device if param is not None else torch.device("cpu")


def _check_fit(tokenizer: LARPTokenizer, ar: LARPAR, name: str, frame_prediction: bool) -> None:
    a = ar.config
    if a.frame_prediction != frame_prediction:
        kind = "frame-prediction" if a.frame_prediction else "class-conditional"
        want = "--fp_model" if a.frame_prediction else "--ar_model"
        raise CheckpointError(f"{name} is a {kind} model; pass it with {want}")
    check_pair(tokenizer, ar, f"({name})")


def _demo_state(model_id: str) -> Path | None:
    """`<demo>/demo.json` for a model folder `<demo>/ar/model` of a `larp demo` run, else None."""
    path = Path(model_id)
    if not path.is_dir() or len(path.resolve().parents) < 2:
        return None
    state = path.resolve().parents[1] / "demo.json"
    return state if state.is_file() else None


def sampling_settings(model_id: str) -> SamplingSettings:
    """The guidance and temperature `larp demo` sampled with, for a model inside a demo folder (read from its
    demo.json); the library's defaults for any other model."""
    state = _demo_state(model_id)
    if state is None:
        return SamplingSettings()
    try:
        config = json.loads(state.read_text())["config"]
        return SamplingSettings(float(config["cfg_scale"]), float(config["temperature"]))
    except (ValueError, KeyError, TypeError) as exc:
        found = f"no key {exc}" if isinstance(exc, KeyError) else one_line(exc)
        raise ValueError(f"{state} should hold the demo's sampling settings (config.cfg_scale and "
                         f"config.temperature); found {found}") from exc


def class_names(num_classes: int, mode: str = "index", model_id: str = "") -> tuple[tuple[str, ...], bool]:
    """(names of the classes, whether they are the synthetic set's).

    mode: "synthetic" (the built-in synthetic set's names, e.g. red_square_horizontal), "index" ("class 0",
    ...), "auto" (synthetic for a model inside a `larp demo` folder, else index), or a text file with one
    name per line."""
    if mode == "auto":
        mode = "synthetic" if _demo_state(model_id) is not None and num_classes <= MAX_CLASSES else "index"
    if mode == "synthetic":
        return tuple(c.name for c in synthetic_classes(num_classes)), True
    if mode == "index":
        return tuple(f"class {k}" for k in range(num_classes)), False
    path = Path(mode)
    if not path.is_file():
        raise ValueError(f"class names must be one of {', '.join(CLASS_NAME_MODES)} or a text file with one name "
                         f"per line; {mode!r} is none of them")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) != num_classes:
        raise ValueError(f"{path} holds {len(names)} class names; the model has {num_classes} classes")
    return names, False


def load_models(tokenizer: str | Path, ar_model: str | Path | None = None, fp_model: str | Path | None = None, *,
                device: torch.device | str = "cpu", names: str = "auto") -> AppModels:
    """Load the tokenizer and the generators (local folders or hub ids) and check that they fit together."""
    tok = LARPTokenizer.from_pretrained(str(tokenizer), map_location=device)
    models = AppModels(tokenizer=tok, tokenizer_id=str(tokenizer))
    if ar_model:
        models.ar, models.ar_id = LARPAR.from_pretrained(str(ar_model), map_location=device), str(ar_model)
        _check_fit(tok, models.ar, str(ar_model), frame_prediction=False)
        models.class_names, models.synthetic = class_names(models.ar.config.num_classes, names, str(ar_model))
        models.sampling = sampling_settings(str(ar_model))
    if fp_model:
        models.fp, models.fp_id = LARPAR.from_pretrained(str(fp_model), map_location=device), str(fp_model)
        _check_fit(tok, models.fp, str(fp_model), frame_prediction=True)
    return models


# ---------------------------------------------------------------------------------------------- videos


def read_upload(path: str | Path | None, max_frames: int = MAX_FRAMES,
                max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, float, int]:
    """(uint8 frames (T, H, W, 3) of at most `max_frames` first frames, frame rate, frames in the file)."""
    if not path:
        raise ValueError("no video given: upload one (or pick a demo clip) first")
    info = probe_video(path)
    if info.width * info.height > max_pixels:
        raise ValueError(f"the video's frames are {info.width}x{info.height}; this page takes frames of at most "
                         f"{max_pixels:,} pixels (1920x1080): scale it down first")
    if info.num_frames > max_frames:
        frames = read_clip(path, max_frames, start=0)
    else:
        frames, _ = read_video(path)
    return frames, info.fps if info.fps > 0 else DEFAULT_FPS, max(info.num_frames, len(frames))


def write_side_by_side(path: Path, clips: Sequence[np.ndarray], fps: float, height: int = DISPLAY_HEIGHT) -> Path:
    """Clips uint8 (T, H, W, 3) of one size, left to right with 2-pixel gaps, as an mp4 for the page; small
    clips enlarged by a whole factor (nearest neighbour) up to `height`. Written frame by frame: a long
    upload is never held twice in memory."""
    t, h, w, _ = clips[0].shape
    factor = max(1, height // h)
    gap = np.zeros((h * factor, GAP, 3), np.uint8)
    with MP4Writer(path, fps) as writer:
        for i in range(t):
            parts = [c[i].repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else c[i] for c in clips]
            writer.write(np.concatenate([x for part in parts for x in (part, gap)][:-1], axis=1))
    return path


def bits_per_pixel(tokens: VideoTokens) -> float:
    """Bits of the token file's codes per pixel of the video: tokens x log2(codebook size) / (T x H x W)."""
    h, w = tokens.layout.original_size
    return tokens.tokens.size * math.log2(tokens.codebook_size) / (tokens.num_frames * h * w)


def tokenize_with_progress(tokenizer: LARPTokenizer, frames: np.ndarray, *, spatial: str = "cover",
                           fps: float | None = None, tokenizer_id: str = "",
                           progress: Progress = _no_progress) -> VideoTokens:
    """`tokenize_video` of the whole video, run a few windows at a time to report progress.

    Windows are tokenized independently and a slice of BATCH windows makes whole batches, so the tokens
    are those of one `tokenize_video` call."""
    t = tokenizer.video_shape[1]
    step = t * BATCH
    parts = []
    for start in range(0, len(frames), step):
        progress(start / len(frames), f"tokenizing frames {start + 1}-{min(start + step, len(frames))}")
        parts.append(tokenize_video(tokenizer, frames[start : start + step], spatial=spatial, batch_size=BATCH))
    first = parts[0]
    return VideoTokens(tokens=np.concatenate([p.tokens for p in parts]), tokenizer=tokenizer_id,
                       frames_per_window=t, frame_size=first.frame_size, codebook_size=first.codebook_size,
                       num_frames=len(frames), fps=fps, layout=first.layout)


@dataclass
class Reconstruction:
    video: Path  # the original (left) and its reconstruction (right), side by side
    tokens_file: Path  # the .npz token file (`larp decode` reads it)
    psnr: float  # dB, against the decoded upload
    num_tokens: int
    bits_per_pixel: float
    num_frames: int  # frames used
    total_frames: int  # frames in the file
    size: tuple[int, int]  # (H, W)
    fps: float
    windows: int
    tiles: int
    seconds: float

    def summary(self) -> str:
        h, w = self.size
        used = (f"{self.num_frames} frames" if self.num_frames == self.total_frames
                else f"the first {self.num_frames} of {self.total_frames} frames")
        return (f"PSNR: {self.psnr:.2f} dB · {self.num_tokens:,} tokens · {self.bits_per_pixel:.4f} bits per pixel "
                f"· {used} of {w}x{h} at {self.fps:g} fps · {self.windows} windows x {self.tiles} tiles "
                f"· {self.seconds:.1f} s")


def reconstruct(models: AppModels, video: str | Path | None, out_dir: Path, *, tile: bool = False,
                max_frames: int = MAX_FRAMES, progress: Progress = _no_progress) -> Reconstruction:
    """Tokenize and decode an uploaded video (the whole frame: layout "cover", or "tile" at native size)."""
    t0 = time.perf_counter()
    progress(0.0, "reading the video")
    frames, fps, total = read_upload(video, max_frames)
    tok = models.tokenizer
    tokens = tokenize_with_progress(tok, frames, spatial="tile" if tile else "cover", fps=fps,
                                    tokenizer_id=models.tokenizer_id,
                                    progress=lambda f, text: progress(0.5 * f, text))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(str(video)).stem or "video"
    tokens_file = tokens.save(out_dir / f"{name}_tokens.npz")
    meter, chunks = PSNRMeter(), []
    for i, ((start, real), chunk) in enumerate(zip(tokens.windows, iter_decode(tok, tokens, batch_size=BATCH),
                                                   strict=True)):
        progress(0.5 + 0.45 * i / tokens.num_windows, f"decoding window {i + 1} of {tokens.num_windows}")
        meter.update(to_tensor(frames[start : start + real]), chunk)
        chunks.append(to_uint8(chunk))  # uint8 at once: a float copy of a long video would be 4x larger
    progress(0.95, "writing the video")
    path = write_side_by_side(out_dir / f"{name}_reconstruction.mp4", [frames, np.concatenate(chunks)], fps)
    return Reconstruction(video=path, tokens_file=tokens_file, psnr=meter.value, num_tokens=int(tokens.tokens.size),
                          bits_per_pixel=bits_per_pixel(tokens), num_frames=len(frames), total_frames=total,
                          size=tuple(frames.shape[1:3]), fps=fps, windows=tokens.num_windows, tiles=tokens.num_tiles,
                          seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ generation


def _generator(seed: float | int | None, device: torch.device) -> torch.Generator:
    try:
        whole = int(seed) if seed is not None and float(seed) == int(seed) else None
    except (TypeError, ValueError, OverflowError):  # text, NaN, infinity
        whole = None
    if whole is None or not 0 <= whole < 2**63:
        raise ValueError(f"the seed must be a whole number >= 0, got {seed}")
    return torch.Generator(device=device).manual_seed(whole)


def synthetic_verdict(video: torch.Tensor, num_classes: int) -> str:
    """What the synthetic set's analytic classifier reads in a clip, by the demo report's strict rule: the
    class whose colour, shape and motion all match, else what was read ("red blob rising: no class"), or
    "no object"."""
    colour, shape, motion = clip_attributes(video)
    if colour is None:
        return "no object"
    for spec in synthetic_classes(num_classes):
        if (spec.colour, spec.shape, spec.motion) == (colour, shape, motion):
            return spec.name
    read = " ".join(part or "?" for part in (colour, shape, motion))
    return f"{read}: no class"


@dataclass
class Samples:
    video: Path  # the samples side by side
    tokens: torch.Tensor  # (count, N) the sampled tokens
    count: int
    class_name: str
    classified_as: tuple[str, ...] | None  # the synthetic set's analytic classifier's verdict per sample
    seconds: float

    def summary(self) -> str:
        text = f"{self.count} sample{'s' if self.count > 1 else ''} of {self.class_name} in {self.seconds:.1f} s"
        if self.classified_as is not None:
            right = sum(c == self.class_name for c in self.classified_as)
            text += (f" · strictly right (colour, shape and motion, as the demo's report counts) {right} of "
                     f"{len(self.classified_as)}: {', '.join(self.classified_as)}")
        return text


def generate_clips(models: AppModels, class_index: int, out_dir: Path, *, cfg_scale: float | None = None,
                   temperature: float | None = None, seed: int = 0, num_samples: int = 1,
                   progress: Progress = _no_progress) -> Samples:
    """Sample `num_samples` clips of a class with the class-conditional model and decode them; guidance and
    temperature default to `models.sampling`."""
    if models.ar is None:
        raise ValueError("no class-conditional model is loaded: start `larp app` with --ar_model")
    ar, device = models.ar, models.device
    guided = ar.config.has_null_class  # a model trained without a null class has no guidance
    if cfg_scale is None:
        cfg_scale = models.sampling.cfg_scale if guided else 1.0
    temperature = models.sampling.temperature if temperature is None else temperature
    if not 0 <= class_index < ar.config.num_classes:
        raise ValueError(f"the class must lie in 0..{ar.config.num_classes - 1}, got {class_index}")
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"the number of samples must lie in 1..{MAX_SAMPLES}, got {num_samples}")
    if cfg_scale != 1.0 and not guided:
        raise ValueError("this model was trained without a null class, so it has no guidance: set guidance to 1")
    t0 = time.perf_counter()
    g = _generator(seed, device)
    progress(0.05, f"sampling {ar.num_tokens} tokens per clip")
    cond = torch.full((num_samples,), class_index, dtype=torch.long, device=device)
    tokens = generate(ar, cond, cfg_scale=cfg_scale, temperature=temperature, generator=g)
    progress(0.7, "decoding")
    with torch.no_grad():
        videos = models.tokenizer.decode(tokens).clamp(0, 1).float().cpu()
    verdict = tuple(synthetic_verdict(v, len(models.class_names)) for v in videos) if models.synthetic else None
    progress(0.9, "writing the video")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_side_by_side(out_dir / f"class{class_index}_seed{int(seed)}.mp4", list(to_uint8(videos)),
                              DEFAULT_FPS)
    return Samples(video=path, tokens=tokens.cpu(), count=num_samples, class_name=models.class_names[class_index],
                   classified_as=verdict, seconds=time.perf_counter() - t0)


@dataclass
class Continuation:
    video: Path  # the uploaded clip's first T frames (left) and the model's clip (right)
    tokens: torch.Tensor  # (1, N) the sampled tokens
    context_frames: int
    frames: int
    seconds: float

    def summary(self) -> str:
        return (f"frames 1-{self.context_frames} of the upload condition the model; it predicts the clip of "
                f"{self.frames} frames (right) · {self.seconds:.1f} s")


def continue_clip(models: AppModels, video: str | Path | None, out_dir: Path, *, context_frames: int = 5,
                  temperature: float = 1.0, seed: int = 0, progress: Progress = _no_progress) -> Continuation:
    """Predict a clip from the first `context_frames` frames of an upload (shorter side resized to the model's
    size, centre crop), with the frame-prediction model."""
    if models.fp is None:
        raise ValueError("no frame-prediction model is loaded: start `larp app` with --fp_model")
    tok, device = models.tokenizer, models.device
    _, t, size, _ = tok.video_shape
    if not 1 <= context_frames < t:
        raise ValueError(f"the context must be 1 to {t - 1} frames for this {t}-frame model, got {context_frames}")
    t0 = time.perf_counter()
    progress(0.0, "reading the clip")
    frames, fps, _ = read_upload(video, max_frames=t)
    if len(frames) < context_frames:
        raise ValueError(f"the clip has {len(frames)} frame(s); the context needs {context_frames}")
    clip = center_crop(resize_short_side(to_tensor(frames), size), size)  # (3, n, S, S)
    g = _generator(seed, device)
    progress(0.1, "tokenizing the context")
    with torch.no_grad():
        cond = frame_prediction_condition(tok, clip[None, :, :context_frames].to(device))
    progress(0.2, f"sampling {models.fp.num_tokens} tokens")
    tokens = generate(models.fp, cond, temperature=temperature, generator=g)
    progress(0.8, "decoding")
    with torch.no_grad():
        predicted = tok.decode(tokens).clamp(0, 1).float().cpu()[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    real = pad_frames(clip, t)
    path = write_side_by_side(out_dir / f"{Path(str(video)).stem or 'clip'}_continued.mp4",
                              [to_uint8(real), to_uint8(predicted)], fps)
    return Continuation(video=path, tokens=tokens.cpu(), context_frames=context_frames, frames=t, seconds=time.perf_counter() - t0)


# -------------------------------------------------------------------------------------------- examples


def demo_clips(models: AppModels, out_dir: Path, count: int = 3, seed: int = 0) -> list[Path]:
    """A few clips of the synthetic set at the tokenizer's size (two windows long), to try the page with."""
    _, t, size, _ = models.tokenizer.video_shape
    rng = np.random.default_rng(seed)
    names = synthetic_classes(count)
    return [write_mp4(out_dir / f"{c.name}.mp4", synthetic_clip(c.index, rng, frames=2 * t, size=size))
            for c in names]
