"""Shared k-fold split: one folds.csv per workspace, used by every member of the zoo.

Stratification is multilabel over the one-hot score levels of all six traits (6 x 9 indicator columns), so
each fold gets a similar distribution of every trait, including the rare 1.0 and 5.0 scores.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from fb3stack.constants import FOLD_COL, ID_COL, SCORE_MAX, SCORE_MIN, SCORE_STEP, TARGETS
from fb3stack.data import DataError

logger = logging.getLogger(__name__)


def score_indicators(scores: np.ndarray) -> np.ndarray:
    """(n, traits) scores → (n, traits * levels) 0/1 matrix for multilabel stratification."""
    levels = int(round((SCORE_MAX - SCORE_MIN) / SCORE_STEP)) + 1
    idx = np.clip(np.round((np.asarray(scores) - SCORE_MIN) / SCORE_STEP).astype(int), 0, levels - 1)
    out = np.zeros((idx.shape[0], idx.shape[1] * levels), dtype=np.int8)
    for j in range(idx.shape[1]):
        out[np.arange(len(idx)), j * levels + idx[:, j]] = 1
    return out


def make_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """DataFrame[text_id, fold] in the row order of `train`."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(train) < n_folds:
        raise ValueError(f"cannot split {len(train)} essays into {n_folds} folds")
    y = score_indicators(train[list(TARGETS)].to_numpy())
    fold = np.full(len(train), -1, dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(train)), y)):
        fold[valid] = k
    fold = balance_fold_sizes(fold, y, n_folds)
    return pd.DataFrame({ID_COL: train[ID_COL].to_numpy(), FOLD_COL: fold})


def balance_fold_sizes(fold: np.ndarray, y: np.ndarray, n_folds: int) -> np.ndarray:
    """Move a few rows so fold sizes differ by at most one.

    Iterative stratification balances label counts, not fold sizes (on FB3 they differ by up to ~10). Each
    move takes, from the largest fold to the smallest, the row whose labels are most over-represented in the
    largest fold relative to the smallest, so the label balance is kept while sizes are evened out.
    """
    fold = fold.copy()
    y = y.astype(np.float64)
    while True:
        sizes = np.bincount(fold, minlength=n_folds)
        big, small = int(np.argmax(sizes)), int(np.argmin(sizes))
        if sizes[big] - sizes[small] <= 1:
            return fold
        share_big = y[fold == big].sum(0) / sizes[big]
        share_small = y[fold == small].sum(0) / max(sizes[small], 1)
        rows = np.flatnonzero(fold == big)
        gain = y[rows] @ (share_big - share_small)
        fold[rows[int(np.argmax(gain))]] = small


def read_folds(path: str | os.PathLike, train: pd.DataFrame) -> pd.DataFrame:
    """Read an external or saved folds file and check it covers exactly the training ids, once each."""
    path = Path(path)
    if not path.is_file():
        raise DataError("folds file not found", file=path)
    df = pd.read_csv(path, dtype={ID_COL: str})
    for col in (ID_COL, FOLD_COL):
        if col not in df.columns:
            raise DataError(f"missing column; found {list(df.columns)}", file=path, column=col)
    df = df[[ID_COL, FOLD_COL]].copy()
    df[ID_COL] = df[ID_COL].str.strip()
    dup = df[ID_COL].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError("text_id listed twice", file=path, row=i + 1, column=ID_COL, text_id=df[ID_COL].iloc[i])
    folds = pd.to_numeric(df[FOLD_COL], errors="coerce")
    bad = folds.isna() | (folds < 0) | (folds != folds.round())
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"fold must be a non-negative integer, got {df[FOLD_COL].iloc[i]!r}", file=path, row=i + 1,
            column=FOLD_COL, text_id=df[ID_COL].iloc[i],
        )
    df[FOLD_COL] = folds.astype(int)
    known = set(df[ID_COL])
    missing = [t for t in train[ID_COL] if t not in known]
    if missing:
        raise DataError(f"{len(missing)} training ids have no fold, e.g. {missing[:3]}", file=path, column=ID_COL)
    extra = known - set(train[ID_COL])
    if extra:
        # an external split of the full train set may be used with a subset; the extra ids are dropped
        logger.info("%s: %d ids are not in the training data and are ignored", path, len(extra))
    ks = sorted(df[FOLD_COL].unique())
    out = train[[ID_COL]].merge(df, on=ID_COL, how="left")
    present = sorted(out[FOLD_COL].unique())
    if present != list(range(len(present))) or len(present) < 2:
        raise DataError(f"folds must be numbered 0..k-1 with k >= 2, found {ks}", file=path, column=FOLD_COL)
    return out


def fold_summary(train: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per-fold size and trait means, for the user to eyeball the split."""
    merged = train.merge(folds, on=ID_COL)
    summary = merged.groupby(FOLD_COL)[list(TARGETS)].mean()
    summary.insert(0, "n", merged.groupby(FOLD_COL).size())
    return summary
