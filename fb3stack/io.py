"""Atomic file writes and content hashes.

Every artefact is written to a temporary file in the same folder and renamed into place, so a crash
leaves either the old file or the new one, never half of one. Hashes catch what renames cannot: a file
truncated or changed afterwards (a full disk, a bad copy, a hand edit) is detected, not loaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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
