"""End to end: `fb3stack blend` over workspace members and public OOFs writes an honest, loadable blend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fb3stack.blend import BlendPredictError, load_fitted_blend
from fb3stack.blend.config import load_blend_config
from fb3stack.blend.run import run_blend
from fb3stack.cli.main import main
from fb3stack.config import ConfigError
from fb3stack.constants import FOLD_COL, ID_COL, TARGETS
from fb3stack.metrics import mcrmse
from fb3stack.workspace import Workspace

METHODS = [
    {"name": "mean", "kind": "mean"},
    {"name": "slsqp-shrink", "kind": "scipy", "params": {"shrink": 0.03}},
    {"name": "ridge", "kind": "ridge", "params": {"alpha": 100.0}},
    {"name": "lgbm-len", "kind": "lgbm", "params": {"n_estimators": 20}, "meta": True},
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, extras_dir: Path) -> Workspace:
    """A workspace whose three members are public OOFs tagged with the public 4-fold split."""
    ws = Workspace.at(tmp_path_factory.mktemp("blend") / "ws")
    folds = pd.read_csv(extras_dir / "folds_yomura_4fold_seed42_multilabelstrat.csv")
    for name in ("debertav3l_s42_pl1", "robertal_s42_pl1", "longformerl_s12"):
        oof = pd.read_csv(extras_dir / "oof_sunpnwt12" / f"{name}_oof_df.csv").merge(folds, on=ID_COL)
        path = ws.model_dir(name) / "oof.parquet"
        path.parent.mkdir(parents=True)
        oof[[ID_COL, FOLD_COL, *TARGETS]].to_parquet(path, index=False)
    return ws


def write_cfg(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_blend_over_workspace_members(tmp_path, zoo, fb3_dir, train_df, capsys):
    names = ["debertav3l_s42_pl1", "robertal_s42_pl1", "longformerl_s12"]
    cfg_path = write_cfg(tmp_path / "b.yaml", name="zoo3", members=names, methods=METHODS,
                         meta_features=["n_words"])
    assert main(["blend", str(cfg_path), "--workspace", str(zoo.root), "--data-dir", str(fb3_dir)]) == 0
    out = zoo.blend_dir("zoo3")
    assert "chosen:" in capsys.readouterr().out
    for f in ("config.yaml", "spec.json", "blender.joblib", "oof.parquet", "table.csv", "table.md", "manifest.json"):
        assert (out / f).is_file(), f
    table = pd.read_csv(out / "table.csv").set_index("name")
    assert set(table.index) == {*names, *(m["name"] for m in METHODS), "best-member", "selected-by-inner-CV"}
    # the honest headline: choosing among the methods, scored by the outer CV, is reported and named as such
    spec = json.loads((out / "spec.json").read_text())
    assert spec["honest_mcrmse"] == pytest.approx(table.loc["selected-by-inner-CV", "nested"])
    assert "Honest estimate" in (out / "table.md").read_text()
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof[ID_COL]) == list(train_df[ID_COL])
    assert oof[FOLD_COL].nunique() == 4  # the members' own folds were the outer folds
    blend = load_fitted_blend(out)
    assert blend.members == names and blend.can_predict
    chosen = blend.spec["method"]
    assert table.loc[chosen, "nested"] == table.loc[[m["name"] for m in METHODS] + ["best-member"], "nested"].min()
    y = train_df[list(TARGETS)].to_numpy()
    assert mcrmse(y, oof[list(TARGETS)].to_numpy()) == pytest.approx(table.loc[chosen, "nested"])
    preds = [pd.read_parquet(zoo.model_dir(n) / "oof.parquet").set_index(ID_COL).loc[train_df[ID_COL],
                                                                                      list(TARGETS)].to_numpy()
             for n in names]
    blended = blend.predict(preds, meta=train_df)
    assert blended.shape == (len(train_df), 6) and 1.0 <= blended.min() and blended.max() <= 5.0
    assert mcrmse(y, blended) == pytest.approx(table.loc[chosen, "in_sample"])
    with pytest.raises(ValueError, match="expected predictions of 3 members"):
        blend.predict(preds[:2])


def test_external_blend_scores_but_cannot_predict(tmp_path, zoo, fb3_dir, extras_dir):
    cfg_path = write_cfg(tmp_path / "ext.yaml", name="ext", methods=METHODS[:2],
                         members=[str(extras_dir / "oof_sunpnwt12" / "deberta3b_s*_oof_df.csv")],
                         outer={"split": "kfold", "n_folds": 3, "repeats": 2, "seed": 1})
    res = run_blend(load_blend_config(cfg_path), zoo.root, fb3_dir)
    blend = load_fitted_blend(res.blend_dir)
    assert not blend.can_predict and len(blend.external_members) == 3
    with pytest.raises(BlendPredictError, match="external OOF files"):
        blend.predict([np.full((2, 6), 3.0)] * 3)


def test_outer_split_from_file_and_zoo_requirement(tmp_path, zoo, fb3_dir, extras_dir, train_df):
    members = [str(extras_dir / "oof_sunpnwt12" / "deberta3b_s0_oof_df.csv")]
    split_file = str(extras_dir / "folds_yomura_4fold_seed42_multilabelstrat.csv")
    cfg = load_blend_config(write_cfg(tmp_path / "f.yaml", name="f", members=members, methods=METHODS[:1],
                                      outer={"split": "file", "file": split_file}))
    res = run_blend(cfg, zoo.root, fb3_dir, write=False)
    assert "4 folds" in res.outer
    expected = pd.read_csv(split_file).set_index(ID_COL).loc[train_df[ID_COL], FOLD_COL].to_numpy()
    np.testing.assert_array_equal(res.outer_folds, expected)
    cfg = load_blend_config(write_cfg(tmp_path / "z.yaml", name="z", members=members, methods=METHODS[:1],
                                      outer={"split": "zoo"}))
    with pytest.raises(ConfigError, match="no member has a fold column"):
        run_blend(cfg, zoo.root, fb3_dir)


def test_config_typos_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_blend_config(write_cfg(tmp_path / "t.yaml", name="t", memebers=["a"]))


def test_shipped_blend_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs" / "blends"
    for path in sorted(root.glob("*.yaml")):
        cfg = load_blend_config(path)
        assert cfg.members and cfg.methods, path


def test_unchanged_blend_is_reused_changed_or_damaged_is_not(tmp_path, zoo, fb3_dir, monkeypatch):
    import fb3stack.blend.run as blend_run

    names = ["debertav3l_s42_pl1", "robertal_s42_pl1"]
    cfg_path = write_cfg(tmp_path / "r.yaml", name="reuse", members=names, methods=METHODS[:2])
    first = run_blend(load_blend_config(cfg_path), zoo.root, fb3_dir)
    scored: list[int] = []
    real = blend_run.score_methods
    monkeypatch.setattr(blend_run, "score_methods", lambda *a, **k: (scored.append(1), real(*a, **k))[1])

    again = run_blend(load_blend_config(cfg_path), zoo.root, fb3_dir)
    assert scored == [], "an unchanged blend was scored again"
    assert (again.chosen, again.honest, again.blend_dir) == (first.chosen, first.honest, first.blend_dir)
    np.testing.assert_allclose(again.oof, first.oof)
    pd.testing.assert_frame_equal(again.table, first.table, check_exact=False, rtol=1e-12)

    (first.blend_dir / "table.md").write_text("edited by hand")
    run_blend(load_blend_config(cfg_path), zoo.root, fb3_dir)
    assert scored == [1], "a blend whose files no longer match their seal was reused"
    write_cfg(cfg_path, name="reuse", members=names, methods=METHODS[:3])
    changed = run_blend(load_blend_config(cfg_path), zoo.root, fb3_dir)
    assert scored == [1, 1] and "ridge" in set(changed.table["name"]), "a changed config reused the old blend"


def test_find_blend_only_one_or_newest(tmp_path):
    import os

    from fb3stack.workspace import find_blend

    assert find_blend(tmp_path, newest=True) is None
    with pytest.raises(FileNotFoundError, match="no fitted blend .*; fit one with `fb3stack blend`"):
        find_blend(tmp_path)
    for i, name in enumerate(("old", "new")):
        (tmp_path / "blends" / name).mkdir(parents=True)
        (tmp_path / "blends" / name / "spec.json").write_text("{}")
        os.utime(tmp_path / "blends" / name / "spec.json", (1_000 + i, 1_000 + i))
    (tmp_path / "blends" / "unfinished").mkdir()  # no spec.json: not a fitted blend
    with pytest.raises(FileNotFoundError, match=r"2 fitted blends \(old, new\); choose one with --blend old or "):
        find_blend(tmp_path)  # predict must not guess between two blends
    assert find_blend(tmp_path, newest=True).name == "new"  # the report shows the latest
    assert find_blend(tmp_path, "old").name == "old"
    with pytest.raises(FileNotFoundError, match=r"--blend unfinished: no fitted blend .*here: old, new\)"):
        find_blend(tmp_path, "unfinished")
