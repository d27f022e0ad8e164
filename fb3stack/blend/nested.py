"""Honest scoring: nested cross-validation of a blender over member OOF predictions.

The members' OOF rows are already out-of-fold for the first layer; the blender is a second model fitted on
them, so its score must come from rows it was not fitted on. Each outer split fits a fresh clone on the
outer-train rows only and predicts the held-out rows; the held-out predictions of one repeat cover every row
once and are scored with fb3stack.metrics. Outer folds are the zoo's own folds when the members carry a fold
column (the same rows the first layer held out), otherwise a seeded KFold, repeated with different seeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import clone
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from fb3stack.blend.methods import Blender, as_stack
from fb3stack.metrics import rmse_per_trait

# The blenders multiply (members x rows) matrices of a few thousand rows: BLAS threads only add overhead there
# and were 50x slower on a busy 2-core machine.
_BLAS_THREADS = 1


@dataclass(frozen=True)
class OuterSplit:
    repeat: int
    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray


def outer_splits(n: int, folds: np.ndarray | None = None, n_folds: int = 5, repeats: int = 1,
                 seed: int = 0) -> list[OuterSplit]:
    """The zoo's folds (one repeat: they are fixed) when `folds` is given, else `repeats` seeded KFolds."""
    if folds is not None:
        folds = np.asarray(folds)
        if len(folds) != n:
            raise ValueError(f"fold column has {len(folds)} rows for {n} essays")
        return [OuterSplit(0, int(k), np.flatnonzero(folds != k), np.flatnonzero(folds == k))
                for k in np.unique(folds)]
    out = []
    for r in range(repeats):
        kf = KFold(n_splits=n_folds, shuffle=True, random_state=seed + r)
        out += [OuterSplit(r, k, tr, te) for k, (tr, te) in enumerate(kf.split(np.arange(n)))]
    return out


def _iter_repeats(splits: list[OuterSplit]) -> Iterator[tuple[int, list[OuterSplit]]]:
    for r in sorted({s.repeat for s in splits}):
        yield r, [s for s in splits if s.repeat == r]


@dataclass
class NestedResult:
    """Held-out predictions of each repeat (repeats, n, 6) and their scores."""

    oof: np.ndarray
    rmse: np.ndarray  # (repeats, 6)
    seconds: float
    fitted: list[Blender] = field(default_factory=list, repr=False)

    @property
    def mcrmse(self) -> float:
        return float(self.rmse.mean(axis=1).mean())

    @property
    def mcrmse_std(self) -> float:
        return float(self.rmse.mean(axis=1).std())

    @property
    def per_trait(self) -> np.ndarray:
        return self.rmse.mean(axis=0)

    @property
    def mean_oof(self) -> np.ndarray:
        """Held-out predictions averaged over repeats (each row held out once per repeat)."""
        return self.oof.mean(axis=0)


def nested_cv(estimator: Blender, X: np.ndarray | list[np.ndarray], y: np.ndarray, splits: list[OuterSplit],
              meta: np.ndarray | None = None, keep_fitted: bool = False, n_jobs: int = 1) -> NestedResult:
    """Fit a clone of `estimator` on each split's train rows; predict and score only its held-out rows.

    `n_jobs` > 1 (or -1: every core) fits the outer folds in parallel processes; each fold's fit is the same
    computation either way, so the numbers do not change. Worth it only for costly estimators (the selector
    that runs a whole inner CV of every method per outer fold), not for a weight fit of milliseconds.
    """
    P, y = as_stack(X), np.asarray(y, dtype=np.float64)
    t0 = time.perf_counter()
    repeats = list(_iter_repeats(splits))
    oof = np.full((len(repeats), *y.shape), np.nan)
    jobs = [(i, s) for i, (_, parts) in enumerate(repeats) for s in parts]
    for _, s in jobs:
        if np.intersect1d(s.train_idx, s.test_idx).size:
            raise ValueError(f"outer split repeat {s.repeat} fold {s.fold}: train and held-out rows overlap")
    if n_jobs == 1 or len(jobs) == 1:
        done = [_fit_split(estimator, P, y, meta, s) for _, s in jobs]
    else:
        done = Parallel(n_jobs=min(len(jobs), effective_n_jobs(n_jobs)))(
            delayed(_fit_split)(estimator, P, y, meta, s) for _, s in jobs)
    for (i, s), (pred, _) in zip(jobs, done):
        oof[i, s.test_idx] = pred
    for i in range(len(repeats)):
        if np.isnan(oof[i]).any():
            raise ValueError(f"outer splits of repeat {i} do not cover every row")
    rmse = np.stack([rmse_per_trait(y, o) for o in oof])
    return NestedResult(oof, rmse, time.perf_counter() - t0, [m for _, m in done] if keep_fitted else [])


def _fit_split(estimator: Blender, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None, s: OuterSplit
               ) -> tuple[np.ndarray, Blender]:
    m_tr = None if meta is None else meta[s.train_idx]
    m_te = None if meta is None else meta[s.test_idx]
    with threadpool_limits(limits=_BLAS_THREADS, user_api="blas"):
        model = clone(estimator).fit(P[:, s.train_idx], y[s.train_idx], meta=m_tr)
        return model.predict(P[:, s.test_idx], meta=m_te), model


def in_sample(estimator: Blender, X: np.ndarray | list[np.ndarray], y: np.ndarray,
              meta: np.ndarray | None = None) -> tuple[Blender, np.ndarray, float]:
    """Fit on every row and score on the same rows: the optimistic figure shown next to the nested one."""
    t0 = time.perf_counter()
    with threadpool_limits(limits=_BLAS_THREADS, user_api="blas"):
        model = clone(estimator).fit(X, y, meta=meta)
    return model, rmse_per_trait(y, model.predict(X, meta=meta)), time.perf_counter() - t0
