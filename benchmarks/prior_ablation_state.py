"""The prior ablation's bookkeeping: the results file shared by its workers, and each cell's finished stages,
so that a killed run resumes at the stage where it stopped (used by benchmarks/prior_ablation.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


class Results:
    """benchmarks/results/prior_ablation.json: one row per finished cell under `cells` (reruns and probes
    under their own keys), all of one base recipe (`recipe_hash`). Rows are added under a file lock, so that
    several workers can share the file."""

    KINDS = ("cells", "reruns", "probes")

    def __init__(self, path: Path, recipe_hash: str, base: dict[str, Any]):
        self.path, self.hash, self.base = path, recipe_hash, base
        self.data = self._read()

    def _read(self) -> dict[str, Any]:
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        old = data.get("recipe_hash")
        if old is not None and old != self.hash and any(data.get(k) for k in ("cells", "reruns")):
            raise SystemExit(f"{self.path} holds rows of another base recipe ({old}; this one is {self.hash}): "
                             "move it away or pass --results to write elsewhere")
        data["recipe_hash"] = self.hash
        data["base_recipe"] = self.base
        for key in self.KINDS:
            data.setdefault(key, [])
        return data

    def done(self, kind: str, name: str) -> dict[str, Any] | None:
        self.data = self._read()
        return next((r for r in self.data[kind] if r["cell"] == name), None)

    def add(self, kind: str, row: dict[str, Any], git_commit: bool = False) -> None:
        import fcntl

        if kind != "probes" and row["recipe_hash"] != self.hash:
            raise ValueError(f"row {row['cell']} has recipe {row['recipe_hash']}, the results {self.hash}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.data = self._read()
            self.data[kind] = [r for r in self.data[kind] if r["cell"] != row["cell"]] + [row]
            order = {"on": 1, "off": 0}
            self.data[kind].sort(key=lambda r: (r["tokens"], order[r["prior"]], r["seed"], r["cell"]))
            write_json(self.path, self.data)
            if git_commit:
                git_commit_file(self.path, f"Prior ablation: {kind[:-1]} {row['cell']} finished")


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


class CellState:
    """<cell folder>/state.json: the recipe hash the cell was started with and the results of its stages."""

    def __init__(self, folder: Path, recipe_hash: str):
        self.file = folder / "state.json"
        self.state = json.loads(self.file.read_text()) if self.file.exists() else {"recipe_hash": recipe_hash,
                                                                                    "stages": {}}
        if self.state["recipe_hash"] != recipe_hash:
            raise SystemExit(f"{folder} was started with recipe {self.state['recipe_hash']}, not {recipe_hash}: "
                             "delete the folder to redo the cell")

    def get(self, stage: str) -> dict[str, Any] | None:
        return self.state["stages"].get(stage)

    def put(self, stage: str, info: dict[str, Any]) -> None:
        self.state["stages"][stage] = info
        write_json(self.file, self.state)


def run_stages(state: CellState, stages: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run the stages not finished yet (each a function returning a dict), timing each; return all results."""
    for name, fn in stages:
        if state.get(name) is not None:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        info = fn()
        info["seconds"] = round(time.perf_counter() - t0, 1)
        info["cpu_seconds"] = round(time.process_time() - c0, 1)
        state.put(name, info)
        print(f"  {name}: {json.dumps(info)[:300]}", flush=True)
    return {name: state.get(name) for name, _ in stages}
