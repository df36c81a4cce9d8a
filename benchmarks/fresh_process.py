"""What the benchmarks share: each measurement in a fresh process (its own peak memory, no warm caches from
another run), and the JSON report on stdout and in a file."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parse_args(ap: argparse.ArgumentParser, child_main: Callable[[str], None],
               timeout: float) -> argparse.Namespace | None:
    """Parse a benchmark's command line with the options they all have (--timeout per measurement, --out,
    and the hidden --_child of `spawn`). In a child process: run `child_main(spec_path)` and return None."""
    ap.add_argument("--timeout", type=float, default=timeout, help="seconds per measurement")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child_main(args._child)
        return None
    return args


def spawn(script: str | Path, spec: dict[str, Any], tmp: Path, timeout: float,
          env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `script --_child SPEC.json` in a fresh process with larp's sources on the path (and
    OMP_NUM_THREADS from spec["threads"] when set); the JSON it wrote to spec["result"], or the error it
    ended with. spec["result"] (and spec["tmp"], a scratch folder of the run) are set here."""
    n = len(list(tmp.glob("spec_*.json")))
    spec_path, result = tmp / f"spec_{n}.json", tmp / f"result_{n}.json"
    spec.update(result=str(result), tmp=str(tmp / f"run_{n}"))
    spec_path.write_text(json.dumps(spec))
    child_env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {}))
    if spec.get("threads"):
        child_env["OMP_NUM_THREADS"] = str(spec["threads"])
    try:
        proc = subprocess.run([sys.executable, str(script), "--_child", str(spec_path)], capture_output=True,
                              text=True, timeout=timeout, env=child_env, cwd=tmp)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode or not result.exists():
        return {"error": (proc.stderr.strip().splitlines() or ["(no output)"])[-1]}
    return json.loads(result.read_text())


def emit(report: dict[str, Any], out: str | None) -> None:
    """Print the report as JSON, and write it to `out` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def reference_on_path(path: str, deps: str | None) -> None:
    """A checkout of the reference implementation first on sys.path, and `deps` (a `pip install --target`
    folder of the extra packages it imports) after our site-packages: only what the reference adds."""
    sys.path.insert(0, path)
    if deps:
        sys.path.append(deps)


def child_result(spec: dict[str, Any], out: dict[str, Any]) -> None:
    """In the child: `out` with the process's peak resident memory, written where `spawn` reads it."""
    import resource

    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["result"]).write_text(json.dumps(out))
