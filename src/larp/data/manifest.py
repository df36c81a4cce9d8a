"""Dataset manifests: the files a list of videos holds, so that two numbers say whether they were measured
on the same files.

`larp data check` writes `manifest.json`: for each checked list (in CSV order) the readable videos' paths
relative to the folder that holds all of them, their SHA-256, size, frame count, class name and label.
Absolute locations are left out, so the same files give the same manifest (and the same SHA-256) on
every machine. `larp eval tokenizer --manifest` and `larp sample --manifest` check that the CSV they
evaluate is one of the manifest's lists (same files in the same order, same labels, same sizes) and record
the manifest's SHA-256 with their numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from larp.utils.files import sha256_of, write_json

if TYPE_CHECKING:
    from larp.data.check_report import VideoResult
    from larp.data.prepare import VideoRow

MANIFEST_FORMAT = "larp-data-manifest"
MANIFEST_VERSION = 1


def build_manifest(lists: Sequence[tuple[str, Sequence[VideoRow]]],
                   results: Mapping[str, VideoResult]) -> dict[str, Any]:
    """The manifest of the readable videos of named lists of rows (missing and unreadable ones left out)."""
    ok = [[r for r in rows if results[r.path].status == "ok"] for _, rows in lists]
    folders = {os.path.dirname(r.path) for rows in ok for r in rows}
    root = os.path.commonpath(sorted(folders)) if folders else ""
    out = []
    for (name, _), rows in zip(lists, ok, strict=True):
        videos = [{"path": Path(os.path.relpath(r.path, root)).as_posix(), "sha256": results[r.path].sha256,
                   "size": results[r.path].size, "frames": results[r.path].frames, "action": r.action,
                   "label": r.label} for r in rows]
        out.append({"name": name, "videos": videos})
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "lists": out}


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Write the manifest atomically; returns its SHA-256 (what evaluations record)."""
    write_json(path, manifest)
    return sha256_of(path)


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A manifest file's content, with a clear error for a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (`larp data check` writes manifest.json)")
    expected = f"expected the JSON manifest that `larp data check` writes (format {MANIFEST_FORMAT!r})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not JSON ({exc}); {expected}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("lists"), list):
        raise ValueError(f"{path} is not a dataset manifest; {expected}")
    if data.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {data.get('version')!r}; this larp reads version "
                         f"{MANIFEST_VERSION}")
    return data


def _difference(videos: list[dict[str, Any]], rows: Sequence[VideoRow]) -> str | None:
    """None when the rows are the manifest list's videos (paths, order, labels), else the first difference."""
    if len(videos) != len(rows):
        return f"{len(videos)} videos, the CSV {len(rows)}"
    root = None
    for i, (video, row) in enumerate(zip(videos, rows, strict=True), 1):
        path, rel = Path(os.path.abspath(row.path)).as_posix(), str(video.get("path"))
        if not (path == rel or path.endswith("/" + rel)):
            return f"row {i} is {row.path}, the manifest's {rel}"
        here = path[: len(path) - len(rel)]
        if root is None:
            root = here
        elif here != root:
            return f"row {i} ({row.path}) lies outside {root}, where the other videos are"
        if (video.get("action"), video.get("label")) != (row.action, row.label):
            return (f"row {i} ({row.path}) has class {row.action!r} label {row.label}, the manifest "
                    f"{video.get('action')!r} label {video.get('label')}")
    return None


def verify_manifest(manifest_path: str | os.PathLike, rows: Sequence[VideoRow],
                    csv_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check that `rows` (a CSV's) are one list of the manifest and that each file still has the size
    recorded; returns what an evaluation records: the manifest's path, SHA-256 and matched list.

    Raises ValueError naming the difference. File contents are not hashed again here (that is a full
    read of the dataset): `larp data check` does that."""
    manifest = load_manifest(manifest_path)
    what = str(csv_path) if csv_path is not None else "the dataset CSV"
    differences = []
    for entry in manifest["lists"]:
        videos = entry.get("videos") if isinstance(entry, dict) else None
        if not isinstance(videos, list) or not all(isinstance(v, dict) for v in videos):
            raise ValueError(f"{manifest_path}: a list without videos; expected the manifest that "
                             "`larp data check` writes")
        diff = _difference(videos, rows)
        if diff is not None:
            differences.append(f"list {entry.get('name')!r}: {diff}")
            continue
        for video, row in zip(videos, rows, strict=True):
            try:
                size = os.stat(row.path).st_size
            except OSError as exc:
                raise ValueError(f"{row.path}, listed in the manifest {manifest_path}, cannot be read "
                                 f"({exc.strerror or exc})") from None
            if size != video.get("size"):
                raise ValueError(f"{row.path} has {size:,} bytes, the manifest {manifest_path} records "
                                 f"{video.get('size')}: the file changed since `larp data check`; check "
                                 "the data again")
        return {"path": str(manifest_path), "sha256": sha256_of(manifest_path), "list": entry.get("name"),
                "videos": len(rows), "verified": "paths, order, labels and file sizes"}
    raise ValueError(f"{what} is none of the lists of the manifest {manifest_path} ("
                     + "; ".join(differences[:4]) + "); give the manifest written with this CSV")
