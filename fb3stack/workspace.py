"""The workspace: one folder holding everything a zoo run produces.

    workspace/
      folds.csv            text_id, fold  (made once, shared by every member)
      folds.json           how the folds were made + hash of the data they split
      models/<name>/       config.yaml, oof.parquet, metrics.json, manifest.json, fold<k>/...
      blends/<name>/       config.yaml, spec.json, oof.parquet, table.csv, table.md, manifest.json
      cache/<kind>/        reusable intermediate results (embeddings, features, tokens)
      logs/                one log file per command
      submission.csv, report.md

Each artefact folder carries a manifest with the hashes of the data, folds and config it was made from;
`stale_reasons` compares them with the current ones so an out-of-date artefact is detected, not used.
Finished folders (a member's fold, a blend) are also *sealed*: `files.json` lists the sha256 of every file
in them, so a truncated or altered file is detected before it is loaded (`verify_folder`), and
`folder_digest` gives one hash of what prediction reads from the folder. Writing commands hold the
workspace lock (`workspace_lock`), so two of them never write into one workspace at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil

from fb3stack.config import DataConfig, FoldsConfig, RunConfig, config_dir, resolve_path
from fb3stack.constants import FOLD_COL, ID_COL
from fb3stack.data import DataError, load_train, resolve_data_dir, subsample
from fb3stack.data import fingerprint as data_fingerprint
from fb3stack.folds import make_folds, read_folds
from fb3stack.io import read_json, sha256_file, sha256_file_cached, sha256_json, write_csv, write_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SEAL = "files.json"
LOCK = ".fb3stack.lock"
IMPORTS = "imports.json"  # members brought in by `fb3stack import` (fb3stack.workspace_import): name -> source
# OOF-only files that prediction never reads: a bundle leaves them out, and they are not part of a fold's
# prediction digest (their hashes are still checked wherever they are present)
PREDICT_UNUSED = frozenset({"embeddings.npy"})


class StaleArtefactError(RuntimeError):
    """An artefact was made from other data, folds or settings than the current run."""


class CorruptArtefactError(RuntimeError):
    """An artefact's files do not match the hashes recorded when it was written (truncated, altered, missing)."""


class WorkspaceBusyError(RuntimeError):
    """Another fb3stack command is writing to this workspace."""


class MissingArtefactError(FileNotFoundError):
    """A workspace, blend, bundle or saved member that a command needs is not there (a wrong path or name)."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike) -> Workspace:
        root = Path(path).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @classmethod
    def existing(cls, path: str | os.PathLike) -> Workspace:
        """A workspace that must already exist (commands that read what `run` made): never created here."""
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise MissingArtefactError(f"{root}: no such workspace; pass the folder `fb3stack run` or `train` wrote "
                                       "(--workspace)")
        return cls(root)

    @property
    def folds_path(self) -> Path:
        return self.root / "folds.csv"

    @property
    def folds_meta_path(self) -> Path:
        return self.root / "folds.json"

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def blend_dir(self, name: str) -> Path:
        return self.root / "blends" / name

    def cache_dir(self, kind: str) -> Path:
        path = self.root / "cache" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def logs_dir(self) -> Path:
        path = self.root / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def list_models(self) -> list[str]:
        models = self.root / "models"
        return sorted(p.name for p in models.iterdir() if (p / "oof.parquet").exists()) if models.is_dir() else []


def imported_members(root: str | os.PathLike) -> dict[str, dict]:
    """Members this workspace imported from others (`fb3stack import`): name -> {source, content_hash, ...}."""
    path = Path(root) / IMPORTS
    return read_json(path) if path.is_file() else {}


def write_manifest(folder: str | os.PathLike, **hashes: object) -> None:
    from fb3stack import __version__

    write_json(Path(folder) / MANIFEST, {**hashes, "fb3stack_version": __version__,
                                         "created_at": dt.datetime.now(dt.timezone.utc).isoformat()})


def read_manifest(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / MANIFEST
    return read_json(path) if path.is_file() else None


def update_manifest(folder: str | os.PathLike, **fields: object) -> None:
    """Add fields to an existing manifest (atomically), e.g. a member's content hash once it is complete."""
    manifest = read_manifest(folder) or {}
    write_json(Path(folder) / MANIFEST, {**manifest, **fields})


def seal_folder(folder: str | os.PathLike) -> dict[str, dict]:
    """Write `files.json`: sha256 and size of every file under `folder` (relative paths, sorted)."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == SEAL or path.name.endswith(".tmp"):
            continue
        files[rel] = {"sha256": sha256_file_cached(path), "size": path.stat().st_size}
    write_json(folder / SEAL, {"files": files})
    return files


def verify_folder(folder: str | os.PathLike, may_be_absent: frozenset[str] = frozenset()) -> list[str]:
    """Empty when every file `files.json` lists is there with its recorded size and sha256; else the problems.

    Files named in `may_be_absent` may be missing (a bundle leaves OOF-only files out), never different.
    """
    folder = Path(folder)
    if not (folder / SEAL).is_file():
        return [f"{folder} has no {SEAL} (unfinished, or written by an older fb3stack)"]
    try:
        files = read_json(folder / SEAL)["files"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{folder / SEAL} is unreadable ({err})"]
    problems = []
    for rel, rec in files.items():
        path = folder / rel
        if not path.is_file():
            if Path(rel).name not in may_be_absent:
                problems.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if size != rec["size"]:
            problems.append(f"{path} has {size} bytes, {rec['size']} were written (truncated or replaced)")
        elif sha256_file_cached(path) != rec["sha256"]:
            problems.append(f"{path} does not match its recorded sha256 (altered)")
    return problems


def folder_digest(folder: str | os.PathLike) -> str:
    """One hash of the sealed files prediction reads (OOF-only files left out): equal digests, equal models."""
    files = read_json(Path(folder) / SEAL)["files"]
    return sha256_json({rel: rec["sha256"] for rel, rec in files.items() if Path(rel).name not in PREDICT_UNUSED})


def stale_reasons(folder: str | os.PathLike, **expected: str) -> list[str]:
    """Empty when `folder` was made from exactly the expected hashes; otherwise what differs."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder} has no {MANIFEST}"]
    return [f"{key} changed ({str(manifest.get(key))[:12]} -> {value[:12]})" for key, value in expected.items()
            if manifest.get(key) != value]


@dataclass
class Prepared:
    """Validated training data with its fold column, and the hashes that identify both."""

    workspace: Workspace
    data_dir: Path
    train: pd.DataFrame  # text_id, full_text, six traits, fold
    data_hash: str
    folds_hash: str

    @property
    def n_folds(self) -> int:
        return int(self.train[FOLD_COL].max()) + 1


def load_training_data(data: DataConfig, data_dir: str | os.PathLike | None = None) -> tuple[Path, pd.DataFrame]:
    root = resolve_data_dir(data_dir, data.data_dir)
    train = load_train(root / data.train_file, on_bad_score=data.on_bad_score)
    return root, subsample(train, data.limit, data.limit_seed)


def ensure_folds(ws: Workspace, train: pd.DataFrame, cfg: FoldsConfig, force: bool = False,
                 base_dir: Path | None = None) -> pd.DataFrame:
    """Make (or import) folds.csv once; afterwards reuse it, refusing silently different settings.

    `cfg.file` is found by `fb3stack.config.resolve_path` against `base_dir`, the zoo YAML's folder.

    Changing the split after members were trained would make their OOFs incomparable, so a mismatch is an
    error unless `force` is given (which rewrites the folds; members then show up as stale and retrain).
    """
    data_hash = data_fingerprint(train)
    file = resolve_path(cfg.file, base_dir) if cfg.file else None
    if file is not None and not file.is_file():
        raise DataError("folds file not found (folds.file / --from)", file=file)
    wanted = {"data_hash": data_hash, "n_folds": cfg.n_folds, "seed": cfg.seed,
              "source": str(file.resolve()) if file else None, "source_hash": sha256_file(file) if file else None}
    if ws.folds_path.exists() and ws.folds_meta_path.exists() and not force:
        meta = read_json(ws.folds_meta_path)
        if cfg.file:  # an imported split's n_folds/seed come from the file
            wanted["n_folds"], wanted["seed"] = meta.get("n_folds"), meta.get("seed")
        diff = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
        if diff:
            raise StaleArtefactError(f"{ws.folds_path} was made with other settings or data: "
                                     + "; ".join(f"{k}: {str(a)[:16]} -> {str(b)[:16]}" for k, (a, b) in diff.items())
                                     + ". Use a new workspace, or --force to rewrite the folds (every member then "
                                     "retrains).")
        return read_folds(ws.folds_path, train)
    if file:
        folds = read_folds(file, train)
        wanted["n_folds"], wanted["seed"] = int(folds[FOLD_COL].max()) + 1, None
        logger.info("imported %d-fold split from %s", wanted["n_folds"], file)
    else:
        folds = make_folds(train, cfg.n_folds, cfg.seed)
        logger.info("made %d-fold MultilabelStratifiedKFold split (seed %d)", cfg.n_folds, cfg.seed)
    write_csv(ws.folds_path, folds)
    write_json(ws.folds_meta_path, {**wanted, "folds_hash": sha256_file(ws.folds_path)})
    return folds


def prepare(cfg: RunConfig, data_dir: str | os.PathLike | None = None, workspace: str | os.PathLike | None = None,
            force_folds: bool = False, loaded: tuple[Path, pd.DataFrame] | None = None) -> Prepared:
    """Check the data and make or load the folds: the first step of every command that trains or blends.

    `loaded` is (data folder, training rows) from `load_training_data` when the caller validated them already.
    """
    root, train = loaded if loaded is not None else load_training_data(cfg.data, data_dir)
    ws = Workspace.at(workspace or cfg.workspace)
    folds = ensure_folds(ws, train, cfg.folds, force=force_folds, base_dir=config_dir(cfg.source))
    merged = train.merge(folds, on=ID_COL, how="left", validate="one_to_one")
    if merged[FOLD_COL].isna().any():
        raise DataError("some training ids have no fold", file=ws.folds_path, column=FOLD_COL)
    merged[FOLD_COL] = merged[FOLD_COL].astype(int)
    return Prepared(ws, root, merged, data_fingerprint(train), sha256_file(ws.folds_path))


# ----------------------------------------------------------------------------------------------------------------
# One writer per workspace.


def _process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a live holder from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_lock(path: Path) -> dict:
    """A lock file's record; empty when it is gone or unreadable (half-written)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def lock_holder(ws: Workspace) -> dict | None:
    """Who holds the workspace lock (pid, host, command, started_at), or None when it is free or stale."""
    info = _read_lock(ws.root / LOCK)
    return info if _holder_alive(info) else None


@contextlib.contextmanager
def workspace_lock(ws: Workspace, command: str) -> Iterator[Path]:
    """Hold `<workspace>/.fb3stack.lock` while a command writes to the workspace; refuse if another holds it.

    The file records pid, host, command and start time. It is taken with O_EXCL, so two commands starting
    together cannot both get it; one whose process has died (same host: the pid is gone or reused) is taken
    over, so a killed run never leaves the workspace stuck. A lock from another host cannot be checked and
    is respected until removed by hand. Read-only commands do not take it.
    """
    path = ws.root / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "argv": sys.argv,
          "started_at": dt.datetime.now(dt.timezone.utc).isoformat(), "proc_start": _process_start(os.getpid())}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(ws)
            if holder is None:
                _break_stale(path)
                continue
            if int(holder["pid"]) == os.getpid() and holder.get("host") == me["host"]:
                yield path  # re-entrant within one process (e.g. `run` calling the blend step)
                return
            raise WorkspaceBusyError(
                f"{ws.root} is in use by `fb3stack {holder.get('command')}` (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started_at')}). Wait for it to finish; read-only commands "
                f"(check-data, predict --bundle, status, report) still work. If no such process is running, delete "
                f"{path}.") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
            fh.flush()
            os.fsync(fh.fileno())
        break
    else:
        raise WorkspaceBusyError(f"could not take the lock {path}; another command keeps taking it")
    try:
        yield path
    finally:
        if _read_lock(path).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()


def _break_stale(path: Path) -> None:
    """Remove a stale lock by renaming it first: of two processes breaking it at once only one rename wins,
    so the loser cannot delete the winner's fresh lock."""
    grave = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    info = _read_lock(grave)
    if _holder_alive(info):
        # between our check and the rename a live process took the lock: give it back
        with contextlib.suppress(FileExistsError):
            os.link(grave, path)
    else:
        logger.warning("took over the workspace lock of `fb3stack %s` (pid %s on %s), whose process is gone",
                       info.get("command"), info.get("pid"), info.get("host"))
    grave.unlink(missing_ok=True)


def _holder_alive(info: dict) -> bool:
    """True unless the holder provably died: on this host its pid is gone or now names another process
    (killed, even with SIGKILL); a holder on another host cannot be checked and counts as alive."""
    if not info.get("pid"):
        return False
    if info.get("host") != socket.gethostname():
        return True
    pid = int(info["pid"])
    return psutil.pid_exists(pid) and (not info.get("proc_start") or _process_start(pid) == info["proc_start"])


def fitted_blends(root: str | os.PathLike) -> list[Path]:
    """The fitted blends (blends/<name>/spec.json) of a workspace, oldest first."""
    blends = Path(root) / "blends"
    return sorted((p for p in blends.glob("*") if (p / "spec.json").is_file()),
                  key=lambda p: (p / "spec.json").stat().st_mtime) if blends.is_dir() else []


def find_blend(root: str | os.PathLike, name: str | None = None, newest: bool = False) -> Path | None:
    """A workspace's fitted blend: blends/<name>; without a name the only one (several: an error), or with
    `newest` the most recently fitted (None when there is none)."""
    blends = Path(root) / "blends"
    found = fitted_blends(root)
    names = [p.name for p in found]
    if name:
        if not (blends / name / "spec.json").is_file():
            have = f"fitted blends here: {', '.join(names)}" if names else "this workspace has no fitted blend yet"
            raise MissingArtefactError(f"--blend {name}: no fitted blend {blends / name} ({have}); fit it with "
                                       "`fb3stack blend` or `fb3stack run`")
        return blends / name
    if newest and len(found) > 1:
        logger.info("%d blends in %s; using the newest, %s (choose with --blend)", len(found), blends, found[-1].name)
    if newest or len(found) == 1:
        return found[-1] if found else None
    if not found:
        raise MissingArtefactError(f"{Path(root)}: no fitted blend (blends/<name>/spec.json); fit one with "
                                   "`fb3stack blend` or `fb3stack run` first")
    raise MissingArtefactError(f"{blends}: {len(found)} fitted blends ({', '.join(names)}); choose one with "
                               + " or ".join(f"--blend {n}" for n in names[:3]))
