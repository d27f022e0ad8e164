"""Nested CV never lets a blender see its held-out rows (checked by construction with a spy estimator)."""

from __future__ import annotations

import numpy as np
import pytest

from fb3stack.blend.methods import Blender, MeanBlend, ScipyWeights
from fb3stack.blend.nested import in_sample, nested_cv, outer_splits
from fb3stack.blend.selection import SelectThenBlend, forward_select, prune_near_duplicates
from fb3stack.metrics import mcrmse

FIT_LOG: list[np.ndarray] = []  # clones are fresh objects, so the spy reports through a module-level log


class Spy(Blender):
    """Records the row ids (carried in column 0 of meta) of every fit; predicts the members' mean."""

    def __init__(self) -> None:
        pass

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        FIT_LOG.append(meta[:, 0].astype(int).copy())

    def _predict(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        return P.mean(axis=0)


def data(n: int = 200, m: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(np.arange(1.0, 5.5, 0.5), size=(n, 6))
    return y[None] + rng.normal(0, 0.4, size=(m, n, 6)), y


@pytest.mark.parametrize("folds", [None, np.arange(200) % 4])
def test_blender_is_never_fitted_on_held_out_rows(folds):
    P, y = data()
    splits = outer_splits(200, folds, n_folds=5, repeats=3, seed=7)
    FIT_LOG.clear()
    res = nested_cv(Spy(), P, y, splits, meta=np.arange(200)[:, None])
    assert len(FIT_LOG) == len(splits) == (4 if folds is not None else 15)
    for seen, split in zip(FIT_LOG, splits):
        assert np.intersect1d(seen, split.test_idx).size == 0
        np.testing.assert_array_equal(np.sort(seen), split.train_idx)
    for r in range(res.oof.shape[0]):  # each repeat's held-out parts cover every row exactly once
        held = np.concatenate([s.test_idx for s in splits if s.repeat == r])
        np.testing.assert_array_equal(np.sort(held), np.arange(200))
    if folds is not None:
        for split in splits:
            assert set(folds[split.test_idx]) == {split.fold}


def test_selection_happens_inside_each_outer_fit():
    P, y = data(m=4)
    splits = outer_splits(200, None, n_folds=4, seed=1)
    FIT_LOG.clear()
    nested_cv(SelectThenBlend(Spy(), prune_corr=None), P, y, splits, meta=np.arange(200)[:, None])
    for seen, split in zip(FIT_LOG, splits):
        assert np.intersect1d(seen, split.test_idx).size == 0


def test_nested_scores_held_out_predictions_with_the_shared_metric():
    P, y = data()
    splits = outer_splits(200, None, n_folds=5, repeats=2, seed=0)
    res = nested_cv(ScipyWeights(), P, y, splits)
    assert res.mcrmse == pytest.approx(np.mean([mcrmse(y, o) for o in res.oof]))
    _, ins, _ = in_sample(ScipyWeights(), P, y)
    assert ins.mean() <= res.mcrmse  # fitting and scoring on the same rows flatters the blender
    assert nested_cv(MeanBlend(), P, y, splits).mcrmse == pytest.approx(mcrmse(y, np.clip(P.mean(axis=0), 1, 5)))


def test_overlapping_split_is_refused():
    P, y = data()
    bad = outer_splits(200, None, n_folds=2, seed=0)
    bad[0] = type(bad[0])(0, 0, np.arange(150), np.arange(100, 200))
    with pytest.raises(ValueError, match="overlap"):
        nested_cv(MeanBlend(), P, y, bad)


def test_pruning_keeps_the_better_of_two_near_duplicates_and_forward_selection_skips_a_bad_member():
    P, y = data(m=3)
    dup = P[1] + 1e-4
    bad = y + 2.0  # far off: adding it to any mean hurts
    P4 = np.stack([P[0], P[1], dup, bad])
    kept = prune_near_duplicates(P4, y, 0.999)
    assert len({1, 2} & set(kept)) == 1 and 0 in kept
    assert 3 not in forward_select(P4, y)
