"""Builders of metadata CSVs (`id,path,action,label`, the reference release's format).

UCF-101 from its official split files, Kinetics-600 from its annotation CSVs, and any folder holding one
sub-folder per class. Written paths are absolute, so a CSV works from any working directory; datasets
also accept relative paths (resolved against the CSV's folder or a given root).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CSV_COLUMNS = ("id", "path", "action", "label")
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".gif"}
)


@dataclass(frozen=True)
class VideoRow:
    """One CSV row: a video, its class name and its integer label (-1 when unlabelled)."""

    id: str
    path: str
    action: str
    label: int


def write_csv(path: str | os.PathLike, rows: Iterable[VideoRow]) -> Path:
    """Write rows in the `id,path,action,label` format (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row.id, row.path, row.action, row.label])
    tmp.replace(out)  # never leave a half-written CSV behind
    return out


def _missing_error(what: str, missing: Sequence[str], total: int) -> FileNotFoundError:
    shown = "\n  ".join(missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return FileNotFoundError(
        f"{what}: {len(missing)} of {total} listed videos do not exist, e.g.\n  {shown}{more}"
    )


# --------------------------------------------------------------------------------------------- UCF-101


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"UCF-101 split file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_ucf101_classes(class_ind: str | os.PathLike) -> list[str]:
    """Class names ordered by their index in `classInd.txt` (lines `1 ApplyEyeMakeup`); label = index - 1."""
    path = Path(class_ind)
    entries: dict[int, str] = {}
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}, line {n}: expected '<index> <ClassName>', found {line!r}")
        entries[int(parts[0])] = parts[1]
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: class indices must run 1..{len(entries)}, found {sorted(entries)}")
    return [entries[i] for i in range(1, len(entries) + 1)]


def _ucf101_rows(
    root: Path, list_file: Path, classes: list[str], allow_missing: bool
) -> tuple[list[VideoRow], list[str]]:
    index = {name: i for i, name in enumerate(classes)}
    rows: list[VideoRow] = []
    missing: list[str] = []
    for n, line in enumerate(_read_lines(list_file), 1):
        parts = line.split()
        rel = parts[0]
        action = rel.replace("\\", "/").split("/")[0]
        if action not in index:
            raise ValueError(f"{list_file}, line {n}: class folder {action!r} is not in classInd.txt")
        label = index[action]
        if len(parts) > 1 and int(parts[1]) - 1 != label:
            raise ValueError(
                f"{list_file}, line {n}: label {parts[1]} disagrees with classInd.txt ({action} = {label + 1})"
            )
        path = root / rel
        if not path.is_file():
            missing.append(str(path))
            continue
        rows.append(VideoRow(id=Path(rel).stem, path=str(path.resolve()), action=action, label=label))
    if missing and not allow_missing:
        raise _missing_error(f"UCF-101 list {list_file}", missing, len(rows) + len(missing))
    return rows, missing


def build_ucf101_csvs(
    root: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: int = 1,
    *,
    allow_missing: bool = False,
) -> tuple[Path, Path]:
    """`ucf101_train{split}.csv` and `ucf101_test{split}.csv` from the official split files.

    `root` holds the class folders (`ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`); `split_dir` holds
    `classInd.txt`, `trainlist0{split}.txt` and `testlist0{split}.txt`. Labels are classInd indices - 1
    (alphabetical, 0..100). Missing videos raise unless allow_missing, which logs and drops them."""
    if split not in (1, 2, 3):
        raise ValueError(f"UCF-101 has splits 1, 2 and 3, got {split}")
    root, split_dir, out_dir = Path(root), Path(split_dir), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"UCF-101 root folder not found: {root}")
    classes = read_ucf101_classes(split_dir / "classInd.txt")
    outputs = []
    for kind in ("train", "test"):
        rows, missing = _ucf101_rows(root, split_dir / f"{kind}list0{split}.txt", classes, allow_missing)
        if missing:
            log.warning("UCF-101 %s split %d: %d listed videos missing, dropped", kind, split, len(missing))
        outputs.append(write_csv(out_dir / f"ucf101_{kind}{split}.csv", rows))
        log.info("UCF-101 %s split %d: %d videos -> %s", kind, split, len(rows), outputs[-1])
    return outputs[0], outputs[1]


# ---------------------------------------------------------------------------------------- Kinetics-600


def k600_filename(youtube_id: str, time_start: int, time_end: int) -> str:
    """The clip file name of the Kinetics downloaders: `{youtube_id}_{start:06d}_{end:06d}.mp4`."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}.mp4"


def _index_files(root: Path) -> dict[str, list[Path]]:
    """Every video under root by file name (the layout may be <split>/<class>/, <class>/ or flat)."""
    found: dict[str, list[Path]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                found.setdefault(name, []).append(Path(dirpath) / name)
    return found


_K600_REQUIRED = ("youtube_id", "time_start", "time_end")


def build_k600_csvs(
    root: str | os.PathLike, annotations_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> dict[str, Path]:
    """One CSV per annotation file (`train.csv`, `validate.csv`, ... -> `k600_train.csv`, ...).

    Annotation columns: label,youtube_id,time_start,time_end,split (label may be absent for a test
    file: label -1). Labels are the alphabetical index over every label in the annotation files. Videos
    that are not found under root (unavailable downloads) are counted, logged and listed in
    `k600_<split>_missing.txt` beside the CSVs."""
    root, annotations_dir, out_dir = Path(root), Path(annotations_dir), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Kinetics-600 root folder not found: {root}")
    ann_files = sorted(annotations_dir.glob("*.csv"))
    if not ann_files:
        raise FileNotFoundError(f"no annotation CSV (*.csv) in {annotations_dir}")
    tables: dict[str, list[dict[str, str]]] = {}
    for ann in ann_files:
        with ann.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            absent = [c for c in _K600_REQUIRED if c not in columns]
            if absent:
                raise ValueError(
                    f"{ann}: missing column(s) {', '.join(absent)}; expected label,youtube_id,time_start,"
                    f"time_end,split, found {', '.join(columns) or 'nothing'}"
                )
            tables[ann.stem] = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    labels = sorted({r["label"] for rows in tables.values() for r in rows if r.get("label")})
    label_index = {name: i for i, name in enumerate(labels)}
    files = _index_files(root)
    outputs: dict[str, Path] = {}
    for split, table in tables.items():
        rows: list[VideoRow] = []
        missing: list[str] = []
        for n, r in enumerate(table, 2):
            try:
                name = k600_filename(r["youtube_id"], int(float(r["time_start"])), int(float(r["time_end"])))
            except (ValueError, OverflowError) as e:  # OverflowError: int(float("inf"))
                raise ValueError(
                    f"{annotations_dir / (split + '.csv')}, line {n}: bad time value ({e}); expected a number "
                    f"of seconds, found time_start={r['time_start']!r}, time_end={r['time_end']!r}"
                ) from e
            candidates = files.get(name, [])
            if not candidates:
                missing.append(name)
                continue
            # Prefer a copy inside a folder named after the split when a clip appears twice.
            path = next((p for p in candidates if split in p.parts), candidates[0])
            action = r.get("label", "")
            rows.append(VideoRow(Path(name).stem, str(path.resolve()), action, label_index.get(action, -1)))
        outputs[split] = write_csv(out_dir / f"k600_{split}.csv", rows)
        missing_file = out_dir / f"k600_{split}_missing.txt"
        if missing:
            missing_file.write_text("\n".join(missing) + "\n")
            log.warning(
                "Kinetics-600 %s: %d of %d clips missing (listed in %s)",
                split,
                len(missing),
                len(table),
                missing_file,
            )
        elif missing_file.exists():
            missing_file.unlink()  # stale list from an earlier, less complete download
        log.info("Kinetics-600 %s: %d clips -> %s", split, len(rows), outputs[split])
    return outputs


# --------------------------------------------------------------------------------------- class folders


def scan_video_folder(root: str | os.PathLike) -> tuple[list[str], list[VideoRow]]:
    """Class names (sorted sub-folder names) and one row per video file found under each sub-folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected <root>/<class>/<video files>")
    rows: list[VideoRow] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
                rows.append(VideoRow(path.stem, str(path.resolve()), name, label))
    if not rows:
        exts = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise ValueError(f"no video files ({exts}) under the class folders of {root}")
    return classes, rows


def build_folder_csv(root: str | os.PathLike, out_csv: str | os.PathLike) -> Path:
    """A CSV of every video under `root/<class>/`; labels = sorted class-folder index."""
    classes, rows = scan_video_folder(root)
    log.info("%s: %d videos in %d classes -> %s", root, len(rows), len(classes), out_csv)
    return write_csv(out_csv, rows)
