"""How sure a blend's gain is: a paired bootstrap over essays of held-out predictions, and what each member adds.

    boot = bootstrap_scores(y, held, n_boot=2000, seed=42)     # held: (k, repeats, n, 6) held-out predictions
    d = boot.versus(ref)                                        # candidate k's score minus candidate ref's
    d.diff, d.lo, d.hi                                          # (k,): on all essays, and the interval's ends
    loo = leave_one_out(estimator, P, y, splits)                # (m,): nested MCRMSE without member i
    gain_cells(table)                                           # the table's columns of them as text cells

Contract: `held[i]` are candidate i's held-out predictions (one (n, 6) array per outer-CV repeat; a member's OOF
is its own held-out prediction, repeated), the statistic is the nested score exactly as the blend table computes
it (each repeat's MCRMSE = mean over traits of sqrt(mean squared error), then the mean over repeats), and every
candidate is scored on the same resample of essays: `versus` differences are paired, and `diff` equals the
difference of the table's nested scores. The interval is the percentile interval of the resampled differences at
`level` (0.95: the 2.5th and 97.5th percentiles). The same `seed` and `n_boot` give the same numbers.

Why paired: two blends of the same members err on the same hard essays, so most of the spread of either score over
resamples is shared; scoring both on each resample cancels it and leaves the spread of the difference, which is
what "is A really better than B" asks. Why vectorised: a resample is a vector of counts (how often each essay is
drawn), so the resampled mean squared errors of all candidates, repeats and traits are one matrix product of the
(resamples x essays) count matrix with the (essays x columns) squared errors; square roots and means follow.
What it does not cover: the held-out predictions are fixed, so the interval is about which essays were drawn
(how far the difference could move on another 3,911 essays like these), not about refitting the blender on them.

`leave_one_out` refits the method's nested CV once per left-out member on the same outer splits: the loss of
score without a member is what that member adds to this blend (near 0 for a redundant member, negative when the
blend is better without it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs

from fb3stack.blend.methods import Blender, as_stack
from fb3stack.blend.nested import OuterSplit, nested_cv

logger = logging.getLogger(__name__)

_CHUNK = 250  # resamples per matrix product: bounds the (chunk x essays) count matrix to a few MB


@dataclass(frozen=True)
class Difference:
    """Candidate scores minus a reference's: on all essays (`diff`) and the interval's ends over resamples."""

    diff: np.ndarray  # (k,)
    lo: np.ndarray
    hi: np.ndarray
    p_better: np.ndarray  # share of resamples where the candidate scores lower than the reference


@dataclass(frozen=True)
class BootstrapScores:
    """Nested scores of k candidates on all essays (`full`, (k,)) and on each resample (`boot`, (n_boot, k))."""

    full: np.ndarray
    boot: np.ndarray
    n_boot: int
    seed: int
    level: float

    def versus(self, ref: int) -> Difference:
        d_full = self.full - self.full[ref]
        d_boot = self.boot - self.boot[:, [ref]]
        tail = 50.0 * (1.0 - self.level)
        lo, hi = np.percentile(d_boot, [tail, 100.0 - tail], axis=0)
        return Difference(d_full, lo, hi, (d_boot < 0).mean(axis=0))


def resample_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n essays as count rows ((chunk, n) float64: how often each essay is drawn; each row
    sums to n), `n_boot` rows in all, in chunks; seeded, so the same arguments give the same rows."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]  # row r's draws, offset into row r
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_scores(y: np.ndarray, held: np.ndarray, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> BootstrapScores:
    """Nested MCRMSE of every candidate in `held` (k, repeats, n, t) against `y` (n, t), on all essays and on
    `n_boot` paired resamples of them."""
    held = np.asarray(held, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if held.ndim != 4 or held.shape[2:] != y.shape:
        raise ValueError(f"held-out predictions must be (k, repeats, {', '.join(map(str, y.shape))}); "
                         f"got {held.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    k, r, n, t = held.shape
    # (n, k*r*t): one column per candidate, repeat and trait; a resample's MSEs are counts @ sq / n
    sq = ((held - y[None, None]) ** 2).transpose(2, 0, 1, 3).reshape(n, -1)

    def score(mse: np.ndarray) -> np.ndarray:  # (b, k*r*t) -> (b, k): sqrt per trait, mean over traits and repeats
        return np.sqrt(mse.reshape(len(mse), k, r, t)).mean(axis=(2, 3))

    full = score(sq.mean(axis=0, keepdims=True))[0]
    boot = np.concatenate([score(c @ sq / n) for c in resample_counts(n, n_boot, seed)])
    return BootstrapScores(full, boot, n_boot, seed, level)


def leave_one_out(estimator: Blender, X: np.ndarray | list[np.ndarray], y: np.ndarray, splits: list[OuterSplit],
                  meta: np.ndarray | None = None, n_jobs: int = 1) -> np.ndarray:
    """(m,) nested MCRMSE of `estimator` on the same outer splits with member i left out; NaN with one member."""
    P = as_stack(X)
    m = len(P)
    if m < 2:
        return np.full(m, np.nan)
    keep = [np.delete(np.arange(m), i) for i in range(m)]
    if n_jobs == 1:
        return np.array([nested_cv(estimator, P[idx], y, splits, meta=meta).mcrmse for idx in keep])
    scores = Parallel(n_jobs=min(m, effective_n_jobs(n_jobs)))(
        delayed(_nested_score)(estimator, P[idx], y, splits, meta) for idx in keep)
    return np.array(scores)


def _nested_score(estimator: Blender, P: np.ndarray, y: np.ndarray, splits: list[OuterSplit],
                  meta: np.ndarray | None) -> float:
    return nested_cv(estimator, P, y, splits, meta=meta).mcrmse


def gain_cells(table: pd.DataFrame) -> dict[str, list[str]]:
    """The blend table's uncertainty columns as text cells, one list per shown column, in the table's row order:
    `vs_mean` / `vs_best` as "difference [interval]", and the leave-one-out score as "score (minus the chosen's)"."""
    out = {}
    for col, label in (("vs_mean", "vs mean [interval]"), ("vs_best", "vs best member [interval]")):
        if {col, f"{col}_lo", f"{col}_hi"} <= set(table.columns):
            vals = np.round(table[[col, f"{col}_lo", f"{col}_hi"]].to_numpy(float), 5) + 0.0  # no "-0.00000"
            out[label] = [f"{d:+.5f} [{lo:+.5f}, {hi:+.5f}]" for d, lo, hi in vals]
    if {"loo_nested", "loo_delta"} <= set(table.columns):
        out["without member (loo)"] = ["" if np.isnan(v) else f"{v:.5f} ({d:+.5f})"
                                       for v, d in table[["loo_nested", "loo_delta"]].to_numpy(float)]
    return out
