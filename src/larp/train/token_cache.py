"""Token cache: a dataset encoded once by a frozen tokenizer, so AR training never re-encodes clips.

Layout of a cache folder:
    meta.json                 what was encoded and how (tokenizer, clip windows, flips, shards)
    shard_00000.safetensors   tokens (M, N) int32, labels (M,), video (M,), start (M,), flip (M,) bool,
                              and for frame prediction cond (M, N) int32: tokens of the padded context
Every entry is one clip window of one video, optionally horizontally flipped. The window starts are drawn
from a seed per (video, window), so `clip_for_entry` recovers exactly the clip an entry encodes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from larp.data.datasets import VideoClipDataset
from larp.data.transforms import ClipTransform
from larp.data.video_io import VideoReadError, probe_video, read_clip
from larp.models.tokenizer import LARPTokenizer
from larp.sample.condition import pad_context
from larp.utils.files import write_safetensors

META = "meta.json"
log = logging.getLogger(__name__)


@dataclass
class CacheMeta:
    tokenizer: str
    num_tokens: int
    codebook_size: int
    num_frames: int
    size: int
    windows_per_video: int
    flip: bool
    seed: int
    source: str
    fp_context_frames: int  # 0 = no frame-prediction condition stored
    num_entries: int = 0
    shards: tuple[str, ...] = ()
    skipped_videos: tuple[str, ...] = ()
    tokenizer_sha256: str = ""  # of the tokenizer's weights (`tokenizer_fingerprint`); "" in older caches


def tokenizer_fingerprint(tokenizer: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (names, types, shapes and values): the same for every copy of the same
    model, wherever it is stored or loaded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tokenizer.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def check_cache_tokenizer(meta: CacheMeta, tokenizer: torch.nn.Module, folder: str | os.PathLike,
                          tokenizer_name: str = "tokenizer.path") -> None:
    """Refuse a token cache that another tokenizer made: its codes would mean nothing to this one's decoder.
    A cache from before fingerprints were recorded is accepted with a warning."""
    if not meta.tokenizer_sha256:
        log.warning("token cache %s does not record which tokenizer weights made it (an older cache); it is "
                    "assumed to come from %s", folder, tokenizer_name)
        return
    found = tokenizer_fingerprint(tokenizer)
    if found != meta.tokenizer_sha256:
        raise ValueError(f"token cache {folder} was made by another tokenizer ({meta.tokenizer}, weights "
                         f"sha256 {meta.tokenizer_sha256[:12]}...) than {tokenizer_name} (weights sha256 "
                         f"{found[:12]}...); rebuild it with `larp tokenize-dataset --tokenizer` that tokenizer, "
                         "or use the tokenizer that made it")


def window_start(num_video_frames: int, clip_frames: int, seed: int, video: int, window: int) -> int:
    """The seeded start frame of window `window` of video `video` (0 when the video is short)."""
    last = max(num_video_frames - clip_frames, 0)
    return int(np.random.default_rng([seed, video, window]).integers(0, last + 1))


def clip_for_entry(dataset: VideoClipDataset, video: int, start: int, flip: bool) -> torch.Tensor:
    """The (3, T, H, W) clip a cache entry encodes: read at `start`, centre-cropped, maybe flipped."""
    row = dataset.rows[video]
    frames = read_clip(row.path, dataset.num_frames, start)
    clip = ClipTransform(dataset.size, train=False)(frames)  # deterministic resize + centre crop
    return clip.flip(-1) if flip else clip


@torch.no_grad()
def build_token_cache(
    tokenizer: LARPTokenizer,
    dataset: VideoClipDataset,
    out_dir: str | os.PathLike,
    *,
    tokenizer_id: str,
    windows_per_video: int = 1,
    flip: bool = True,
    seed: int = 0,
    fp_context_frames: int = 0,
    batch_size: int = 8,
    shard_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CacheMeta:
    """Encode up to `windows_per_video` seeded windows of every video (and their mirror images when `flip`);
    windows that fall on the same start are encoded once, so a video of T frames or fewer gives one."""
    c, t, h, w = tokenizer.video_shape
    if (dataset.num_frames, dataset.size) != (t, h):
        raise ValueError(
            f"the dataset gives {dataset.num_frames}x{dataset.size}x{dataset.size} clips but the "
            f"tokenizer takes {t}x{h}x{w}"
        )
    if not 0 <= fp_context_frames < t:
        raise ValueError(f"fp_context_frames must be in [0, {t}), got {fp_context_frames}")
    out = Path(out_dir)
    if (out / META).exists():
        raise FileExistsError(f"{out} already holds a token cache; choose another folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer.eval().to(device)
    meta = CacheMeta(
        tokenizer=tokenizer_id,
        num_tokens=tokenizer.num_tokens,
        codebook_size=tokenizer.codebook_size,
        num_frames=t,
        size=h,
        windows_per_video=windows_per_video,
        flip=flip,
        seed=seed,
        source=str(getattr(dataset, "csv_path", "")),
        fp_context_frames=fp_context_frames,
        tokenizer_sha256=tokenizer_fingerprint(tokenizer),
    )
    buffer: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("tokens", "labels", "video", "start", "flip", "cond")
    }
    shards: list[str] = []
    skipped: list[str] = []

    def flush() -> None:
        if not buffer["tokens"]:
            return
        name = f"shard_{len(shards):05d}.safetensors"
        tensors = {k: torch.cat(v) for k, v in buffer.items() if v}
        write_safetensors(out / name, tensors)
        shards.append(name)
        for v in buffer.values():
            v.clear()

    def encode(pending: list[tuple[int, int, bool, torch.Tensor]]) -> None:
        clips = torch.stack([p[3] for p in pending]).to(device)
        buffer["tokens"].append(tokenizer.encode(clips, deterministic=True).to(torch.int32).cpu())
        if fp_context_frames:
            cond = tokenizer.encode(pad_context(clips, fp_context_frames), deterministic=True)
            buffer["cond"].append(cond.to(torch.int32).cpu())
        buffer["labels"].append(torch.tensor([dataset.rows[p[0]].label for p in pending]))
        buffer["video"].append(torch.tensor([p[0] for p in pending]))
        buffer["start"].append(torch.tensor([p[1] for p in pending]))
        buffer["flip"].append(torch.tensor([p[2] for p in pending]))
        meta.num_entries += len(pending)
        if sum(len(x) for x in buffer["tokens"]) >= shard_size:
            flush()

    pending: list[tuple[int, int, bool, torch.Tensor]] = []
    for vi in tqdm(range(len(dataset)), desc="tokenize", unit="video", disable=not progress):
        row = dataset.rows[vi]
        try:
            n = probe_video(row.path).num_frames
            # Distinct windows only: a video of T frames has one, and repeats would just weight it more.
            starts = dict.fromkeys(window_start(n, t, seed, vi, wi) for wi in range(windows_per_video))
            for start in starts:
                clip = clip_for_entry(dataset, vi, start, False)
                pending.append((vi, start, False, clip))
                if flip:
                    pending.append((vi, start, True, clip.flip(-1)))
        except VideoReadError as exc:  # reported in meta.json, never silently dropped
            skipped.append(f"{row.path}: {exc}")
            continue
        while len(pending) >= batch_size:
            encode(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        encode(pending)
    flush()
    meta.shards, meta.skipped_videos = tuple(shards), tuple(skipped)
    tmp = out / (META + ".tmp")
    tmp.write_text(json.dumps(asdict(meta), indent=2))
    os.replace(tmp, out / META)  # the cache exists only once it is complete
    return meta


def read_cache_meta(folder: str | os.PathLike) -> CacheMeta:
    file = Path(folder) / META
    if not file.is_file():
        raise FileNotFoundError(
            f"{folder} is not a token cache (no {META}); build one with `larp tokenize-dataset`"
        )
    data = json.loads(file.read_text())
    data["shards"] = tuple(data["shards"])
    data["skipped_videos"] = tuple(data["skipped_videos"])
    return CacheMeta(**data)


class TokenCacheDataset(Dataset):
    """Entries of a token cache: {"tokens": (N,) int64, "label": int, ["cond": (N,) int64]}."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta = read_cache_meta(folder)
        parts = [load_file(str(self.folder / s)) for s in self.meta.shards]
        if not parts:
            raise ValueError(f"token cache {folder} holds no entries")
        self.tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if len(self.tensors["tokens"]) != self.meta.num_entries:
            raise ValueError(
                f"token cache {folder}: meta.json says {self.meta.num_entries} entries, the shards "
                f"hold {len(self.tensors['tokens'])}"
            )

    def __len__(self) -> int:
        return len(self.tensors["tokens"])

    @property
    def num_videos(self) -> int:
        """The distinct videos the entries come from (their windows and mirror images counted once): what an
        epoch of the reference's training covers, one clip per video."""
        return int(torch.unique(self.tensors["video"]).numel())

    def load(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "tokens": self.tensors["tokens"][index].long(),
            "label": int(self.tensors["labels"][index]),
        }
        if "cond" in self.tensors:
            item["cond"] = self.tensors["cond"][index].long()
        return item

    __getitem__ = load

    def entries(self) -> Iterator[tuple[int, int, bool]]:
        """(video, start, flip) of every entry, to recover its clip with `clip_for_entry`."""
        t = self.tensors
        for v, s, f in zip(t["video"].tolist(), t["start"].tolist(), t["flip"].tolist(), strict=True):
            yield v, s, bool(f)
