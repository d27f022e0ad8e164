"""scikit-learn's own CV tools drive a blender through the 2-D adapter and agree with the project's nested CV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_predict, cross_val_score

from fb3stack.blend.inputs import load_members
from fb3stack.blend.methods import HillClimb, LGBMStacker, RidgeStacker, as_stack
from fb3stack.blend.nested import nested_cv, outer_splits
from fb3stack.blend.sklearn_adapter import StackedBlender, to_2d
from fb3stack.constants import TARGETS
from fb3stack.metrics import mcrmse


@pytest.fixture(scope="module")
def oofs(train_df, extras_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    files = sorted((extras_dir / "oof_sunpnwt12").glob("*_oof_df.csv"))[:8]
    if len(files) < 2:
        pytest.skip(f"public OOF files not found in {extras_dir / 'oof_sunpnwt12'}")
    members = load_members([str(f) for f in files], train_df)
    return np.stack([m.preds for m in members]), train_df[list(TARGETS)].to_numpy(dtype=np.float64)


def test_to_2d_is_member_major_and_round_trips():
    P = np.arange(2 * 3 * 6, dtype=float).reshape(2, 3, 6)
    X = to_2d(P, meta=np.full((3, 1), -1.0))
    assert X.shape == (3, 13) and X[1, 6 + 2] == P[1, 1, 2] and (X[:, -1] == -1).all()
    adapter = StackedBlender(n_meta=1)
    np.testing.assert_array_equal(adapter._unpack(X, 6)[0], as_stack(P))
    with pytest.raises(ValueError, match="n_members"):
        adapter._unpack(X[:, :-2], 6)


@pytest.mark.parametrize("blender, meta", [(HillClimb(), False), (RidgeStacker(alpha=30.0), False),
                                           (LGBMStacker(n_estimators=20), True)])
def test_sklearn_cv_gives_the_nested_cv_numbers_on_the_same_split(oofs, train_df, blender, meta):
    P, y = oofs
    m = train_df["full_text"].str.split().str.len().to_numpy(dtype=np.float64)[:, None] if meta else None
    splits = outer_splits(len(y), None, 5, 1, 42)
    cv = [(s.train_idx, s.test_idx) for s in splits]
    ours = nested_cv(blender, P, y, splits, meta=m)
    X, adapter = to_2d(P, m), StackedBlender(blender, n_meta=1 if meta else 0)

    pred = cross_val_predict(adapter, X, y, cv=cv)
    # equal here; the tolerance only allows for BLAS threads (nested_cv runs one) reordering a ridge solve
    np.testing.assert_allclose(pred, ours.oof[0], rtol=0, atol=1e-12)
    assert mcrmse(y, pred) == pytest.approx(ours.mcrmse, abs=1e-12)
    # cross_val_score averages the folds' own scores (nested_cv pools the held-out rows first)
    scores = cross_val_score(adapter, X, y, cv=cv)
    expected = [mcrmse(y[te], ours.oof[0][te]) for _, te in cv]
    np.testing.assert_allclose(-scores, expected, rtol=0, atol=1e-12)


def test_grid_search_tunes_a_blender_parameter_by_mcrmse(oofs):
    P, y = oofs
    cv = [(s.train_idx, s.test_idx) for s in outer_splits(len(y), None, 3, 1, 0)]
    alphas = [1e-3, 30.0, 1e7]
    search = GridSearchCV(StackedBlender(RidgeStacker()), {"blender__alpha": alphas}, cv=cv).fit(to_2d(P), y)
    by_hand = [np.mean([mcrmse(y[te], RidgeStacker(alpha=a).fit(P[:, tr], y[tr]).predict(P[:, te]))
                        for tr, te in cv]) for a in alphas]
    np.testing.assert_allclose(-search.cv_results_["mean_test_score"], by_hand, rtol=1e-10)
    assert search.best_params_ == {"blender__alpha": alphas[int(np.argmin(by_hand))]}
