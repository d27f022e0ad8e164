"""The contract every zoo member fulfils, whatever its model.

A member is trained fold by fold by `fb3stack.base.runner`: `fit_fold` learns from the fold's training rows,
saves everything needed to predict into `fold_dir`, and returns predictions for the fold's validation rows.
`predict_fold` later loads `fold_dir` and scores new essays, with no network and nothing else at hand.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fb3stack.config import OMIT_IF_DEFAULT
from fb3stack.workspace import Workspace


@dataclass
class MemberConfig:
    """Fields every member config has; each member kind subclasses this with its own settings."""

    # Settings that change how fast or where a member runs, never what it learns. They are left out of the
    # member's config hash, so a zoo trained on 2 cores is not retrained on 16. A kind with more such settings
    # extends the set: `execution_only = MemberConfig.execution_only | {"batch_size"}`.
    execution_only: ClassVar[frozenset[str]] = frozenset({
        "num_threads", "device", "eval_batch_size", "log_every", "optimizer_impl", "num_workers",
        "dataloader_workers", "progress",
    })

    name: str
    kind: str
    seed: int = 42
    # a seed average: one single-seed member per seed, trained into models/<name>/seed<s>/ on the shared folds, and
    # their mean as this member's OOF and predictions (fb3stack.base.runner, "Seed averages"); `seed` is then
    # unused. Unset it is neither written nor hashed, so members configured before it existed never retrain.
    seeds: list[int] | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})


@dataclass
class FoldResult:
    preds: np.ndarray  # (n_valid, 6) predictions for the fold's validation rows, in their given order
    embeddings: np.ndarray | None = None  # (n_valid, dim) pooled features of the same rows, if the member has them
    history: pd.DataFrame | None = None  # per-step/epoch training metrics, written as fold<k>/history.csv
    info: dict | None = None  # anything worth keeping in metrics.json (best step, wall time ...)
    # validation predictions of other checkpoints of the same fold (e.g. a transformer's "best" and "last"),
    # kept as fold<k>/oof_<name>.parquet so the member's metrics can report each one's OOF score
    alt_preds: dict[str, np.ndarray] | None = None


class Member(ABC):
    config_cls: ClassVar[type[MemberConfig]] = MemberConfig
    # what a job of this kind asks a scheduler for (the Ray executor: one GPU per job when the cluster has any)
    wants_gpu: ClassVar[bool] = False

    def __init__(self, config: MemberConfig, workspace: Workspace | None = None) -> None:
        self.config = config
        # workspace gives members a cache folder; None at predict time from a bundle
        self.workspace = workspace

    @abstractmethod
    def fit_fold(self, train: pd.DataFrame, valid: pd.DataFrame, fold: int, fold_dir: Path) -> FoldResult:
        """Fit on `train` (text_id, full_text, traits), save to `fold_dir`, return predictions for `valid`."""

    @abstractmethod
    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        """Load the model saved in `fold_dir` and predict (n, 6) scores for `df` (text_id, full_text)."""

    def describe(self) -> dict:
        """What `train --dry-run` shows: the member checked without training, data or network."""
        return {"name": self.config.name, "kind": self.config.kind, "here": "cpu"}

    def shared_files(self, fold_dir: Path) -> list[Path]:
        """Files outside `fold_dir` that loading it needs (stored once per member, e.g. a transformer's frozen
        layers); a bundle copies them along, at the same place relative to the fold."""
        return []

    def check_shared(self, fold_dir: Path) -> list[str]:
        """Problems with those files (missing, not the ones the fold recorded); the fold's seal covers the rest."""
        return []

    def predict_folds(self, df: pd.DataFrame, fold_dirs: list[Path]) -> np.ndarray:
        """Average of the fold models; members that can share work across folds (embeddings) override this."""
        return np.mean([self.predict_fold(df, d) for d in fold_dirs], axis=0)
