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
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fb3stack.config import DataConfig, FoldsConfig, RunConfig
from fb3stack.constants import FOLD_COL, ID_COL
from fb3stack.data import DataError, load_train, resolve_data_dir, subsample
from fb3stack.data import fingerprint as data_fingerprint
from fb3stack.folds import make_folds, read_folds
from fb3stack.io import read_json, sha256_file, write_csv, write_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class StaleArtefactError(RuntimeError):
    """An artefact was made from other data, folds or settings than the current run."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike) -> Workspace:
        root = Path(path).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
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


def write_manifest(folder: str | os.PathLike, **hashes: str) -> None:
    from fb3stack import __version__

    write_json(
        Path(folder) / MANIFEST,
        {**hashes, "fb3stack_version": __version__, "created_at": dt.datetime.now(dt.timezone.utc).isoformat()},
    )


def read_manifest(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / MANIFEST
    return read_json(path) if path.is_file() else None


def stale_reasons(folder: str | os.PathLike, **expected: str) -> list[str]:
    """Empty when `folder` was made from exactly the expected hashes; otherwise what differs."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder} has no {MANIFEST}"]
    return [
        f"{key} changed ({str(manifest.get(key))[:12]} -> {value[:12]})"
        for key, value in expected.items()
        if manifest.get(key) != value
    ]


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


def ensure_folds(ws: Workspace, train: pd.DataFrame, cfg: FoldsConfig, force: bool = False) -> pd.DataFrame:
    """Make (or import) folds.csv once; afterwards reuse it, refusing silently different settings.

    Changing the split after members were trained would make their OOFs incomparable, so a mismatch is an
    error unless `force` is given (which rewrites the folds; members then show up as stale and retrain).
    """
    data_hash = data_fingerprint(train)
    source = str(Path(cfg.file).resolve()) if cfg.file else None
    wanted = {
        "data_hash": data_hash,
        "n_folds": cfg.n_folds,
        "seed": cfg.seed,
        "source": source,
        "source_hash": sha256_file(cfg.file) if cfg.file else None,
    }
    if ws.folds_path.exists() and ws.folds_meta_path.exists() and not force:
        meta = read_json(ws.folds_meta_path)
        if cfg.file:  # an imported split's n_folds/seed come from the file
            wanted["n_folds"], wanted["seed"] = meta.get("n_folds"), meta.get("seed")
        diff = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
        if diff:
            raise StaleArtefactError(
                f"{ws.folds_path} was made with other settings or data: "
                + "; ".join(f"{k}: {str(a)[:16]} -> {str(b)[:16]}" for k, (a, b) in diff.items())
                + ". Use a new workspace, or --force to rewrite the folds (every member then retrains)."
            )
        return read_folds(ws.folds_path, train)
    if cfg.file:
        folds = read_folds(cfg.file, train)
        wanted["n_folds"], wanted["seed"] = int(folds[FOLD_COL].max()) + 1, None
        logger.info("imported %d-fold split from %s", wanted["n_folds"], cfg.file)
    else:
        folds = make_folds(train, cfg.n_folds, cfg.seed)
        logger.info("made %d-fold MultilabelStratifiedKFold split (seed %d)", cfg.n_folds, cfg.seed)
    write_csv(ws.folds_path, folds)
    write_json(ws.folds_meta_path, {**wanted, "folds_hash": sha256_file(ws.folds_path)})
    return folds


def prepare(cfg: RunConfig, data_dir: str | os.PathLike | None = None, workspace: str | os.PathLike | None = None,
            force_folds: bool = False) -> Prepared:
    """Check the data and make or load the folds: the first step of every command that trains or blends."""
    root, train = load_training_data(cfg.data, data_dir)
    ws = Workspace.at(workspace or cfg.workspace)
    folds = ensure_folds(ws, train, cfg.folds, force=force_folds)
    merged = train.merge(folds, on=ID_COL, how="left", validate="one_to_one")
    if merged[FOLD_COL].isna().any():
        raise DataError("some training ids have no fold", file=ws.folds_path, column=FOLD_COL)
    merged[FOLD_COL] = merged[FOLD_COL].astype(int)
    return Prepared(ws, root, merged, data_fingerprint(train), sha256_file(ws.folds_path))
