"""The one implementation of the competition metric: MCRMSE = mean over traits of the per-trait RMSE.

`rmse_per_trait` / `mcrmse` check their inputs and score one prediction; `rmse_stack` / `mcrmse_stack` score
a stack of candidate predictions at once, unchecked, for the blenders' inner loops (hill climbing and member
selection score every member at every step).
"""

from __future__ import annotations

import numpy as np

from fb3stack.constants import TARGETS


def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {a.shape}")
    return a


def rmse_per_trait(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Column-wise RMSE, shape (n_traits,)."""
    t, p = _as_2d(y_true, "y_true"), _as_2d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: y_true {t.shape} vs y_pred {p.shape}")
    if len(t) == 0:
        raise ValueError("cannot score zero rows")
    return _rmse(t - p, axis=0)


def _rmse(err: np.ndarray, axis: int) -> np.ndarray:
    return np.sqrt(np.mean(err ** 2, axis=axis))


def rmse_stack(y_true: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """RMSE of each of k predictions at once: `preds` (k, n, ...) against `y_true` (n, ...) -> (k, ...).

    No checks and no copies beyond the error array: the callers' shapes are fixed by construction."""
    return _rmse(preds - y_true[None], axis=1)


def mcrmse_stack(y_true: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """MCRMSE of each of k predictions at once: `preds` (k, n, n_traits) against `y_true` (n, n_traits) -> (k,)."""
    return rmse_stack(y_true, preds).mean(axis=1)


def mcrmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean columnwise root mean squared error (lower is better)."""
    return float(np.mean(rmse_per_trait(y_true, y_pred)))


def score_report(y_true: np.ndarray, y_pred: np.ndarray, targets: tuple[str, ...] = TARGETS) -> dict:
    """MCRMSE plus per-trait RMSE, ready for metrics.json."""
    per = rmse_per_trait(y_true, y_pred)
    if len(per) != len(targets):
        raise ValueError(f"{len(per)} columns scored but {len(targets)} target names given")
    return {"mcrmse": float(per.mean()), "rmse": {t: float(v) for t, v in zip(targets, per)}, "n": int(len(y_true))}
