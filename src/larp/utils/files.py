"""Files that are either complete or absent: atomic writes and JSON."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call `write(tmp_path)` then rename over `path`, so a failure never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON with sorted keys, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)
