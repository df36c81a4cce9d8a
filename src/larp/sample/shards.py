"""The bookkeeping of a sharded sampling job (`larp.sample.job`): the batch grid and its seeds, shard files
and markers, coverage, exclusive files and the merge lock. No model code here."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from larp.utils.files import default_file_mode
from larp.utils.outputs import FileLock

LOCK_STALE_SECONDS = 600.0  # merging takes seconds; a lock this old belongs to a process that died
_MARKER = re.compile(r"shard_(\d+)_(\d+)\.done\.json")


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard, as its marker file records it."""

    start: int
    end: int
    nll_sum: float


def batch_seed(seed: int, batch_start: int) -> int:
    """The generator seed of the grid batch starting at `batch_start` (a 63-bit mix of both numbers)."""
    state = np.random.SeedSequence([seed, batch_start]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def grid_batches(start: int, end: int, total: int, batch_size: int) -> list[tuple[int, int]]:
    """The grid batches [k*B, min((k+1)*B, total)) that hold a sample of [start, end)."""
    first = (start // batch_size) * batch_size
    return [(b, min(b + batch_size, total)) for b in range(first, end, batch_size)]


def create_exclusive(path: Path, data: dict[str, Any]) -> bool:
    """Write JSON to `path` only if it does not exist, atomically (hard link of a complete temp file).

    Returns False when another process created it first."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would pass to the link: the umask's mode instead
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive create, then write
        try:
            with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), "w") as f:
                f.write(text)
            return True
        except FileExistsError:
            return False
    finally:
        os.remove(tmp)


def shard_paths(out: Path, start: int, end: int) -> dict[str, Path]:
    stem = f"shard_{start}_{end}"
    return {"real": out / "stats" / f"{stem}_real.npz", "fake": out / "stats" / f"{stem}_fake.npz",
            "marker": out / "stats" / f"{stem}.done.json", "tokens": out / "tokens" / f"{stem}.npz",
            "gif": out / "overview" / f"{stem}.gif", "png": out / "overview" / f"{stem}.png"}


def finished_shards(out: Path) -> list[ShardRecord]:
    """Every finished shard of a job folder (its marker files), sorted by start."""
    records = []
    for path in sorted((out / "stats").glob("shard_*.done.json")):
        match = _MARKER.fullmatch(path.name)
        if not match:
            continue
        try:
            data = json.loads(path.read_text())
            record = ShardRecord(int(data["start"]), int(data["end"]), float(data["nll_sum"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a valid shard marker ({exc}); delete it to rerun that shard") from exc
        if (record.start, record.end) != (int(match[1]), int(match[2])):
            raise ValueError(f"{path} records the shard [{record.start}, {record.end}), not its file name's")
        records.append(record)
    return sorted(records, key=lambda r: (r.start, r.end))


def check_coverage(shards: list[ShardRecord], total: int) -> int:
    """Samples of [0, total) the finished shards cover; overlapping shards are an error."""
    for a, b in zip(shards, shards[1:], strict=False):
        if b.start < a.end:
            raise ValueError(f"finished shards [{a.start}, {a.end}) and [{b.start}, {b.end}) overlap; delete the "
                             "files of one of them (stats/, tokens/) and rerun the missing samples")
    for s in shards:
        if not 0 <= s.start < s.end <= total:
            raise ValueError(f"finished shard [{s.start}, {s.end}) lies outside the job's [0, {total})")
    return sum(s.end - s.start for s in shards)


# ------------------------------------------------------------------------------------------ merge lock
class MergeLock(FileLock):
    """The merge lock of a job folder (`fvd.lock`): larp.utils.outputs.FileLock with the merge's staleness.

    Two processes that both judge it stale at once could both take it; `fvd.json` is created exclusively,
    so even then the FVD is reported once."""

    def __init__(self, path: Path, stale_after: float = LOCK_STALE_SECONDS):
        super().__init__(path, stale_after=stale_after, command="sample (merge)")

    def __enter__(self) -> MergeLock:
        self.acquire()
        return self
