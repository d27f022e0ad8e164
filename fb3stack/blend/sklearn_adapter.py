"""A blender as a plain 2-D scikit-learn regressor, so sklearn's own CV and search tools can drive it.

Blenders take member predictions as an (m, n, 6) stack plus a `meta` keyword; `cross_val_score`,
`cross_val_predict` and `GridSearchCV` index X by rows and call `fit(X, y)`, so they cannot pass either.
`StackedBlender` takes the same data as one (n, m*6 + k) matrix built by `to_2d`: column j*6 + t is member
j's prediction of trait t, the last `n_meta` columns are meta-features. Its `score` is minus the MCRMSE, so
default scoring and `GridSearchCV(..., param_grid={"blender__alpha": [...]})` optimise the competition metric.

`cross_val_predict` pools the held-out predictions as `fb3stack.blend.nested.nested_cv` does (same split, same
numbers); `cross_val_score` averages per-fold scores instead, a slightly different figure.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone

from fb3stack.blend.methods import Blender, MeanBlend, MemberPreds, as_stack
from fb3stack.metrics import mcrmse


def to_2d(X: MemberPreds, meta: np.ndarray | None = None) -> np.ndarray:
    """(m, n, t) member predictions [+ (n, k) meta] -> (n, m*t [+ k]), member-major columns."""
    P = as_stack(X)
    flat = P.transpose(1, 0, 2).reshape(P.shape[1], -1)
    if meta is None:
        return flat
    return np.hstack([flat, np.asarray(meta, dtype=np.float64).reshape(P.shape[1], -1)])


class StackedBlender(RegressorMixin, BaseEstimator):
    """`blender` (default MeanBlend) fitted on the (m, n, t) stack unpacked from a 2-D X; see the module doc."""

    def __init__(self, blender: Blender | None = None, n_meta: int = 0) -> None:
        self.blender, self.n_meta = blender, n_meta

    def _unpack(self, X: np.ndarray, n_traits: int) -> tuple[np.ndarray, np.ndarray | None]:
        X = np.asarray(X, dtype=np.float64)
        n_pred = X.shape[1] - self.n_meta if X.ndim == 2 else 0
        if n_pred <= 0 or n_pred % n_traits:
            raise ValueError(f"X must be (n, n_members*{n_traits} + n_meta={self.n_meta}), got shape {X.shape}")
        P = X[:, :n_pred].reshape(len(X), n_pred // n_traits, n_traits).transpose(1, 0, 2)
        return P, (X[:, n_pred:] if self.n_meta else None)

    def fit(self, X: np.ndarray, y: np.ndarray) -> StackedBlender:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 2:
            raise ValueError(f"y must be (n, n_traits), got shape {y.shape}")
        self.n_traits_ = y.shape[1]
        P, meta = self._unpack(X, self.n_traits_)
        self.blender_ = clone(self.blender if self.blender is not None else MeanBlend()).fit(P, y, meta=meta)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        P, meta = self._unpack(X, self.n_traits_)
        return self.blender_.predict(P, meta=meta)

    def score(self, X: np.ndarray, y: np.ndarray, sample_weight: None = None) -> float:
        """Minus the MCRMSE (greater is better, as scikit-learn's tools expect)."""
        return -mcrmse(y, self.predict(X))
