"""How a whole video maps onto a tokenizer's T-frame S×S clips: time windows, spatial tiles, the layout of
a video, and blending overlapping tiles back (see `larp.videos.tokens` for the three spatial modes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from larp.data.transforms import short_side_size
from larp.data.video_io import MAX_FRAME_SIDE
from larp.videos.defaults import DEFAULT_SPATIAL, SPATIAL_MODES

MAX_TILES = 65_536  # tiles per window (8K frames in 128-pixel tiles take about 7,000)


def plan_windows(num_frames: int, frames_per_window: int) -> list[tuple[int, int]]:
    """Consecutive windows covering `num_frames` frames: (start, number of real frames) each."""
    if frames_per_window < 1:
        raise ValueError(f"frames_per_window must be >= 1, got {frames_per_window}")
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    return [(s, min(frames_per_window, num_frames - s)) for s in range(0, num_frames, frames_per_window)]


def plan_tiles(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length), neighbours overlapping by >= `overlap`.

    The first tile starts at 0, the last ends at `length`, the others are spread evenly between them.
    A length up to `tile` gets one tile at 0 (the caller pads the frame to the tile's size)."""
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, {tile}) for tiles of {tile}, got {overlap}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if length <= tile:
        return [0]
    span = length - tile
    n = -(-span // (tile - overlap)) + 1  # fewest tiles whose steps are at most tile - overlap
    return [(i * span + (n - 1) // 2) // (n - 1) for i in range(n)]


def tile_weights(size: int, ramp: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1-D blending weights (size,): a linear ramp over `ramp` pixels at each end, 1 in the middle.

    Every weight is > 0, so a pixel that only one tile covers keeps that tile's value."""
    i = torch.arange(size, device=device, dtype=dtype)
    ramp_w = torch.minimum(i + 1, size - i) / (ramp + 1)
    return ramp_w.clamp(max=1.0)


def blend_tiles(tiles: torch.Tensor, positions: Sequence[tuple[int, int]], size: tuple[int, int],
                overlap: int | tuple[int, int]) -> torch.Tensor:
    """Overlapping tiles (n, ..., th, tw) placed at `positions` (top, left) -> an image (..., H, W).

    Each pixel is the weighted mean of the tiles covering it (weights from `tile_weights` with ramp
    `overlap`, per axis). Tiles may hang over the output's border (they are clipped); every output pixel
    must be covered by at least one tile."""
    if tiles.ndim < 3 or len(positions) != tiles.shape[0]:
        raise ValueError(f"expected tiles (n, ..., th, tw) and n positions, got tiles {tuple(tiles.shape)} "
                         f"and {len(positions)} positions")
    height, width = size
    th, tw = tiles.shape[-2:]
    oy, ox = (overlap, overlap) if isinstance(overlap, int) else overlap
    # Accumulate in float64 so that tiles that agree give back their values bit for bit (not on MPS).
    acc = torch.float32 if tiles.device.type == "mps" else torch.float64
    weight = tile_weights(th, oy, tiles.device, acc)[:, None] * tile_weights(tw, ox, tiles.device, acc)
    out = torch.zeros((*tiles.shape[1:-2], height, width), dtype=acc, device=tiles.device)
    total = torch.zeros((height, width), dtype=acc, device=tiles.device)
    for tile, (top, left) in zip(tiles, positions, strict=True):
        t0, l0, t1, l1 = max(top, 0), max(left, 0), min(top + th, height), min(left + tw, width)
        if t1 <= t0 or l1 <= l0:
            continue
        w = weight[t0 - top : t1 - top, l0 - left : l1 - left]
        out[..., t0:t1, l0:l1] += tile[..., t0 - top : t1 - top, l0 - left : l1 - left].to(acc) * w
        total[t0:t1, l0:l1] += w
    if bool((total == 0).any()):
        raise ValueError(f"the tiles leave pixels of the {height}x{width} output uncovered")
    return (out / total).to(tiles.dtype if tiles.is_floating_point() else torch.float32)


@dataclass(frozen=True)
class SpatialLayout:
    """Where a frame's clips come from: resize, then S×S tiles at `tiles` (top, left) in the resized frame
    padded to at least S×S; the output covers `crop_box` (top, left, height, width) of the resized frame."""

    spatial: str
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    tiles: tuple[tuple[int, int], ...]
    overlap: int

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of decoded frames: the crop box scaled back to the original resolution."""
        (h, w), (rh, rw), (_, _, ch, cw) = self.original_size, self.resized_size, self.crop_box
        return round(ch * h / rh), round(cw * w / rw)


def plan_layout(height: int, width: int, size: int, spatial: str = DEFAULT_SPATIAL,
                overlap: int | None = None) -> SpatialLayout:
    """The layout of `spatial` ("crop", "cover" or "tile", see the module doc) for frames of height×width
    and a model taking size×size; `overlap` in pixels between tiles (default size // 4)."""
    if spatial not in SPATIAL_MODES:
        raise ValueError(f"spatial must be one of {', '.join(SPATIAL_MODES)}, got {spatial!r}")
    if height < 1 or width < 1 or max(height, width) > MAX_FRAME_SIDE:
        raise ValueError(f"frames must be between 1x1 and {MAX_FRAME_SIDE}x{MAX_FRAME_SIDE}, got {height}x{width}")
    if spatial == "crop":
        if overlap:
            raise ValueError(f"overlap applies to the cover and tile layouts, not crop (got {overlap})")
        rh, rw = short_side_size(height, width, size)
        top, left = (rh - size) // 2, (rw - size) // 2
        return SpatialLayout("crop", (height, width), (rh, rw), (top, left, size, size), ((top, left),), 0)
    overlap = size // 4 if overlap is None else overlap
    rh, rw = short_side_size(height, width, size) if spatial == "cover" else (height, width)
    tops, lefts = plan_tiles(rh, size, overlap), plan_tiles(rw, size, overlap)
    if len(tops) * len(lefts) > MAX_TILES:
        raise ValueError(f"{height}x{width} frames would take {len(tops) * len(lefts):,} tiles of {size}x{size} "
                         f"per window, more than {MAX_TILES:,}")
    tiles = tuple((t, left) for t in tops for left in lefts)
    return SpatialLayout(spatial, (height, width), (rh, rw), (0, 0, rh, rw), tiles, overlap)
