"""Tiny real video files for the data tests, each frame stamped with its index in a lossy-safe code."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

BITS = 9  # frame indices up to 511
BLOCK = 8  # each bit is an 8x8 black or white block: survives H.264/MPEG-4 compression


class VideoFactory:
    """Writes test videos under a folder; `ids` reads the frame indices back from decoded frames."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def index_frames(n: int, height: int = 32, width: int = 80) -> np.ndarray:
        """uint8 (n, H, W, 3): grey frames with the frame index in binary along the top row of blocks."""
        assert width >= BITS * BLOCK and height >= BLOCK
        frames = np.full((n, height, width, 3), 128, np.uint8)
        for t in range(n):
            for b in range(BITS):
                frames[t, :BLOCK, b * BLOCK : (b + 1) * BLOCK] = 255 if (t >> b) & 1 else 0
        return frames

    @staticmethod
    def ids(frames: np.ndarray) -> list[int]:
        """Frame indices stamped by `index_frames`, read from block centres of uint8 (T, H, W, 3)."""
        c = BLOCK // 2
        bits = frames[:, c, c::BLOCK, :].mean(axis=-1)[:, :BITS] > 128
        return [int(sum(1 << b for b in range(BITS) if row[b])) for row in bits]

    def write(
        self,
        name: str,
        frames: np.ndarray,
        *,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        fps: int = 25,
        options: dict[str, str] | None = None,
        container_options: dict[str, str] | None = None,
    ) -> Path:
        """Encode RGB uint8 frames (T, H, W, 3) with any PyAV codec into a file named `name`."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w", options=container_options or {}) as container:
            stream = container.add_stream(codec, rate=Fraction(fps))
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = pix_fmt
            stream.options = options or {}
            for f in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return path

    def indexed(self, name: str, n: int, **kwargs: object) -> Path:
        """A video of n index-stamped frames (80x32)."""
        return self.write(name, self.index_frames(n), **kwargs)


@pytest.fixture
def videos(tmp_path: Path) -> VideoFactory:
    return VideoFactory(tmp_path)
