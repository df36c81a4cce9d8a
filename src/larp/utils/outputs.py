"""Output folders: one writer at a time (a lock file with stale-lock takeover) and a manifest of what larp
wrote there, so that `--overwrite` removes larp's own files and nothing else.

The lock is a file created with O_CREAT | O_EXCL holding its owner's pid, host, command and time. It is
stale when its process is gone (same host) or its heartbeat (the file's mtime, touched every minute while
the lock is held) is older than `stale_after` seconds; a stale lock is removed and taken.

The manifest (`.larp-files` in the folder) lists the folder's entries that larp created, one relative
path a line. It is only appended to, by whole lines, so concurrent shards of one job never lose a line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from larp.utils.errors import LarpError
from larp.utils.files import default_file_mode

LOCK_STALE_SECONDS = 600.0  # no heartbeat for this long: the owner died (or its host did)
HEARTBEAT_SECONDS = 60.0
OWNER_WAIT_SECONDS = 2.0  # how long a fresh lock file may stay without its owner record
MANIFEST = ".larp-files"
LOCK_NAME = ".larp.lock"


class LockError(LarpError):
    """A lock file that cannot be judged (unreadable), so the work neither runs nor can be left waiting."""


class FolderBusyError(LarpError):
    """Another process holds the output's lock."""


class NotOwnedError(LarpError):
    """`--overwrite` would have to delete something larp did not write, or an input of the run."""


def _owner_text(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("time", 0)))
    what = f"larp {owner['command']}" if owner.get("command") else "larp"
    return f"{what} (pid {owner.get('pid')} on {owner.get('host')}, since {since})"


class FileLock:
    """An exclusive lock file; `acquire()` returns False while another live process holds it."""

    def __init__(self, path: Path, stale_after: float = LOCK_STALE_SECONDS, command: str = "",
                 heartbeat: float | None = None) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self.command = command
        self.heartbeat = heartbeat
        self.held = False
        self.owner: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read_owner(self) -> dict[str, Any]:
        """The owner record; {} while the file is missing or not (yet) a complete record."""
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _wait_for_owner(self) -> None:
        """A lock file holds its owner record a moment after it is created: wait that moment. A lock that
        stays unreadable belongs to no larp process; waiting for it could last forever, so it is an error
        that says what to do."""
        deadline = time.monotonic() + OWNER_WAIT_SECONDS
        while not self.owner and self.path.exists():
            if time.monotonic() > deadline:
                raise LockError(f"{self.path} exists but holds no readable owner record (pid, host, time), so "
                                "no larp process can be shown to hold it; if none is writing there now, delete "
                                "the file and run again")
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
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
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                           "command": self.command}, f)
            self.held = True
            if self.heartbeat:
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, daemon=True, name="larp-lock-heartbeat")
                self._thread.start()
            return True
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.held = False

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(output: str | os.PathLike, folder: bool = True) -> Path:
    """The lock of an output: `FOLDER/.larp.lock` for a folder, `.NAME.lock` beside a file."""
    path = Path(output)
    return path / LOCK_NAME if folder else path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_output(output: str | os.PathLike, command: str, folder: bool = True) -> Iterator[FileLock]:
    """Hold the lock of `output` (a folder, or a file when `folder` is False) for the block; a second
    writer gets a FolderBusyError naming the holder. The lock file is removed when the block ends."""
    lock = FileLock(lock_path(output, folder), command=command, heartbeat=HEARTBEAT_SECONDS)
    if not lock.acquire():
        raise FolderBusyError(f"{output} is being written by {_owner_text(lock.owner)}; wait for it to end or "
                              f"choose another output (a lock left by a dead process is taken over: "
                              f"{lock.path})")
    try:
        yield lock
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------ manifest
class Manifest:
    """The entries of `folder` (relative paths) that larp wrote, read from and appended to `.larp-files`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.file = self.folder / MANIFEST

    def entries(self) -> list[str]:
        try:
            lines = self.file.read_text().splitlines()
        except FileNotFoundError:
            return []
        return list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))

    def _relative(self, path: str | os.PathLike) -> str:
        """`path` (the folder joined with an entry) as the entry's path relative to the folder."""
        rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.folder)))
        if ".." in rel.parts or rel == Path("."):
            raise ValueError(f"{path} is not inside {self.folder}")
        return rel.as_posix()

    def record(self, *paths: str | os.PathLike) -> None:
        """Add entries (paths inside the folder, absolute or relative to it); each is one appended line."""
        new = [r for r in (self._relative(p) for p in paths) if r not in set(self.entries())]
        if not new:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        with os.fdopen(fd, "a") as f:
            for rel in new:
                f.write(rel + "\n")  # one short write per line: appends of whole lines never interleave

    def owns(self, path: str | os.PathLike) -> bool:
        rel = self._relative(path)
        return any(rel == e or rel.startswith(e + "/") for e in self.entries())

    def claim(self, *paths: str | os.PathLike) -> None:
        """Record that larp is about to write `paths`; refused when one exists and larp did not write it."""
        foreign = [str(p) for p in paths if Path(self.folder, self._relative(p)).exists() and not self.owns(p)]
        if foreign:
            raise NotOwnedError(f"{', '.join(foreign)} exist(s) and larp did not write it (not in "
                                f"{self.file}); move it away or choose another output folder")
        self.record(*paths)

    def clear(self, keep: Iterable[str | os.PathLike] = ()) -> list[Path]:
        """Remove every recorded entry (never the folder, never anything else), then the manifest itself.

        `keep`: the run's inputs; when one lies inside an entry to remove, nothing is removed and the error
        names it (a run never deletes what it is about to read)."""
        entries = [self.folder / e for e in self.entries()]
        for path in keep:
            inside = Path(path).expanduser().resolve()
            for entry in entries:
                target = entry.resolve()
                if entry.exists() and (inside == target or target in inside.parents):
                    raise NotOwnedError(f"{path} is an input of this run but lies in {entry}, which --overwrite "
                                        "would delete: move it elsewhere first or choose another output folder")
        removed = []
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
            else:
                continue
            removed.append(entry)
        self.file.unlink(missing_ok=True)
        return removed


def chmod_default(path: str | os.PathLike) -> None:
    """Give `path` the mode a plainly created file would have (for files made private by mkstemp)."""
    os.chmod(path, default_file_mode())
