"""The honest headline: choosing the blend method by inner CV, scored as one blender by the outer CV."""

from __future__ import annotations

import numpy as np

from fb3stack.blend.config import BlendConfig, MethodConfig
from fb3stack.blend.methods import MeanBlend, make_method
from fb3stack.blend.nested import nested_cv, outer_splits
from fb3stack.blend.run import SELECTED_ROW, honest_note, score_methods
from fb3stack.blend.selection import InnerCVSelect


def members(n: int = 400, m: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.clip(np.round((3 + rng.normal(0, 0.6, (n, 6))) * 2) / 2, 1, 5)
    P = np.stack([y + rng.normal(0, 0.4 + 0.1 * k, y.shape) for k in range(m)])
    return P, y


def test_selector_picks_the_method_with_the_best_inner_score():
    P, y = members()
    cands = [("constant", make_method("ridge", {"alpha": 1e9}), False), ("mean", MeanBlend(), False)]
    sel = InnerCVSelect(cands, n_folds=4, seed=0).fit(P, y)
    assert sel.selected_name_ == "mean"
    assert sel.scores_["mean"] < sel.scores_["constant"]
    np.testing.assert_allclose(sel.predict(P), MeanBlend().fit(P, y).predict(P))


def test_selector_fits_only_on_the_rows_it_is_given():
    """Nested CV of the selector: every inner choice is made on outer-train rows, so predictions of a held-out
    fold do not change when that fold's labels are scrambled."""
    P, y = members(seed=1)
    splits = outer_splits(len(y), None, n_folds=4, repeats=1, seed=0)
    cands = [("mean", MeanBlend(), False), ("nnls", make_method("nnls"), False)]
    a = nested_cv(InnerCVSelect(cands, n_folds=3), P, y, splits).oof[0]
    held = splits[0].test_idx
    y2 = y.copy()
    y2[held] = np.random.default_rng(5).permutation(y2[held])
    b = nested_cv(InnerCVSelect(cands, n_folds=3), P, y2, splits).oof[0]
    np.testing.assert_allclose(a[held], b[held])


def test_table_has_the_selected_row_and_the_note_names_it():
    P, y = members(seed=2)
    cfg = BlendConfig(members=["a", "b", "c", "d"],
                      methods=[MethodConfig("mean", "mean"), MethodConfig("nnls", "nnls"),
                               MethodConfig("ridge", "ridge", {"alpha": 10.0})])
    splits = outer_splits(len(y), None, n_folds=4, repeats=1, seed=0)
    table, oofs = score_methods(cfg, P, y, splits, None, ["a", "b", "c", "d"])
    assert SELECTED_ROW in set(table["name"]) and SELECTED_ROW in oofs
    methods = table[table["kind"].isin(["mean", "nnls", "ridge"])]
    chosen = str(methods.sort_values("nested").iloc[0]["name"])
    note = honest_note(table, chosen)
    honest = float(table.set_index("name").loc[SELECTED_ROW, "nested"])
    assert f"Honest estimate: {honest:.5f}" in note and SELECTED_ROW in note
    assert np.isfinite(honest)
    off = BlendConfig(members=cfg.members, methods=cfg.methods, honest_selection=False)
    table_off, _ = score_methods(off, P, y, splits, None, ["a", "b", "c", "d"])
    assert SELECTED_ROW not in set(table_off["name"])
