"""Files that are either complete or absent, with the permissions the user's umask asks for; JSON; .npz
archives read within declared limits; verified downloads.

`tempfile.mkstemp` creates files readable by their owner only (0600), and renaming keeps that mode, so
every atomic write sets the mode a plain `open(path, "w")` would have given (0666 minus the umask)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_UMASK_LOCK = threading.Lock()
_TRUTHY = {"1", "on", "yes", "true"}


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # the portable way sets it and puts it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 without the umask's bits."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """The mode `mkdir` gives a new folder: 0777 without the umask's bits (`tempfile.mkdtemp` gives 0700)."""
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call `write(tmp_path)` then rename over `path`, so a failure never leaves a half-written file.

    The file gets the permissions of a plainly created one (the umask's), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def json_safe(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None: strict JSON (null), which every reader
    parses (Python's json would write NaN, which most other readers refuse)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON with sorted keys, atomically; undefined figures (NaN, inf) as null."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None
                      ) -> Path:
    """Write `tensors` as a safetensors file, atomically and with the umask's permissions (safetensors alone
    creates its files readable by their owner only)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except SafetensorError as exc:  # an I/O failure (a full disk) as safetensors reports it
        raise OSError(f"could not write {path}: {exc} (is the disk full?); nothing was written there") from exc
    return Path(path)


# ------------------------------------------------------------------------------------------ .npz
class NpzArchive:
    """An .npz archive whose arrays are checked before they are read: never unpickled, and refused when
    the size their header declares is over the caller's limit (a small compressed member can declare
    gigabytes). Errors are ValueErrors naming the member and the cause; use as a context manager."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ValueError(f"not a readable .npz archive ({exc})") from exc
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            name = info.filename.removesuffix(".npy")
            if name == info.filename or name in self._members:
                self._zip.close()
                raise ValueError(f"not an .npz archive of arrays (member {info.filename!r})")
            self._members[name] = info

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        return sorted(self._members)

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) that the member's .npy header declares, read without reading the data."""
        info = self._info(name)
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f".npy version {version} is not supported")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"array {name!r}: unreadable header ({exc})") from exc
        if dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects ({dtype}); only plain arrays are read")
        return tuple(int(s) for s in shape), dtype

    def read(self, name: str, max_bytes: int) -> np.ndarray:
        """The member's array, refused before reading when its declared size exceeds `max_bytes`."""
        shape, dtype = self.header(name)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > max_bytes:
            raise ValueError(f"array {name!r} declares {shape} {dtype} ({nbytes:,} bytes), more than the "
                             f"{max_bytes:,} bytes allowed here")
        info = self._info(name)
        if info.file_size > nbytes + 65_536:  # the .npy header is a few hundred bytes at most
            raise ValueError(f"array {name!r} unpacks to {info.file_size:,} bytes, more than its "
                             f"{nbytes:,} bytes of data")
        try:
            with self._zip.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"array {name!r} is truncated or corrupt ({exc})") from exc

    def _info(self, name: str) -> zipfile.ZipInfo:
        if name not in self._members:
            raise ValueError(f"missing array {name!r} (found {self.names})")
        return self._members[name]


# ------------------------------------------------------------------------------------------ downloads
def offline_mode() -> bool:
    """Whether downloads are off: HF_HUB_OFFLINE set to 1/true/yes/on (the Hugging Face convention)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def host_resolves(url: str) -> bool:
    """Whether the host of `url` has an address (a DNS look-up). False at once on a machine without network,
    where an HTTP client (the Hugging Face hub's retries with back-off) would take tens of seconds to fail."""
    import socket
    import urllib.parse

    host = urllib.parse.urlsplit(url).hostname or url
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: str | os.PathLike, size: int, sha256: str, what: str) -> Path:
    """`path` if it has exactly `size` bytes and SHA-256 `sha256`; a ValueError naming both otherwise.

    The size is compared first, so a wrong file costs no hashing."""
    path = Path(path)
    found = path.stat().st_size
    if found != size:
        raise ValueError(f"{path} has {found:,} bytes, expected {size:,} for {what} (a partial download or "
                         "another file): delete it and fetch the file again")
    digest = sha256_of(path)
    if digest != sha256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {sha256} for {what}: it is not the expected "
                         "file; delete it and fetch the file again")
    return path


def download_checked(url: str, target: Path, check: Callable[[Path], Any], timeout: float = 60) -> Path:
    """Fetch `url` into a temporary file next to `target`, run `check` on it, then rename it to `target`.

    Nothing is left behind on failure; the file gets the umask's permissions."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def fetch(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        check(Path(tmp))

    atomic_write_bytes(target, fetch)
    return target
