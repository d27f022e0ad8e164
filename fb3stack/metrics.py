"""The one implementation of the competition metric: MCRMSE = mean over traits of the per-trait RMSE."""

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
    return np.sqrt(np.mean((t - p) ** 2, axis=0))


def mcrmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean columnwise root mean squared error (lower is better)."""
    return float(np.mean(rmse_per_trait(y_true, y_pred)))


def score_report(y_true: np.ndarray, y_pred: np.ndarray, targets: tuple[str, ...] = TARGETS) -> dict:
    """MCRMSE plus per-trait RMSE, ready for metrics.json."""
    per = rmse_per_trait(y_true, y_pred)
    if len(per) != len(targets):
        raise ValueError(f"{len(per)} columns scored but {len(targets)} target names given")
    return {"mcrmse": float(per.mean()), "rmse": {t: float(v) for t, v in zip(targets, per)}, "n": int(len(y_true))}
