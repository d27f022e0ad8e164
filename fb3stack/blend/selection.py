"""Member selection: near-duplicate pruning and greedy forward selection, run inside `fit`.

Selection is itself fitted to data, so `SelectThenBlend` does it in `fit` on the rows it is given; nested CV
of the wrapper then scores selection and blending together on rows neither saw.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from fb3stack.blend.methods import Blender, MeanBlend, WeightBlender
from fb3stack.metrics import mcrmse_stack


def prune_near_duplicates(P: np.ndarray, y: np.ndarray, threshold: float) -> list[int]:
    """Keep members best-first, dropping any whose mean per-trait correlation with a kept one exceeds threshold."""
    order = np.argsort(mcrmse_stack(y, P), kind="stable")
    Z = (P - P.mean(axis=1, keepdims=True)) / (P.std(axis=1, keepdims=True) + 1e-12)
    kept: list[int] = []
    for j in order:
        corr = [float(np.mean(np.mean(Z[j] * Z[k], axis=0))) for k in kept]
        if not corr or max(corr) <= threshold:
            kept.append(int(j))
    return sorted(kept)


def forward_select(P: np.ndarray, y: np.ndarray, candidates: list[int] | None = None, max_members: int | None = None,
                   min_gain: float = 0.0) -> list[int]:
    """Greedy: add the member whose inclusion most lowers the MCRMSE of the selected members' mean."""
    pool = list(range(len(P))) if candidates is None else list(candidates)
    chosen: list[int] = []
    total = np.zeros_like(y)
    best = np.inf
    while pool and (max_members is None or len(chosen) < max_members):
        k = len(chosen) + 1
        scores = mcrmse_stack(y, (total[None] + P[pool]) / k)  # each candidate's mean with the chosen ones
        i = int(np.argmin(scores))
        if scores[i] > best - min_gain:
            break
        best = float(scores[i])
        chosen.append(pool.pop(i))
        total += P[chosen[-1]]
    return sorted(chosen)


class SelectThenBlend(Blender):
    """Prune near-duplicates, forward-select members, then fit `base` on the selected members only."""

    def __init__(self, base: Blender | None = None, prune_corr: float | None = 0.999, forward: bool = True,
                 max_members: int | None = None, min_gain: float = 0.0) -> None:
        self._store(locals())

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        keep = list(range(len(P)))
        if self.prune_corr is not None:
            keep = prune_near_duplicates(P, y, self.prune_corr)
        if self.forward:
            keep = forward_select(P, y, keep, self.max_members, self.min_gain)
        self.selected_ = np.array(keep, dtype=int)
        self.base_ = clone(self.base if self.base is not None else MeanBlend()).fit(P[self.selected_], y, meta=meta)

    def _predict(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        return self.base_.predict(P[self.selected_], meta=meta)

    @property
    def weights_(self) -> np.ndarray:
        """Full (m, 6) weights with zeros for unselected members, when the base is a weight method."""
        if not isinstance(self.base_, WeightBlender):
            raise AttributeError(f"{type(self.base_).__name__} has no weights")
        w = np.zeros((self.n_members_, self.base_.weights_.shape[1]))
        w[self.selected_] = self.base_.weights_
        return w

    @property
    def intercept_(self) -> np.ndarray:
        if not isinstance(self.base_, WeightBlender):
            raise AttributeError(f"{type(self.base_).__name__} has no intercept")
        return self.base_.intercept_


class InnerCVSelect(Blender):
    """Choose among `candidates` by an inner CV on the rows it is fitted on, then fit the winner on all of them.

    This is the procedure `fb3stack blend` itself follows (score every method, keep the best) written as one
    blender, so nested CV of it scores the choice of method too: the minimum of many methods' nested scores
    is optimistic, the outer score of this selector is not. `candidates` is a list of (name, blender,
    uses_meta) triples; inner folds are seeded KFolds of the fitting rows.
    """

    def __init__(self, candidates: list | None = None, n_folds: int = 5, seed: int = 0) -> None:
        self._store(locals())

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        from fb3stack.blend.nested import nested_cv, outer_splits

        if not self.candidates:
            raise ValueError("InnerCVSelect needs at least one candidate")
        splits = outer_splits(P.shape[1], None, min(self.n_folds, P.shape[1]), 1, self.seed)
        scores = [nested_cv(est, P, y, splits, meta=meta if uses_meta else None).mcrmse
                  for _, est, uses_meta in self.candidates]
        best = int(np.argmin(scores))
        name, est, uses_meta = self.candidates[best]
        self.scores_ = dict(zip([c[0] for c in self.candidates], scores))
        self.selected_name_, self.uses_meta_ = name, bool(uses_meta)
        self.model_ = clone(est).fit(P, y, meta=meta if uses_meta else None)

    def _predict(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        return self.model_.predict(P, meta=meta if self.uses_meta_ else None)
