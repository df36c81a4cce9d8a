"""`larp data check`: what the videos of dataset CSVs really are, before a training or an evaluation.

Each listed file is probed once: present, readable to its last frame (streamed, a few frames in memory),
frame count, frame rate, size, its file SHA-256 and two content hashes of its decoded frames:

- `content_key`: SHA-256 of small grey thumbnails of frames at fixed relative positions; equal when two
  files decode to the same frames (a copy, or the same stream in another container);
- `simhash`: 256 bits that survive re-encoding. The thumbnails, less each one's mean brightness, form one
  vector; each bit is the sign of its projection on a fixed pseudo-random +-1 direction. A small change
  of the pixels (codec noise) turns the vector by a small angle and flips few bits; two different clips
  differ in about half of them. Near duplicates are pairs within `near_threshold` bits.

Results are cached in `OUT/cache.jsonl`, one line per file keyed by path, size and modification time and
appended as each file finishes, so an interrupted check resumes where it stopped and a re-run only probes
files that changed. The analysis across lists and the report are in `check_report`; the manifest in
`manifest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import multiprocessing.context
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from larp.data.check_report import CheckList, VideoResult, analyse, clean_lists
from larp.data.video_io import VideoReader, VideoReadError
from larp.utils.errors import LarpError
from larp.utils.files import atomic_write_bytes, sha256_of

# Part of every cache line: results of another hashing scheme are probed again.
HASH_VERSION = "larp-check-1"
POSITIONS = 8  # frames sampled at relative positions (i + 0.5) / POSITIONS of the video
THUMB = 16  # grey thumbnails of THUMB x THUMB pixels (area average)
SIMHASH_BITS = 256
DEFAULT_NEAR_THRESHOLD = 24  # re-encodes of 32x32 clips at poor quality differ by 3-15 bits; other clips ~128
_FLAT_NORM = 1.0  # a video whose thumbnails are uniform (all black, say) has no content direction
_CHUNK = 16  # frames decoded per step


class DataCheckError(LarpError):
    """The check could not run (no such CSV, not a metadata CSV, a decoder that crashed...): exit status 2,
    since 1 means "problems found"."""

    exit_status = 2


# ------------------------------------------------------------------------------------------ content hashes
def sample_positions(num_frames: int) -> list[int]:
    """The frame indices hashed: fixed relative positions, so re-encodes with other lengths roughly agree."""
    return [min(num_frames - 1, int((i + 0.5) * num_frames / POSITIONS)) for i in range(POSITIONS)]


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """uint8 (THUMB, THUMB) grey area average of an RGB uint8 frame (H, W, 3)."""
    image = Image.fromarray(np.ascontiguousarray(frame)).convert("L")
    return np.asarray(image.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.uint8)


def _projection() -> np.ndarray:
    # +-1 entries from a fixed integer mix (murmur3's finaliser), not a random generator whose stream
    # could change between numpy versions: the hashes of a file must not depend on the installation.
    x = np.arange(POSITIONS * THUMB * THUMB * SIMHASH_BITS, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
    signs = np.where((x >> np.uint64(63)) == 1, 1.0, -1.0)
    return signs.reshape(POSITIONS * THUMB * THUMB, SIMHASH_BITS)


_PROJECTION: np.ndarray | None = None


def content_hashes(thumbs: np.ndarray) -> tuple[str, str | None]:
    """(content_key, simhash hex or None) of uint8 thumbnails (POSITIONS, THUMB, THUMB)."""
    global _PROJECTION
    key = hashlib.sha256(np.ascontiguousarray(thumbs, dtype=np.uint8).tobytes()).hexdigest()
    x = thumbs.astype(np.float64).reshape(len(thumbs), -1)
    v = (x - x.mean(axis=1, keepdims=True)).ravel()  # brightness alone says little about content
    if np.linalg.norm(v) < _FLAT_NORM:
        return key, None
    if _PROJECTION is None:
        _PROJECTION = _projection()
    bits = (v @ _PROJECTION) > 0
    return key, np.packbits(bits).tobytes().hex()


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes of the same length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


# ------------------------------------------------------------------------------------------ one file
def probe_file(path: str) -> VideoResult:
    """Everything the check learns about one file. Never raises: a failure is the result's `error`."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return VideoResult(path, "missing", "file not found")
    except OSError as exc:
        return VideoResult(path, "unreadable", f"cannot stat the file ({exc.strerror or exc})")
    result = VideoResult(path, "unreadable", size=st.st_size, mtime_ns=st.st_mtime_ns)
    if p.is_dir():
        result.error = "is a folder, expected a video file"
        return result
    try:
        result.sha256 = sha256_of(p)
        with VideoReader(p) as reader:
            info = reader.info
            wanted = sample_positions(info.num_frames)
            wanted_set = set(wanted)
            thumbs: dict[int, np.ndarray] = {}
            count = 0
            for chunk in reader.chunks(_CHUNK):
                for frame in chunk:
                    if count in wanted_set:
                        thumbs[count] = thumbnail(frame)
                    count += 1
    except VideoReadError as exc:
        result.error = exc.cause
        return result
    except Exception as exc:  # noqa: BLE001 - one odd file must not end a check of thousands
        result.error = f"unexpected {type(exc).__name__}: {exc}"
        return result
    last = thumbs[max(thumbs)]  # a stream a frame or two short of its header: the last frame stands in
    stack = np.stack([thumbs.get(i, last) for i in wanted])
    result.content_key, result.simhash = content_hashes(stack)
    result.status, result.frames, result.fps = "ok", count, info.fps
    result.width, result.height = info.width, info.height
    return result


# ------------------------------------------------------------------------------------------ the cache
class ResultCache:
    """Per-file results in a JSON-lines file: read at start, one line appended (and flushed) per probed
    file, rewritten without stale lines at the end. A line cut by an interruption is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(entry, dict) and entry.get("version") == HASH_VERSION and "path" in entry:
                        self.entries[entry["path"]] = entry
        self._file = None

    def get(self, path: str, size: int, mtime_ns: int) -> VideoResult | None:
        entry = self.entries.get(path)
        if entry is None or entry.get("size") != size or entry.get("mtime_ns") != mtime_ns:
            return None
        return VideoResult.from_dict(entry)

    def add(self, result: VideoResult) -> None:
        if result.size is None:
            return  # a missing file costs nothing to check again
        entry = {**asdict(result), "version": HASH_VERSION}
        self.entries[result.path] = entry
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")  # one write per line
        self._file.flush()

    def close(self, keep: Iterable[str] | None = None) -> None:
        """Close, and rewrite the file atomically with the entries of `keep` (None: all) once each."""
        if self._file is not None:
            self._file.close()
            self._file = None
        wanted = self.entries if keep is None else {p: self.entries[p] for p in keep if p in self.entries}
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in wanted.values())
        atomic_write_bytes(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def default_workers() -> int:
    """The CPU cores this process may use (a container's or job's share, where the system says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _pool_context() -> multiprocessing.context.BaseContext:
    """Workers forked from a clean server process that has imported this module once, not from the caller:
    forking a process that runs threads (a progress bar's monitor, a logging handler, OpenMP) can copy a
    held lock into the child, which then waits on it for ever."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _pool_results(todo: list[str], workers: int) -> Iterator[VideoResult]:
    """Results of `probe_file` over `todo` from a process pool, as they finish (a few tasks in flight)."""
    pending: set[Future[VideoResult]] = set()
    it = iter(todo)
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        try:
            while True:
                for path in it:
                    pending.add(pool.submit(probe_file, path))
                    if len(pending) >= 4 * workers:
                        break
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BrokenProcessPool as exc:
            raise DataCheckError(f"a worker process died while decoding a video ({exc}); the results so far are "
                            "cached: run the check again with --workers 1 to see which file fails") from exc
        finally:
            for future in pending:
                future.cancel()


def probe_all(paths: list[str], cache: ResultCache, workers: int, progress: bool = True
              ) -> dict[str, VideoResult]:
    """A result per distinct path: from the cache when the file's size and mtime are unchanged, else
    probed (on `workers` processes, 1: in this process) and added to the cache."""
    results: dict[str, VideoResult] = {}
    todo: list[str] = []
    for path in dict.fromkeys(paths):
        key = _stat_key(path)
        hit = cache.get(path, *key) if key is not None else None
        if hit is not None:
            results[path] = hit
        elif key is None:
            results[path] = probe_file(path)  # missing or unstat-able: nothing to decode
        else:
            todo.append(path)
    from tqdm.auto import tqdm

    with tqdm(total=len(results) + len(todo), initial=len(results), desc="checking videos", unit="video",
              file=sys.stderr, dynamic_ncols=True, disable=not progress) as bar:
        stream = (probe_file(p) for p in todo) if workers <= 1 or len(todo) <= 1 else \
            _pool_results(todo, min(workers, len(todo)))
        for result in stream:
            results[result.path] = result
            cache.add(result)
            bar.update()
    return results


# ------------------------------------------------------------------------------------------ the whole check
def load_lists(csvs: Iterable[str | os.PathLike]) -> list[CheckList]:
    """The CSVs' rows (missing videos kept, to be reported); unusable input raises DataCheckError."""
    from larp.data.datasets import read_video_csv

    lists: list[CheckList] = []
    for csv in csvs:
        path = Path(csv)
        if not path.exists():
            raise DataCheckError(f"no such CSV: {path} (expected a metadata CSV with the columns "
                                      "id,path,action,label, as `larp prepare-data` writes)")
        if any(path.resolve() == other.csv.resolve() for other in lists):
            raise DataCheckError(f"{path} is given twice")
        try:
            rows = read_video_csv(path, allow_missing=True)
        except (ValueError, OSError) as exc:
            raise DataCheckError(str(exc)) from None
        # one spelling per file, so that a file listed twice (or in two lists) is one file
        rows = [dataclasses.replace(row, path=os.path.abspath(row.path)) for row in rows]
        name = path.stem
        if any(other.name == name for other in lists):
            name = f"{path.parent.name}/{path.stem}"
        lists.append(CheckList(name, path, rows))
    if not lists:
        raise DataCheckError("no CSV given")
    return lists


def _clean_targets(lists: list[CheckList], folder: Path, overwrite: bool) -> list[Path]:
    targets = [folder / lst.csv.name for lst in lists]
    if len(set(targets)) < len(targets):
        raise DataCheckError(f"the CSVs share file names ({', '.join(t.name for t in targets)}); "
                                  f"--write_clean writes each under its name in {folder}")
    for target, lst in zip(targets, lists, strict=True):
        if target.resolve() == lst.csv.resolve():
            raise DataCheckError(f"--write_clean {folder} would replace the input {lst.csv}; give "
                                      "another folder")
    existing = [str(t) for t in [*targets, folder / "manifest.json"] if t.exists()]
    if existing and not overwrite:
        raise DataCheckError(f"{', '.join(existing)} exist(s) already; pass --overwrite to replace")
    return targets


def run_check(
    csvs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    min_per_class: int = 10,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    write_clean: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Check the videos of `csvs` and write OUT/check.json and OUT/manifest.json (and, with `write_clean`,
    the cleaned CSVs and their manifest there); returns the report (see `check_report.analyse`)."""
    from larp.data.manifest import build_manifest, write_manifest
    from larp.data.prepare import write_csv
    from larp.utils.files import write_json

    lists = load_lists(csvs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataCheckError(f"--out {out} is a file; expected a folder for check.json and the cache")
    clean_dir = Path(write_clean) if write_clean is not None else None
    targets = _clean_targets(lists, clean_dir, overwrite) if clean_dir is not None else []
    if not 0 <= near_threshold < SIMHASH_BITS:
        raise DataCheckError(f"near_threshold must lie in [0, {SIMHASH_BITS}), got {near_threshold}")
    workers = workers or default_workers()
    out.mkdir(parents=True, exist_ok=True)

    paths = [row.path for lst in lists for row in lst.rows]
    cache = ResultCache(out / "cache.jsonl")
    try:
        results = probe_all(paths, cache, workers, progress)
    finally:
        cache.close()  # keeps entries of other datasets checked into the same folder
    report = analyse(lists, results, min_per_class=min_per_class, near_threshold=near_threshold)
    report["settings"] = {"min_per_class": min_per_class, "near_threshold": near_threshold,
                          "simhash_bits": SIMHASH_BITS, "hash_version": HASH_VERSION, "positions": POSITIONS,
                          "thumbnail": THUMB}
    manifest_sha = write_manifest(out / "manifest.json", build_manifest([(x.name, x.rows) for x in lists], results))
    report["manifest"] = {"path": str(out / "manifest.json"), "sha256": manifest_sha}
    if clean_dir is not None:
        near = report["problems"]["near_across"]
        cleaned = clean_lists(lists, results, near)
        for target, (kept, _) in zip(targets, cleaned, strict=True):
            write_csv(target, kept)
        clean_manifest = build_manifest([(x.name, kept) for x, (kept, _) in zip(lists, cleaned, strict=True)],
                                        results)
        report["clean"] = {
            "folder": str(clean_dir),
            "manifest": {"path": str(clean_dir / "manifest.json"),
                         "sha256": write_manifest(clean_dir / "manifest.json", clean_manifest)},
            "lists": [{"name": x.name, "csv": str(t), "kept": len(kept), "removed": removed}
                      for x, t, (kept, removed) in zip(lists, targets, cleaned, strict=True)]}
    report["videos"] = [results[p].to_dict() for p in dict.fromkeys(paths)]
    write_json(out / "check.json", report)
    return report
