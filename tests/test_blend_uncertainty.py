"""How sure a gain is (paired bootstrap over essays, leave-one-member-out) and the best member as a candidate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fb3stack.blend import load_fitted_blend
from fb3stack.blend.config import BlendConfig, MethodConfig, load_blend_config
from fb3stack.blend.methods import NNLS, BestMember, MeanBlend
from fb3stack.blend.nested import nested_cv, outer_splits
from fb3stack.blend.run import BEST_MEMBER_ROW, SELECTED_ROW, add_leave_one_out, run_blend, score_methods
from fb3stack.blend.uncertainty import bootstrap_scores, leave_one_out, resample_counts
from fb3stack.config import ConfigError
from fb3stack.constants import ID_COL, TARGETS
from fb3stack.metrics import mcrmse, rmse_per_trait

SIGMA_A = 0.40 + 0.02 * np.arange(6)  # per-trait error sd of predictor a: its expected RMSE per trait
GAP = 0.012  # predictor b's sd is smaller by this on every trait: the expected MCRMSE difference a - b


def pair(n: int, rng: np.random.Generator, gap: float = GAP, rho: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a (2, 1, n, 6) stack of two predictors whose errors are correlated (rho) across essays, as two
    blends of the same members are, so only a paired comparison is narrow; E[MCRMSE a - MCRMSE b] = gap."""
    y = rng.normal(3.0, 0.6, (n, 6))
    z, w = rng.normal(size=(n, 6)), rng.normal(size=(n, 6))
    a = y + SIGMA_A * z
    b = y + (SIGMA_A - gap) * (rho * z + np.sqrt(1 - rho ** 2) * w)
    return y, np.stack([a, b])[:, None]


def test_interval_covers_the_true_difference_at_its_level_and_is_as_wide_as_the_spread():
    """Over many synthetic data sets the 95% interval of MCRMSE(a) - MCRMSE(b) contains the expected difference
    about 95% of the time, and its width matches the real spread of the difference between data sets."""
    rng = np.random.default_rng(0)
    covered, widths, diffs = [], [], []
    for rep in range(120):
        y, held = pair(400, rng)
        d = bootstrap_scores(y, held, n_boot=1000, seed=rep).versus(1)
        covered.append(d.lo[0] <= GAP <= d.hi[0])
        widths.append(d.hi[0] - d.lo[0])
        diffs.append(d.diff[0])
    assert 0.88 <= np.mean(covered) <= 0.99
    # a 95% interval spans about 2 x 1.96 sd of the difference over data sets; unpaired resampling would be ~2x wider
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.std(diffs), rel=0.2)
    assert np.mean(diffs) == pytest.approx(GAP, abs=3 * np.std(diffs) / np.sqrt(len(diffs)))


def test_interval_excludes_zero_for_a_clear_gain_and_includes_it_for_none():
    rng = np.random.default_rng(1)
    y, held = pair(2000, rng, gap=0.03)
    d = bootstrap_scores(y, held, n_boot=2000, seed=0).versus(1)
    assert d.lo[0] > 0 and d.p_better[0] == 0.0  # a is clearly worse than b
    # b's errors are a's, permuted between essays: the same MCRMSE on all essays, no real difference
    b = y + (held[0, 0] - y)[rng.permutation(len(y))]
    held0 = np.stack([held[0], b[None]])
    d0 = bootstrap_scores(y, held0, n_boot=2000, seed=0).versus(1)
    assert d0.diff[0] == pytest.approx(0.0, abs=1e-12)
    assert d0.lo[0] < 0 < d0.hi[0]


def test_full_difference_is_the_table_difference_with_repeats():
    """The statistic is the nested score as the table computes it: per repeat the MCRMSE, then the mean."""
    rng = np.random.default_rng(2)
    y = rng.normal(3, 0.6, (300, 6))
    held = y[None, None] + rng.normal(0, 0.5, (3, 2, 300, 6))  # 3 candidates, 2 repeats
    boot = bootstrap_scores(y, held, n_boot=1000, seed=3)
    nested = [np.mean([mcrmse(y, held[k, r]) for r in range(2)]) for k in range(3)]
    np.testing.assert_allclose(boot.full, nested, rtol=1e-12)
    np.testing.assert_allclose(boot.versus(0).diff, np.array(nested) - nested[0], atol=1e-12)
    assert boot.boot.shape == (1000, 3)


def test_resamples_are_seeded_and_are_resamples():
    a = np.concatenate(list(resample_counts(50, 600, seed=7)))
    b = np.concatenate(list(resample_counts(50, 600, seed=7)))
    c = np.concatenate(list(resample_counts(50, 600, seed=8)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (600, 50) and (a.sum(axis=1) == 50).all() and (a >= 0).all()
    # each resample's weighted MSE is the MSE of the drawn essays: check one row against explicit indexing
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 50, size=(250, 50))[0]
    np.testing.assert_array_equal(a[0], np.bincount(idx, minlength=50))
    rng = np.random.default_rng(4)
    y, held = pair(50, rng)
    s1 = bootstrap_scores(y, held, n_boot=1200, seed=5)
    s2 = bootstrap_scores(y, held, n_boot=1200, seed=5)
    np.testing.assert_array_equal(s1.boot, s2.boot)
    expected = np.mean(np.sqrt(np.mean((held[:, 0, idx] - y[idx]) ** 2, axis=1)), axis=1)
    got = bootstrap_scores(y, held, n_boot=1000, seed=7).boot[0]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def members(n: int = 300, m: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(3, 0.6, (n, 6))
    # within the score range, so the blenders' clipping to [1, 5] changes nothing
    return np.clip(np.stack([y + rng.normal(0, 0.4 + 0.1 * k, y.shape) for k in range(m)]), 1, 5), y


def test_leave_one_out_is_the_nested_score_without_each_member():
    P, y = members()
    splits = outer_splits(len(y), None, n_folds=4, repeats=1, seed=0)
    loo_mean = leave_one_out(MeanBlend(), P, y, splits)  # the mean fits nothing: its nested score is its score
    for i in range(3):
        np.testing.assert_allclose(loo_mean[i], mcrmse(y, np.delete(P, i, axis=0).mean(axis=0)), rtol=1e-12)
    loo_nnls = leave_one_out(NNLS(), P, y, splits)
    for i in range(3):
        assert loo_nnls[i] == pytest.approx(nested_cv(NNLS(), np.delete(P, i, axis=0), y, splits).mcrmse, rel=1e-12)
    np.testing.assert_allclose(leave_one_out(NNLS(), P, y, splits, n_jobs=2), loo_nnls, rtol=1e-12)
    assert np.isnan(leave_one_out(MeanBlend(), P[:1], y, splits)).all()


def test_table_columns_vs_mean_vs_best_and_loo():
    P, y = members(seed=1)
    names = ["a", "b", "c"]
    cfg = BlendConfig(members=names, methods=[MethodConfig("mean", "mean"), MethodConfig("nnls", "nnls")])
    splits = outer_splits(len(y), None, n_folds=4, repeats=2, seed=0)
    table, held = score_methods(cfg, P, y, splits, None, names)
    from fb3stack.blend.run import add_uncertainty

    table, info = add_uncertainty(table, held, P, y, cfg.uncertainty, seed=42)
    rows = table.set_index("name")
    assert info["n_boot"] == 2000 and info["seed"] == 42 and info["best_member"] == "a"
    for name in rows.index:
        assert rows.loc[name, "vs_mean"] == pytest.approx(rows.loc[name, "nested"] - rows.loc["mean", "nested"])
        assert rows.loc[name, "vs_best"] == pytest.approx(rows.loc[name, "nested"] - rows.loc["a", "nested"])
        assert rows.loc[name, "vs_mean_lo"] <= rows.loc[name, "vs_mean"] <= rows.loc[name, "vs_mean_hi"]
    assert rows.loc["mean", "vs_mean_lo"] == pytest.approx(0.0, abs=1e-12)
    assert rows.loc["mean", "vs_mean_hi"] == pytest.approx(0.0, abs=1e-12)
    table = add_leave_one_out(table, MeanBlend(), P, y, splits, None, "mean")
    rows = table.set_index("name")
    for i, name in enumerate(names):
        without = mcrmse(y, np.delete(P, i, axis=0).mean(axis=0))
        assert rows.loc[name, "loo_nested"] == pytest.approx(without)
        assert rows.loc[name, "loo_delta"] == pytest.approx(without - rows.loc["mean", "nested"])
    assert rows.loc[["mean", "nnls"], "loo_nested"].isna().all()


def test_best_member_method_picks_the_lowest_mcrmse_and_uses_it_alone():
    P, y = members(m=4, seed=3)
    order = [2, 0, 3, 1]
    bm = BestMember().fit(P[order], y)
    assert bm.best_ == 1  # member 0 (the least noisy) sits at position 1
    np.testing.assert_allclose(bm.predict(P[order]), np.clip(P[0], 1, 5))
    assert bm.weights_.sum(axis=0).tolist() == [1.0] * 6


def test_best_member_is_a_candidate_and_its_name_is_reserved():
    P, y = members(seed=4)
    cfg = BlendConfig(members=["a", "b", "c"], methods=[MethodConfig("mean", "mean")])
    splits = outer_splits(len(y), None, n_folds=3, repeats=1, seed=0)
    table, _ = score_methods(cfg, P, y, splits, None, ["a", "b", "c"])
    rows = table.set_index("name")
    assert rows.loc[BEST_MEMBER_ROW, "kind"] == "best_member" and SELECTED_ROW in rows.index
    assert rows.loc[BEST_MEMBER_ROW, "nested"] == pytest.approx(rmse_per_trait(y, P[0]).mean())
    clash = BlendConfig(members=cfg.members, methods=[MethodConfig("best-member", "mean")])
    with pytest.raises(ConfigError, match="best-member"):
        score_methods(clash, P, y, splits, None, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="bootstrap"):
        load_blend_config_text({"name": "x", "members": ["a"], "uncertainty": {"bootstrap": 100}})


def load_blend_config_text(raw: dict) -> BlendConfig:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_blend_config(path)


def test_when_one_member_dominates_the_blend_is_that_member_alone(tmp_path, fb3_dir, train_df):
    """Member `good` is the labels plus noise; the others are `good` plus more noise, so no blend can beat it
    and every fitted weight only adds noise: the table says so and the saved blend is `good` alone."""
    rng = np.random.default_rng(0)
    y = train_df[list(TARGETS)].to_numpy(dtype=float)
    good = np.clip(y + rng.normal(0, 0.25, y.shape), 1, 5)  # in range: the blends' clipping does not help it
    paths = []
    for name, p in [("good", good), *[(f"noisy{k}", good + rng.normal(0, 0.3, y.shape)) for k in range(3)]]:
        paths.append(tmp_path / f"{name}.csv")
        pd.DataFrame(p, columns=list(TARGETS)).assign(**{ID_COL: train_df[ID_COL].to_numpy()}).to_csv(
            paths[-1], index=False)
    cfg_path = tmp_path / "dom.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "dom", "members": [str(p) for p in paths], "outer": {"split": "kfold", "n_folds": 4, "seed": 0},
        "methods": [{"name": "mean", "kind": "mean"}, {"name": "slsqp", "kind": "scipy"},
                    {"name": "caruana", "kind": "hillclimb"}, {"name": "ridge", "kind": "ridge"}]}))
    res = run_blend(load_blend_config(cfg_path), tmp_path / "ws", fb3_dir)
    table = res.table.set_index("name")
    assert res.chosen == BEST_MEMBER_ROW and res.member == "good"
    # hill climbing may never leave the best member (a tie, which the member alone wins); the others are worse
    assert table.loc[BEST_MEMBER_ROW, "nested"] <= table.loc["caruana", "nested"]
    assert table.loc[BEST_MEMBER_ROW, "nested"] < table.loc[["mean", "slsqp", "ridge"], "nested"].min()
    assert table.loc[BEST_MEMBER_ROW, "nested"] == pytest.approx(table.loc["good", "nested"])
    # the honest selector picks the best member in every outer fold, so its score is the member's
    assert res.honest == pytest.approx(table.loc["good", "nested"])
    assert table.loc["good", "loo_delta"] > 0.01  # without `good` the best member is a noisy one
    md = (res.blend_dir / "table.md").read_text()
    assert "No blend method beats the best single member" in md and "**good** alone" in md
    assert "paired bootstrap" in md and "2000 resamples, seed 0" in md
    spec = json.loads((res.blend_dir / "spec.json").read_text())
    assert spec["members"] == ["good"] and spec["external_members"] == ["good"] and len(spec["input_members"]) == 4
    assert spec["weights"]["cohesion"] == {"good": 1.0}
    blend = load_fitted_blend(res.blend_dir)
    assert blend.members == ["good"]
    blend.spec["external_members"] = []  # as if `good` could predict: the blend then passes it through alone
    np.testing.assert_allclose(blend.predict([good[:5]]), np.clip(good[:5], 1, 5))
