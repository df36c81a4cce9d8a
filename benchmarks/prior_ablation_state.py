"""The prior ablation's results file, shared by its workers (used by benchmarks/prior_ablation.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


class Results:
    """benchmarks/results/prior_ablation.json: {"ablations": {name: {recipe_hash, cells, reruns, ...}}}, one
    row per finished cell, all rows of one ablation of one recipe (`recipe_hash`). Rows are added under a
    file lock, so that several workers can share the file."""

    KINDS = ("cells", "reruns")

    def __init__(self, path: Path, name: str, recipe_hash: str):
        self.path, self.name, self.hash = path, name, recipe_hash
        self.data = self._read()

    def _read(self) -> dict[str, Any]:
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        entry = data.setdefault("ablations", {}).setdefault(self.name, {})
        old = entry.get("recipe_hash")
        if old is not None and old != self.hash and any(entry.get(k) for k in self.KINDS):
            raise SystemExit(f"{self.path} holds rows of ablation {self.name} with another recipe ({old}; this one "
                             f"is {self.hash}): move it away or pass --results to write elsewhere")
        entry["recipe_hash"] = self.hash
        for key in self.KINDS:
            entry.setdefault(key, [])
        return data

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return self.data["ablations"][self.name][kind]

    def done(self, kind: str, name: str) -> dict[str, Any] | None:
        self.data = self._read()
        return next((r for r in self.rows(kind) if r["cell"] == name), None)

    def add(self, kind: str, row: dict[str, Any], git_commit: bool = False) -> None:
        import fcntl

        if row["recipe_hash"] != self.hash:
            raise ValueError(f"row {row['cell']} has recipe {row['recipe_hash']}, the results {self.hash}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.data = self._read()
            entry = self.data["ablations"][self.name]
            entry[kind] = [r for r in entry[kind] if r["cell"] != row["cell"]] + [row]
            order = {"on": 1, "off": 0}
            entry[kind].sort(key=lambda r: (r["tokens"], order[r["prior"]], r["seed"], r["cell"]))
            write_json(self.path, self.data)
            if git_commit:
                git_commit_file(self.path, f"Prior ablation ({self.name}): {kind[:-1]} {row['cell']} finished")


def git_commit_file(path: Path, message: str) -> None:
    """Commit this one file (retrying while another git command holds the index)."""
    for _ in range(30):
        add = subprocess.run(["git", "add", str(path)], cwd=REPO, capture_output=True, text=True)
        if add.returncode == 0:
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", str(path)], cwd=REPO,
                                  capture_output=True, text=True)
            if done.returncode == 0 or "nothing to commit" in done.stdout + done.stderr:
                return
        time.sleep(5)
    print(f"warning: could not commit {path}", file=sys.stderr)
