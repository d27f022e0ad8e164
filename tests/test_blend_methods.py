"""Each blending method recovers known weights on synthetic member predictions; all clone and clip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from fb3stack.blend.methods import NNLS, HillClimb, LGBMStacker, MeanBlend, RidgeStacker, ScipyWeights, make_method


def members(n: int = 600, m: int = 4, seed: int = 0) -> np.ndarray:
    """(m, n, 6) member predictions: a shared signal plus member-specific noise, within the score range."""
    rng = np.random.default_rng(seed)
    signal = rng.uniform(2.0, 4.0, size=(n, 6))
    return signal[None] + rng.normal(0, 0.3, size=(m, n, 6))


def target(P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y = sum_j w[j, t] * P[j, :, t]; w is (m,) or (m, 6)."""
    w = np.broadcast_to(w[:, None] if w.ndim == 1 else w, (P.shape[0], 6))
    return np.einsum("mnt,mt->nt", P, w)


def test_slsqp_recovers_convex_weights_per_trait():
    P = members()
    w = np.array([[0.6, 0.1, 0.3, 0.0, 0.5, 0.25], [0.4, 0.2, 0.3, 1.0, 0.5, 0.25],
                  [0.0, 0.7, 0.4, 0.0, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0, 0.0, 0.25]])
    model = ScipyWeights(method="SLSQP").fit(P, target(P, w))
    np.testing.assert_allclose(model.weights_, w, atol=1e-3)
    np.testing.assert_allclose(model.weights_.sum(axis=0), 1.0, atol=1e-6)


def test_slsqp_shrink_pulls_toward_uniform():
    P = members()
    y = target(P, np.array([0.7, 0.3, 0.0, 0.0]))
    free = ScipyWeights(shrink=0.0).fit(P, y).weights_
    shrunk = ScipyWeights(shrink=1.0).fit(P, y).weights_
    assert np.abs(shrunk - 0.25).sum() < np.abs(free - 0.25).sum()


def test_inner_cv_shrink_is_small_for_a_strong_signal_and_large_for_none():
    P = members(n=800)
    grid = [0.0, 0.01, 1.0, 100.0]
    strong = ScipyWeights(shrink_grid=grid, per_trait=False).fit(P, target(P, np.array([1.0, 0.0, 0.0, 0.0])))
    assert strong.shrink_ == [0.0] and strong.weights_[0, 0] > 0.99
    # labels unrelated to which member is used: member-specific noise only, uniform weights are best
    rng = np.random.default_rng(5)
    y = P.mean(axis=0) + rng.normal(0, 0.5, size=P.shape[1:])
    none = ScipyWeights(shrink_grid=grid, per_trait=False).fit(P, y)
    assert none.shrink_[0] >= 1.0


def test_nelder_mead_recovers_unconstrained_weights_including_negative():
    P = members(m=3)
    w = np.array([0.9, 0.4, -0.3])
    model = ScipyWeights(method="Nelder-Mead", bounds=None, maxiter=400).fit(P, target(P, w))
    np.testing.assert_allclose(model.weights_, np.repeat(w[:, None], 6, axis=1), atol=5e-3)


def test_nnls_recovers_nonnegative_weights_not_summing_to_one():
    P = members()
    w = np.array([0.5, 0.0, 0.2, 0.1])
    model = NNLS().fit(P, target(P, w))
    np.testing.assert_allclose(model.weights_, np.repeat(w[:, None], 6, axis=1), atol=1e-8)


def test_shared_weights_are_equal_across_traits():
    P = members()
    w = np.array([0.2, 0.3, 0.5, 0.0])
    model = NNLS(per_trait=False).fit(P, target(P, w))
    np.testing.assert_allclose(model.weights_, np.repeat(w[:, None], 6, axis=1), atol=1e-8)


def test_caruana_recovers_count_weights():
    P = members()
    w = np.array([0.5, 0.25, 0.25, 0.0])  # reachable with replacement: member 0 twice, 1 and 2 once
    model = HillClimb(n_iter=50).fit(P, target(P, w))
    np.testing.assert_allclose(model.weights_, np.repeat(w[:, None], 6, axis=1), atol=1e-9)


def test_caruana_negative_weights_only_when_allowed():
    P = members()
    w = np.array([1.2, -0.2, 0.0, 0.0])
    y = target(P, w)
    neg = HillClimb(allow_negative=True).fit(P, y)
    np.testing.assert_allclose(neg.weights_, np.repeat(w[:, None], 6, axis=1), atol=1e-9)
    pos = HillClimb(allow_negative=False).fit(P, y)
    assert (pos.weights_ >= 0).all()
    assert np.abs(pos.predict(P) - y).mean() > np.abs(neg.predict(P) - y).mean()


def test_bagged_caruana_averages_to_a_convex_combination_near_the_truth():
    P = members(m=6)
    w = np.array([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    model = HillClimb(n_bags=30, bag_fraction=0.8, seed=3).fit(P, target(P, w))
    np.testing.assert_allclose(model.weights_.sum(axis=0), 1.0, atol=1e-9)
    assert (model.weights_[:2].sum(axis=0) > 0.75).all()  # most weight on the two true members
    assert clone(model).set_params(seed=3).fit(P, target(P, w)).weights_ == pytest.approx(model.weights_)


def test_ridge_recovers_weights_with_and_without_mean_prior():
    P = members()
    w = np.array([0.1, 0.6, 0.3, 0.0])
    y = target(P, w)
    for prior in ("none", "mean"):
        model = RidgeStacker(alpha=1e-6, prior=prior).fit(P, y)
        np.testing.assert_allclose(model.predict(P), np.clip(y, 1, 5), atol=1e-4)
    coef = np.stack([m.coef_ for m in RidgeStacker(alpha=1e-6, prior="none").fit(P, y).models_], axis=1)
    np.testing.assert_allclose(coef, np.repeat(w[:, None], 6, axis=1), atol=1e-4)


def test_ridge_mean_prior_shrinks_to_the_plain_mean():
    P = members()
    y = target(P, np.array([0.7, 0.3, 0.0, 0.0]))
    huge = RidgeStacker(alpha=1e12, prior="mean").fit(P, y)
    mean = MeanBlend().fit(P, y).predict(P)
    # the (unpenalised) intercept still corrects the mean's overall bias per trait
    np.testing.assert_allclose(huge.predict(P), np.clip(mean + (y - mean).mean(axis=0), 1, 5), atol=1e-6)


def test_cross_trait_ridge_uses_other_traits():
    P = members()
    y = P.mean(axis=0)
    y[:, 0] = 0.5 * P[0, :, 0] + 0.5 * P[1, :, 2]  # cohesion depends on a member's vocabulary prediction
    per = RidgeStacker(alpha=1e-6, prior="none").fit(P, y)
    cross = RidgeStacker(alpha=1e-6, prior="none", cross_trait=True).fit(P, y)
    assert np.abs(cross.predict(P)[:, 0] - y[:, 0]).max() < 1e-4
    assert np.abs(per.predict(P)[:, 0] - y[:, 0]).max() > 0.05


def test_lgbm_stacker_learns_a_meta_feature_offset():
    P = members(n=1500, m=3)
    meta = np.random.default_rng(1).uniform(0, 1, size=(1500, 1))
    y = P.mean(axis=0) + np.where(meta > 0.5, 0.4, -0.4)
    with_meta = LGBMStacker(n_estimators=100, learning_rate=0.1).fit(P[:, :1000], y[:1000], meta=meta[:1000])
    without = LGBMStacker(n_estimators=100, learning_rate=0.1).fit(P[:, :1000], y[:1000])
    err_meta = np.abs(with_meta.predict(P[:, 1000:], meta=meta[1000:]) - y[1000:]).mean()
    err_plain = np.abs(without.predict(P[:, 1000:]) - y[1000:]).mean()
    assert err_meta < 0.1 < err_plain
    with pytest.raises(ValueError, match="meta"):
        with_meta.predict(P[:, 1000:])


@pytest.mark.parametrize("kind", ["mean", "scipy", "nnls", "hillclimb", "ridge", "lgbm"])
def test_every_method_clones_accepts_lists_and_clips(kind):
    P = members(n=300)
    P[0, :5] = 7.0  # a wild member pushes raw blends above 5
    y = np.clip(P.mean(axis=0), 1, 5)
    est = make_method(kind, {"n_estimators": 20} if kind == "lgbm" else {})
    model = clone(est).fit(list(P), y)
    pred = model.predict(list(P))
    assert pred.shape == (300, 6) and pred.min() >= 1.0 and pred.max() <= 5.0
    # a clone is the same blender: refitted (on the array form this time) it predicts exactly the same
    np.testing.assert_array_equal(clone(model).fit(P, y).predict(P), pred)
    assert not hasattr(est, "n_members_")  # fitted state lives on the fitted copy only
    with pytest.raises(ValueError, match="fitted on 4 members"):
        model.predict(P[:3])


@pytest.mark.parametrize("kind, params", [("scipy", {"shrink": 100.0}), ("nnls", {"normalize": True}),
                                          ("hillclimb", {"n_iter": 0}), ("ridge", {"alpha": 1e6}),
                                          ("lgbm", {"n_estimators": 1})])
def test_set_params_changes_what_is_fitted(kind, params):
    # set_params is how scikit-learn's search tools (GridSearchCV, through the 2-D adapter) tune a blender
    P = members(n=300)
    y = 0.9 * target(P, np.array([0.7, 0.3, 0.0, 0.0])) + 0.2  # weights not summing to 1: normalize matters
    est = make_method(kind, {"n_estimators": 20} if kind == "lgbm" else {})
    tuned = clone(est).set_params(**params)
    assert tuned.get_params() == {**est.get_params(), **params}
    pred = tuned.fit(P, y).predict(P)
    assert not np.allclose(pred, clone(est).fit(P, y).predict(P))
    np.testing.assert_array_equal(clone(tuned).fit(P, y).predict(P), pred)  # a clone keeps the changed value


def test_unknown_method_and_bad_params_are_refused():
    with pytest.raises(ValueError, match="unknown blend method 'magic'"):
        make_method("magic")
    with pytest.raises(ValueError, match="hillclimb"):
        make_method("hillclimb", {"n_iterations": 3})
