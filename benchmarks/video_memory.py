"""Peak memory of `larp reconstruct` and `larp tokenize` against the length of the video, printed as JSON.

Writes a small H.264 mp4 per length (a few moving bars: a few kilobytes per frame even at 4K), then runs
each command in a fresh process through the tiny tokenizer preset (random weights: only memory is
measured) and reports the process's peak resident memory. Whole-video work is streamed window by
window, so the peak should not grow with the number of frames; `decoded_video_mb` is what holding the
decoded video (uint8) would take.

    .venv/bin/python benchmarks/video_memory.py [--width 4096 --height 2160 --frames 32 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_video(path: Path, frames: int, height: int, width: int) -> None:
    from larp.data.video_io import MP4Writer

    x = np.arange(width)
    with MP4Writer(path, 25, crf=35) as writer:
        for t in range(frames):
            bars = ((x // 64 + t) % 2 * 200 + 30).astype(np.uint8)
            writer.write(np.broadcast_to(bars[None, :, None], (height, width, 3)).copy())


def peak_rss_mb(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `python -m larp.cli ARGV` run in a child process."""
    code = ("import sys, resource; from larp.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    kib = int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("MAXRSS")))
    return kib / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--commands", nargs="+", default=["reconstruct", "tokenize"])
    args = parser.parse_args()

    from larp import LARPTokenizer, tokenizer_preset

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(root / "tok")
        for n in args.frames:
            video = root / f"v{n}.mp4"
            write_video(video, n, args.height, args.width)
            for command in args.commands:
                out = root / (f"out{n}.mp4" if command == "reconstruct" else f"out{n}.npz")
                argv = [command, str(video), "--tokenizer", str(model), "-o", str(out), "--device", "cpu",
                        "--overwrite"]
                mb, seconds = peak_rss_mb(argv)
                results.append({"command": command, "frames": n, "size": f"{args.width}x{args.height}",
                                "file_kb": round(video.stat().st_size / 1024, 1), "peak_rss_mb": round(mb),
                                "decoded_video_mb": round(n * args.height * args.width * 3 / 2**20),
                                "seconds": round(seconds, 1)})
                print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "video_memory", "torch": torch.__version__, "python": platform.python_version(),
                      "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
