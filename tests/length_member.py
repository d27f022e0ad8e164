"""A small real member for testing the fold machinery: ridge regression on essay-length features.

Importable by Ray workers too (tests put this folder on their PYTHONPATH), which is why it is a module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge

from fb3stack.base import FoldResult, Member, MemberConfig, register_member
from fb3stack.constants import TARGETS


@dataclass
class LengthRidgeConfig(MemberConfig):
    alpha: float = 1.0
    die_once_marker: str | None = None  # kill the worker process on the first attempt of fold 1


def length_features(df: pd.DataFrame) -> np.ndarray:
    text = df["full_text"]
    words = text.str.split().str.len()
    return np.column_stack([np.log1p(words), np.log1p(text.str.count(r"[.!?]")), text.str.count(",") / (1 + words)])


@register_member("length-ridge")
class LengthRidge(Member):
    config_cls = LengthRidgeConfig
    fits: list[int] = []
    crash_on: int = -1  # simulates an exception in the middle of this fold

    def fit_fold(self, train, valid, fold, fold_dir: Path):
        (fold_dir / "partial.bin").write_bytes(b"x")
        if fold == LengthRidge.crash_on:
            raise RuntimeError("killed")
        marker = self.config.die_once_marker
        if marker and fold == 1 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # the process dies as if OOM-killed or preempted
        LengthRidge.fits.append(fold)
        model = Ridge(alpha=self.config.alpha).fit(length_features(train), train[list(TARGETS)].to_numpy())
        joblib.dump(model, fold_dir / "ridge.joblib")
        return FoldResult(self.predict_fold(valid, fold_dir), embeddings=length_features(valid))

    def predict_fold(self, df, fold_dir: Path):
        return np.clip(joblib.load(fold_dir / "ridge.joblib").predict(length_features(df)), 1, 5)

