"""Tiny real video files for the data tests, each frame stamped with its index in a lossy-safe code."""

from __future__ import annotations

from dataclasses import dataclass
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

    @staticmethod
    def flat_frames(n: int, height: int = 24, width: int = 40) -> np.ndarray:
        """uint8 (n, H, W, 3) uniform grey frames whose level codes the index: 10 + 6 t (t < 40)."""
        assert n <= 40
        levels = (10 + 6 * np.arange(n)).astype(np.uint8)
        return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()

    @staticmethod
    def flat_ids(video: np.ndarray) -> list[int]:
        """Frame indices of `flat_frames` from a float video (3, T, H, W) in [0, 1] (any size)."""
        means = np.asarray(video).mean(axis=(0, 2, 3)) * 255
        return [int(round((m - 10) / 6)) for m in means]

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


UCF_CLASSES = ("ApplyEyeMakeup", "HandstandPushups", "YoYo")


def ucf_name(action: str, group: int, clip: int) -> str:
    # The real archive names HandstandPushups files v_HandStandPushups_*; the lists use those names.
    stem = "HandStandPushups" if action == "HandstandPushups" else action
    return f"{action}/v_{stem}_g{group:02d}_c{clip:02d}.avi"


@dataclass
class UCFTree:
    root: Path
    splits: Path
    classes: tuple[str, ...] = UCF_CLASSES

    @staticmethod
    def name(action: str, group: int, clip: int) -> str:
        return ucf_name(action, group, clip)


@pytest.fixture
def ucf_tree(tmp_path: Path) -> UCFTree:
    """A fake UCF-101 root (real naming scheme, tiny MPEG-4 AVI files) and its split folder.

    Groups 1-2 are test videos, groups 8-9 training videos: 3 classes x 2 groups x 2 clips each."""
    factory = VideoFactory(tmp_path)
    data = factory.write("template.avi", factory.flat_frames(12), codec="mpeg4").read_bytes()
    root, splits = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    train, test = [], []
    for label, action in enumerate(UCF_CLASSES, 1):
        for group in (1, 2, 8, 9):
            for clip in (1, 2):
                rel = ucf_name(action, group, clip)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
                if group >= 8:
                    train.append(f"{rel} {label}")
                else:
                    test.append(rel)
    (splits / "classInd.txt").write_text("".join(f"{i} {a}\n" for i, a in enumerate(UCF_CLASSES, 1)))
    (splits / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")  # the official files use CRLF
    (splits / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    return UCFTree(root, splits)


@pytest.fixture
def videos(tmp_path: Path) -> VideoFactory:
    return VideoFactory(tmp_path)
