"""The analysis of `larp data check` across lists, its terminal report and the cleaned lists; `VideoResult`,
what the check learns about one file (`check.probe_file`), is defined here, where it is read.

Problems (each makes the check exit with status 1):
- missing and unreadable videos;
- identical files (SHA-256) and near duplicates (content hash within a threshold) in two lists, or twice
  in one list; near duplicates of one UCF-101 group inside a list are expected (clips of one recording)
  and not reported;
- a source video in two lists: the UCF-101 group (`v_<Action>_gXX_cXX`, the official splits keep a
  group on one side) or the YouTube id of a Kinetics clip (`<11-character id>_<start>_<end>`);
- classes with fewer usable clips than the protocol needs, and class names with several labels.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from larp.data.prepare import VideoRow

_UCF_NAME = re.compile(r"^v_(?P<action>[A-Za-z0-9]+)_g(?P<group>\d+)_c\d+$")
_KINETICS_NAME = re.compile(r"^(?P<ytid>[A-Za-z0-9_-]{11})_\d+_\d+$")
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)
# Videos sharing one 16-bit band of their hash are compared; a band value shared by more videos than this
# (a degenerate content such as a title card in many clips) is skipped rather than compared pairwise.
MAX_BUCKET = 5000
_SMALL_BUCKET = 32  # buckets up to this size are compared by vectorised offsets, larger ones pair by pair

# Problem kinds in report order, with their headings ({n}: --min_per_class).
KINDS: dict[str, str] = {
    "missing": "missing videos",
    "unreadable": "unreadable videos",
    "exact_across": "identical files in two lists",
    "near_across": "near-duplicate videos in two lists",
    "source_across": "source videos (UCF-101 group, YouTube id) in two lists",
    "exact_within": "identical files listed twice in one list",
    "near_within": "near-duplicate videos within one list",
    "small_class": "classes with fewer than {n} usable clips",
    "label_conflict": "class names and labels that disagree",
}


@dataclass
class VideoResult:
    """What the check learned about one file; `status` is "ok", "missing" or "unreadable" (see `error`)."""

    path: str
    status: str
    error: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    frames: int | None = None  # decoded, not declared
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    content_key: str | None = None
    simhash: str | None = None  # hex; None when the video is uniform

    @property
    def duration(self) -> float | None:
        return self.frames / self.fps if self.frames and self.fps else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration": self.duration}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoResult:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass
class CheckList:
    """One checked CSV: its name in the report (the file's stem), its path and its rows."""

    name: str
    csv: Path
    rows: list[VideoRow]


def source_of(path: str) -> str | None:
    """The source video a file name names: `UCF-101 v_<action>_gXX` or `YouTube <id>`; None otherwise."""
    stem = Path(path).stem
    m = _UCF_NAME.match(stem)
    if m:  # the archive spells some actions two ways (HandstandPushups / HandStandPushups)
        return f"UCF-101 v_{m['action'].lower()}_g{int(m['group']):02d}"
    m = _KINETICS_NAME.match(stem)
    if m:
        return f"YouTube {m['ytid']}"
    return None


def near_pairs(hashes: Sequence[str], threshold: int) -> tuple[dict[tuple[int, int], int], int]:
    """Pairs (i, j), i < j, of hex hashes within `threshold` differing bits, with their distance; and the
    number of oversized buckets skipped. Candidates share one 16-bit band (all pairs within 15 bits do)."""
    found: dict[tuple[int, int], int] = {}
    if len(hashes) < 2:
        return found, 0
    arr = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8).reshape(len(hashes), -1)
    bands = arr.view(np.uint16)

    def compare(a: np.ndarray, c: np.ndarray) -> None:
        a, c = np.minimum(a, c), np.maximum(a, c)
        dist = _POPCOUNT[arr[a] ^ arr[c]].sum(axis=1)
        keep = dist <= threshold
        for x, y, d in zip(a[keep], c[keep], dist[keep], strict=True):
            found[(int(x), int(y))] = int(d)

    skipped = 0
    for b in range(bands.shape[1]):
        order = np.argsort(bands[:, b], kind="stable")
        values = bands[order, b]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        sizes = np.diff(np.r_[starts, len(values)])
        skipped += int((sizes > MAX_BUCKET).sum())
        # Small buckets (most of them) at once: position i against i + k of the same bucket, k = 1, 2, ...
        small = np.repeat((sizes >= 2) & (sizes <= _SMALL_BUCKET), sizes)
        for k in range(1, min(_SMALL_BUCKET, int(sizes.max()))):
            i = np.flatnonzero(small[:-k] & (values[:-k] == values[k:]))
            if len(i) == 0:
                break
            compare(order[i], order[i + k])
        for start, size in zip(starts, sizes, strict=True):
            if _SMALL_BUCKET < size <= MAX_BUCKET:
                members = order[start:start + size]
                ii, jj = np.triu_indices(size, 1)
                compare(members[ii], members[jj])
    return found, skipped


def _ref(lst: CheckList, row: VideoRow) -> dict[str, Any]:
    return {"list": lst.name, "id": row.id, "action": row.action, "path": row.path}


def analyse(lists: Sequence[CheckList], results: Mapping[str, VideoResult], *, min_per_class: int,
            near_threshold: int) -> dict[str, Any]:
    """Statistics per list and class, and every problem found (see the module's docstring)."""
    problems: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    stats = []
    for lst in lists:
        classes: dict[str, Counter] = defaultdict(Counter)
        for row in lst.rows:
            res = results[row.path]
            classes[row.action]["listed"] += 1
            classes[row.action][res.status] += 1
            if res.status == "missing":
                problems["missing"].append(_ref(lst, row))
            elif res.status == "unreadable":
                problems["unreadable"].append({**_ref(lst, row), "error": res.error})
        ok = [results[r.path] for r in lst.rows if results[r.path].status == "ok"]
        counts = [c["ok"] for c in classes.values()]
        stats.append({
            "name": lst.name, "csv": str(lst.csv), "rows": len(lst.rows), "ok": len(ok),
            "missing": sum(c["missing"] for c in classes.values()),
            "unreadable": sum(c["unreadable"] for c in classes.values()),
            "frames": sum(r.frames for r in ok), "duration_s": round(sum(r.duration for r in ok), 3),
            "fps": dict(Counter(f"{r.fps:g}" for r in ok).most_common()),
            "frame_sizes": dict(Counter(f"{r.width}x{r.height}" for r in ok).most_common()),
            "classes": {a: {"listed": c["listed"], "ok": c["ok"], "missing": c["missing"],
                            "unreadable": c["unreadable"]} for a, c in sorted(classes.items())},
            "clips_per_class": {"min": min(counts), "median": statistics.median(counts), "max": max(counts)}
            if counts else None,
        })

    where: dict[str, list[tuple[CheckList, VideoRow]]] = defaultdict(list)  # path -> rows listing it
    for lst in lists:
        for row in lst.rows:
            where[row.path].append((lst, row))
    _duplicates(where, results, problems)
    skipped = _near_duplicates(where, results, near_threshold, problems)
    _sources(lists, problems)
    _classes(lists, results, min_per_class, problems)
    return {"lists": stats, "problems": problems, "counts": {k: len(v) for k, v in problems.items()},
            "near_buckets_skipped": skipped}


def _duplicates(where: Mapping[str, list[tuple[CheckList, VideoRow]]], results: Mapping[str, VideoResult],
                problems: dict[str, list[dict[str, Any]]]) -> None:
    by_sha: dict[str, list[tuple[CheckList, VideoRow]]] = defaultdict(list)
    for path, entries in where.items():
        if results[path].sha256:
            by_sha[results[path].sha256] += entries
    for sha, entries in by_sha.items():
        if len(entries) < 2:
            continue
        videos = [_ref(lst, row) for lst, row in entries]
        per_list = Counter(lst.name for lst, _ in entries)
        if len(per_list) > 1:
            problems["exact_across"].append({"sha256": sha, "videos": videos})
        for name, n in per_list.items():
            if n > 1:
                problems["exact_within"].append({"sha256": sha, "list": name,
                                                 "videos": [v for v in videos if v["list"] == name]})


def _near_duplicates(where: Mapping[str, list[tuple[CheckList, VideoRow]]],
                     results: Mapping[str, VideoResult], threshold: int,
                     problems: dict[str, list[dict[str, Any]]]) -> int:
    paths = [p for p in where if results[p].status == "ok" and results[p].simhash]
    pairs, skipped = near_pairs([results[p].simhash for p in paths], threshold)
    for (i, j), dist in sorted(pairs.items(), key=lambda kv: (kv[1], kv[0])):
        a, b = paths[i], paths[j]
        if results[a].sha256 == results[b].sha256:
            continue  # the same bytes: reported as identical files
        lists_a = {lst.name for lst, _ in where[a]}
        lists_b = {lst.name for lst, _ in where[b]}
        item = {"distance": dist, "bits": 4 * len(results[a].simhash),
                "a": _ref(*where[a][0]), "b": _ref(*where[b][0])}
        if any(x != y for x in lists_a for y in lists_b):
            problems["near_across"].append(item)
        same_source = source_of(a) is not None and source_of(a) == source_of(b)
        if lists_a & lists_b and not same_source:
            problems["near_within"].append({**item, "lists": sorted(lists_a & lists_b)})
    return skipped


def _sources(lists: Sequence[CheckList], problems: dict[str, list[dict[str, Any]]]) -> None:
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for lst in lists:
        for row in lst.rows:
            source = source_of(row.path)
            if source is not None:
                found[source][lst.name].append(row.path)
    for source, per_list in sorted(found.items()):
        if len(per_list) > 1:
            problems["source_across"].append({"source": source, "lists": dict(per_list)})


def _classes(lists: Sequence[CheckList], results: Mapping[str, VideoResult], min_per_class: int,
             problems: dict[str, list[dict[str, Any]]]) -> None:
    labelled = [lst for lst in lists if any(r.action or r.label >= 0 for r in lst.rows)]
    names = sorted({r.action for lst in labelled for r in lst.rows if r.action})
    if min_per_class > 0:
        for lst in labelled:
            usable = Counter(r.action for r in lst.rows if results[r.path].status == "ok")
            for action in names:
                if usable[action] < min_per_class:
                    problems["small_class"].append({"list": lst.name, "action": action,
                                                    "clips": usable[action], "minimum": min_per_class})
    labels: dict[str, set[int]] = defaultdict(set)
    actions: dict[int, set[str]] = defaultdict(set)
    for lst in lists:
        for r in lst.rows:
            labels[r.action].add(r.label)
            if r.label >= 0:
                actions[r.label].add(r.action)
    for action, found in sorted(labels.items()):
        if len(found) > 1:
            problems["label_conflict"].append({"action": action, "labels": sorted(found)})
    for label, found in sorted(actions.items()):
        if len(found) > 1:
            problems["label_conflict"].append({"label": label, "actions": sorted(found)})


# ------------------------------------------------------------------------------------------ cleaned lists
def clean_lists(lists: Sequence[CheckList], results: Mapping[str, VideoResult],
                near: Sequence[dict[str, Any]]) -> list[tuple[list[VideoRow], list[dict[str, str]]]]:
    """Per list, (rows kept, rows removed with the reason): missing and unreadable videos go; so do, in
    each list, the copies of a file listed earlier in it, and the videos that repeat a kept video of an
    earlier list (identical file, near duplicate or same source video)."""
    neighbours: dict[str, set[str]] = defaultdict(set)
    for item in near:
        neighbours[item["a"]["path"]].add(item["b"]["path"])
        neighbours[item["b"]["path"]].add(item["a"]["path"])
    earlier_sha: dict[str, str] = {}
    earlier_path: dict[str, str] = {}
    earlier_source: dict[str, str] = {}
    out = []
    for lst in lists:
        kept: list[VideoRow] = []
        removed: list[dict[str, str]] = []
        seen_sha: set[str] = set()
        for row in lst.rows:
            res = results[row.path]
            source = source_of(row.path)
            close = sorted(p for p in neighbours[row.path] if p in earlier_path)
            if res.status != "ok":
                reason = f"{res.status}: {res.error}"
            elif res.sha256 in earlier_sha:
                reason = f"identical to a video of list {earlier_sha[res.sha256]}"
            elif res.sha256 in seen_sha:
                reason = "identical to an earlier row of this list"
            elif close:
                reason = f"near duplicate of {close[0]} (list {earlier_path[close[0]]})"
            elif source is not None and source in earlier_source:
                reason = f"{source} is in list {earlier_source[source]}"
            else:
                kept.append(row)
                seen_sha.add(res.sha256)
                continue
            removed.append({"id": row.id, "path": row.path, "reason": reason})
        for row in kept:
            earlier_sha.setdefault(results[row.path].sha256, lst.name)
            earlier_path.setdefault(row.path, lst.name)
            if source_of(row.path) is not None:
                earlier_source.setdefault(source_of(row.path), lst.name)
        out.append((kept, removed))
    return out


# ------------------------------------------------------------------------------------------ terminal
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in cells]


def _describe(kind: str, item: dict[str, Any]) -> str:
    if kind == "missing":
        return f"{item['list']}: {item['path']}"
    if kind == "unreadable":
        return f"{item['list']}: {item['path']}: {item['error']}"
    if kind in ("exact_across", "exact_within"):
        return f"sha256 {item['sha256'][:12]}: " + ", ".join(f"{v['list']} {v['path']}" for v in item["videos"])
    if kind in ("near_across", "near_within"):
        return (f"{item['distance']}/{item['bits']} bits: {item['a']['list']} {item['a']['path']} ~ "
                f"{item['b']['list']} {item['b']['path']}")
    if kind == "source_across":
        return f"{item['source']}: " + ", ".join(f"{n} ({len(p)} clip{'s' * (len(p) > 1)})"
                                                  for n, p in item["lists"].items())
    if kind == "small_class":
        return f"{item['list']}: {item['action']}: {item['clips']} clip{'s' * (item['clips'] != 1)}"
    if "labels" in item:
        return f"class {item['action']!r} has labels {item['labels']}"
    return f"label {item['label']} names classes {item['actions']}"


def format_report(report: dict[str, Any], show: int = 10) -> str:
    """The terminal report: a table per list, the classes with missing or unreadable videos, then each
    kind of problem with up to `show` examples."""
    lines = _table(
        ("list", "videos", "ok", "missing", "unreadable", "classes", "clips/class", "frames", "hours", "fps"),
        [(s["name"], s["rows"], s["ok"], s["missing"], s["unreadable"], len(s["classes"]),
          "-" if s["clips_per_class"] is None else f"{s['clips_per_class']['min']}-{s['clips_per_class']['max']}",
          s["frames"], f"{s['duration_s'] / 3600:.2f}", ",".join(list(s["fps"])[:3]) or "-")
         for s in report["lists"]])
    bad = [(s["name"], a, c["missing"], c["unreadable"]) for s in report["lists"]
           for a, c in s["classes"].items() if c["missing"] or c["unreadable"]]
    if bad:
        lines += ["", "classes with missing or unreadable videos:"]
        lines += ["  " + line for line in _table(("list", "class", "missing", "unreadable"), bad[:show])]
        if len(bad) > show:
            lines.append(f"  ... and {len(bad) - show} more")
    minimum = report["settings"]["min_per_class"]
    for kind, heading in KINDS.items():
        items = report["problems"][kind]
        if items:
            lines += ["", f"{heading.format(n=minimum)} ({len(items)}):"]
            lines += [f"  {_describe(kind, item)}" for item in items[:show]]
            if len(items) > show:
                lines.append(f"  ... and {len(items) - show} more (all in check.json)")
    if report.get("near_buckets_skipped"):
        lines += ["", f"note: {report['near_buckets_skipped']} content-hash buckets shared by more than "
                      f"{MAX_BUCKET} videos were not compared for near duplicates"]
    return "\n".join(lines)


def summary_line(report: dict[str, Any], where: str) -> str:
    """The last line: clean, or the number of problems of each kind; and where the report is."""
    videos = sum(s["rows"] for s in report["lists"])
    lists = f"{len(report['lists'])} list{'s' * (len(report['lists']) > 1)}, {videos} videos"
    counts = {k: n for k, n in report["counts"].items() if n}
    if not counts:
        return f"data check: clean ({lists}); report {where}"
    minimum = report["settings"]["min_per_class"]
    parts = ", ".join(f"{KINDS[k].format(n=minimum)}: {n}" for k, n in counts.items())
    return f"data check: {sum(counts.values())} problems in {lists}: {parts}; report {where}"
