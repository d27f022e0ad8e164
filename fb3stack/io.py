"""Atomic file writes and content hashes.

Every artefact is written to a temporary file in the same folder and renamed into place, so a crash
leaves either the old file or the new one, never half of one. Hashes catch what renames cannot: a file
truncated or changed afterwards (a full disk, a bad copy, a hand edit) is detected, not loaded.

Temporary names carry their writer (`.<name>.<pid>@<host>.<random>.tmp`), so the next write to the same path
removes what a killed writer left behind (a half-built bundle can be gigabytes) without touching a live one's.
Files and folders end up with the permissions the umask gives (mkstemp/mkdtemp alone would make them private).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

logger = logging.getLogger(__name__)


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _owner_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


_LEFTOVER = re.compile(r"\.(?:(?P<pid>\d+)@(?P<host>.+)\.)?[^.]+\.tmp")


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings (`.<name>.*.tmp`) that killed writers of `path` left; a live writer's (its
    process still running on this host, or on another host, which cannot be checked) is kept."""
    import psutil

    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    host = socket.gethostname()
    for leftover in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        m = _LEFTOVER.fullmatch(leftover.name[len(path.name) + 1:])
        if m is None or (m["pid"] and (m["host"] != host or psutil.pid_exists(int(m["pid"])))):
            continue  # someone else's name, a writer on another host, or a live one
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    if removed:
        logger.info("removed %d leftover(s) of an interrupted write of %s: %s", len(removed), path,
                    ", ".join(p.name for p in removed))
    return removed


def umask_permissions(root: str | os.PathLike) -> None:
    """Give every folder and file under `root` the umask's permissions, e.g. after copying artefacts that an older
    fb3stack wrote private (0700/0600) into a bundle another user (a notebook) must read."""
    mask = _umask()
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder, or a place this user cannot
    create files in (a read-only bundle or dataset)."""
    from fb3stack.data import DataError

    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError("is a folder; --out names the file to write", file=path)
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:  # a real file, as the write will make: access() cannot see every read-only mount and says yes to root
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise DataError(f"cannot write here ({parent}: {err.strerror}); choose a writable --out", file=path) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def write_csv(path: str | os.PathLike, df: pd.DataFrame, **kwargs: Any) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.save would add .npy to a name
        np.save(fh, arr)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=4096)
def _sha256_stamped(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(path)


def sha256_file_cached(path: str | os.PathLike) -> str:
    """sha256_file memoised on (path, size, mtime, inode): a multi-GB checkpoint is hashed once per process
    unless it changes. Any rewrite changes the stamp, so a changed file is always hashed again."""
    st = os.stat(path)
    return _sha256_stamped(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz_checked(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Arrays plus their own sha256 in one atomically written .npz: a reader can tell a damaged store."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays, _sha256=np.array(_arrays_digest(arrays)))


def load_npz_checked(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of a `save_npz_checked` file; None (with a warning) when it is missing, truncated or altered,
    so the caller recomputes instead of using damaged values."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - a damaged zip/npy raises many kinds of errors
        logger.warning("%s is damaged (%s: %s); it will be rebuilt", path, type(err).__name__, err)
        return None
    stored = arrays.pop("_sha256", None)
    if stored is None or str(stored) != _arrays_digest(arrays):
        logger.warning("%s does not match its checksum; it will be rebuilt", path)
        return None
    return arrays


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating, np.ndarray)):
        return o.tolist()  # the Python int / float (nested lists for an array)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
