"""The bookkeeping of a sharded sampling job (`larp.sample.job`): the batch grid and its seeds, shard files
and markers, coverage, exclusive files and the merge lock. No model code here."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from larp.utils.errors import LarpError

LOCK_STALE_SECONDS = 600.0  # merging takes seconds; a lock this old belongs to a process that died
OWNER_WAIT_SECONDS = 2.0  # how long a fresh lock file may stay without its owner record
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
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive create, then write
        try:
            with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "w") as f:
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
class LockError(LarpError):
    """A merge lock that cannot be judged (unreadable), so the merge neither runs nor can be left waiting."""


class MergeLock:
    """An exclusive lock file (O_CREAT | O_EXCL) holding the owner's pid, host and time.

    A lock is stale when its process is gone (same host) or it is older than `stale_after` seconds; a
    stale lock is removed and taken. Two processes that both judge it stale at once could both take it;
    `fvd.json` is created exclusively, so even then the FVD is reported once."""

    def __init__(self, path: Path, stale_after: float = LOCK_STALE_SECONDS):
        self.path = path
        self.stale_after = stale_after
        self.held = False
        self.owner: dict[str, Any] = {}

    def _read_owner(self) -> dict[str, Any]:
        """The owner record; {} while the file is missing or not (yet) a complete record."""
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _wait_for_owner(self) -> None:
        """A lock file holds its owner record a moment after it is created: wait that moment. A lock that
        stays unreadable belongs to no `larp sample` process; waiting for it would end the job without an
        FVD, so it is an error that says what to do."""
        deadline = time.monotonic() + OWNER_WAIT_SECONDS
        while not self.owner and self.path.exists():
            if time.monotonic() > deadline:
                raise LockError(f"{self.path} exists but holds no readable owner record (pid, host, time), so "
                                "no merge can be shown to be running; if no other shard of this job is "
                                "merging now, delete the file and run this shard again to merge")
            time.sleep(0.05)
            self.owner = self._read_owner()

    def is_stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        owner = self.owner = self._read_owner()
        if age > self.stale_after:
            return True
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def acquire(self) -> bool:
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if attempt == 0 and self.is_stale():
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    continue
                self._wait_for_owner()
                if not self.path.exists():  # released while we waited
                    continue
                return False
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.held = False

    def __enter__(self) -> MergeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
