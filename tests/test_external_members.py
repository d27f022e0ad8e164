"""Outside models in a blend: `{oof, test}` members predict through their test files, aligned by text_id.

The Kaggle ensemble-notebook recipe of the README, end to end through the CLI as subprocesses: two outside models
(ridge on text statistics, fitted here on the workspace's folds as another notebook would) written as OOF +
test-prediction pairs (one CSV, one parquet, rows shuffled against test.csv), one workspace member (tfidf-ridge
on a few hundred essays); blend, predict, bundle, and predict again from a read-only bundle with the original
files gone. The submission must be the blend's weights applied to each essay's own predictions. Then what is
refused, each with one `error:` line and exit 2 before any member predicts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import Ridge

from fb3stack.cli.main import main
from fb3stack.constants import FOLD_COL, ID_COL, TARGETS, TEXT_COL

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from fb3stack.cli.main import main; sys.exit(main(sys.argv[1:]))"
N_TRAIN, N_TEST = 300, 40


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, cwd=cwd, env=env)


def text_stats(texts: pd.Series, kind: str) -> np.ndarray:
    words = texts.str.split().str.len().to_numpy(dtype=float)
    if kind == "length":
        return np.c_[np.log1p(words), np.log1p(texts.str.len()), np.log1p(texts.str.count(r"[.!?]+"))]
    unique = texts.map(lambda t: len(set(t.lower().split()))).to_numpy(dtype=float)
    return np.c_[unique / np.maximum(words, 1), texts.str.count(",") / np.maximum(words, 1),
                 texts.map(lambda t: np.mean([len(w) for w in t.split()] or [0])).to_numpy()]


def outside_model(train: pd.DataFrame, folds: np.ndarray, test: pd.DataFrame, kind: str
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What another notebook saves: OOF on the shared folds, and test predictions of a model fitted on all rows."""
    X, y = text_stats(train[TEXT_COL], kind), train[list(TARGETS)].to_numpy()
    oof = np.zeros_like(y)
    for k in np.unique(folds):
        oof[folds == k] = Ridge(alpha=1.0).fit(X[folds != k], y[folds != k]).predict(X[folds == k])
    test_preds = Ridge(alpha=1.0).fit(X, y).predict(text_stats(test[TEXT_COL], kind))
    oof_df = pd.DataFrame(oof, columns=list(TARGETS)).assign(**{ID_COL: train[ID_COL].to_numpy(), FOLD_COL: folds})
    test_df = pd.DataFrame(test_preds, columns=list(TARGETS)).assign(**{ID_COL: test[ID_COL].to_numpy()})
    return oof_df, test_df


@pytest.fixture(scope="module")
def recipe(fb3_dir, train_df, tmp_path_factory) -> Path:
    """Three notebooks' outputs (two outside models, one workspace), then the last notebook's blend."""
    root = tmp_path_factory.mktemp("recipe")
    data = root / "data"
    data.mkdir()
    rows = train_df.sample(N_TRAIN + N_TEST, random_state=0).reset_index(drop=True)
    train, test = rows.iloc[:N_TRAIN], rows.iloc[N_TRAIN:].reset_index(drop=True)
    train.to_csv(data / "train.csv", index=False)
    test[[ID_COL, TEXT_COL]].to_csv(data / "test.csv", index=False)
    sample = test[[ID_COL]].sample(frac=1, random_state=1).assign(**{t: 3.0 for t in TARGETS})
    sample.to_csv(data / "sample_submission.csv", index=False)
    zoo = {"name": "recipe", "folds": {"n_folds": 3, "seed": 0},
           "members": [{"include": str(REPO / "configs/models/tfidf-ridge.yaml")}]}
    (root / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    # the workspace member's notebook
    res = cli("train", str(root / "zoo.yaml"), "--workspace", str(root / "ws"), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    # the outside models' notebooks, on the same folds; their test rows in another order than test.csv
    folds = pd.read_csv(root / "ws/folds.csv", dtype={ID_COL: str}).set_index(ID_COL).loc[train[ID_COL], FOLD_COL]
    out = root / "outside"
    out.mkdir()
    for name, kind, ext in (("stats-a", "length", "csv"), ("stats-b", "style", "parquet")):
        oof, test_preds = outside_model(train, folds.to_numpy(), test, kind)
        test_preds = test_preds.sample(frac=1, random_state=len(name) + len(kind))
        if ext == "csv":
            oof.to_csv(out / f"{name}_oof.csv", index=False)
            test_preds.to_csv(out / f"{name}_test.csv", index=False)
        else:  # written without the fold column, as the public OOFs are
            oof.drop(columns=FOLD_COL).to_parquet(out / f"{name}_oof.parquet", index=False)
            test_preds.to_parquet(out / f"{name}_test.parquet", index=False)
    blend = {"name": "mix", "members": ["tfidf-ridge", {"oof": "stats-a_oof.csv", "test": "stats-a_test.csv"},
                                        {"oof": "stats-b_oof.parquet", "test": "stats-b_test.parquet"}],
             "methods": [{"name": "mean", "kind": "mean"},
                         {"name": "slsqp", "kind": "scipy", "params": {"method": "SLSQP"}}]}
    (out / "blend.yaml").write_text(yaml.safe_dump(blend))  # relative files: beside the YAML
    res = cli("blend", str(out / "blend.yaml"), "--workspace", str(root / "ws"), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    assert "without test predictions" not in res.stderr
    return root


def expected_submission(root: Path, test_order: bool = True) -> pd.DataFrame:
    """The blend's recorded weights applied by hand: the workspace member's models predict, the outside members'
    predictions are looked up by text_id (with test_order=False: taken in file row order, the bug to catch)."""
    from fb3stack.base.runner import SavedMember
    from fb3stack.data import load_test

    spec = json.loads((root / "ws/blends/mix/spec.json").read_text())
    test = load_test(root / "data/test.csv")
    preds = {"tfidf-ridge": SavedMember.load(root / "ws/models/tfidf-ridge").predict(test)}
    for name, path in (("stats-a", "stats-a_test.csv"), ("stats-b", "stats-b_test.parquet")):
        df = pd.read_csv(root / "outside" / path) if path.endswith(".csv") else pd.read_parquet(root / "outside" / path)
        preds[name] = (df.set_index(ID_COL).loc[test[ID_COL]] if test_order else df)[list(TARGETS)].to_numpy()
    out = pd.DataFrame({ID_COL: test[ID_COL]})
    for k, t in enumerate(TARGETS):
        value = sum(spec["weights"][t][name] * preds[name][:, k] for name in spec["members"]) + spec["intercept"][t]
        out[t] = np.clip(value, 1.0, 5.0)
    return out


def refused(capsys, *args: str) -> str:
    """The command run in-process: exit 2 and one `error:` line on stderr, returned."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    return err


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(ID_COL, ignore_index=True)


def test_recipe_submission_is_the_blend_of_each_essays_own_predictions(recipe, tmp_path):
    root, data = recipe, recipe / "data"
    spec = json.loads((root / "ws/blends/mix/spec.json").read_text())
    assert spec["members"] == ["tfidf-ridge", "stats-a", "stats-b"]
    assert set(spec["member_tests"]) == {"stats-a", "stats-b"} and len(spec["member_tests"]["stats-a"]["sha256"]) == 64
    assert len({round(w, 6) for w in spec["weights"]["cohesion"].values()}) > 1 or spec["method"] == "mean"
    res = cli("predict", "--workspace", str(root / "ws"), "--test", str(data / "test.csv"), "--sample-submission",
              str(data / "sample_submission.csv"), "--out", str(tmp_path / "submission.csv"))
    assert res.returncode == 0, res.stderr
    sub = pd.read_csv(tmp_path / "submission.csv")
    sample = pd.read_csv(data / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and list(sub[ID_COL]) == list(sample[ID_COL])
    expected = expected_submission(root)
    pd.testing.assert_frame_equal(by_id(sub), by_id(expected), atol=1e-6, rtol=0)
    # the check has teeth: the outside rows taken in file order (they are shuffled) give another submission
    wrong = expected_submission(root, test_order=False)
    assert np.abs(by_id(wrong)[list(TARGETS)].to_numpy() - by_id(expected)[list(TARGETS)].to_numpy()).max() > 0.01

    # the last notebook's bundle: the test files travel; read-only, the originals gone, the same submission
    res = cli("bundle", "--workspace", str(root / "ws"), "--out", str(tmp_path / "bundle"), "--no-wheels")
    assert res.returncode == 0, res.stderr
    bundle = tmp_path / "bundle"
    assert sorted(p.relative_to(bundle).as_posix() for p in (bundle / "external").rglob("*.*")) == [
        "external/stats-a/stats-a_test.csv", "external/stats-b/stats-b_test.parquet"]
    assert "--member-test <member>=<file>" in (bundle / "README.md").read_text()
    for text in ((bundle / "blend/spec.json").read_text(), (bundle / "blend/config.yaml").read_text()):
        assert str(root) not in text  # no path of the training machine
    for path in [bundle, *bundle.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    (root / "outside").rename(root / "outside-gone")
    try:
        work, tmp = tmp_path / "working", tmp_path / "tmp"
        work.mkdir()
        tmp.mkdir()
        res = cli("predict", "--bundle", str(bundle), "--test", str(data / "test.csv"), "--sample-submission",
                  str(data / "sample_submission.csv"), cwd=work, env={"TMPDIR": str(tmp)})
        assert res.returncode == 0, res.stderr
        pd.testing.assert_frame_equal(pd.read_csv(work / "submission.csv"), sub)
    finally:
        (root / "outside-gone").rename(root / "outside")
        for path in [bundle, *bundle.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_oof_without_test_file_is_scored_with_a_warning_and_refused_at_predict(recipe, tmp_path, capsys):
    root, data = recipe, recipe / "data"
    blend = {"name": "scored-only", "members": ["tfidf-ridge", str(root / "outside/stats-a_oof.csv"),
                                                {"oof": str(root / "outside/stats-b_oof.parquet")}],
             "methods": [{"name": "mean", "kind": "mean"}]}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(blend))
    res = cli("blend", str(tmp_path / "b.yaml"), "--workspace", str(root / "ws"), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 2 and all("without test predictions" in w and "cannot predict" in w for w in warnings)
    assert "'stats-a'" in warnings[0] and "'stats-b'" in warnings[1]
    try:
        for args in (["predict", "--workspace", str(root / "ws"), "--blend", "scored-only", "--test",
                      str(data / "test.csv"), "--out", str(tmp_path / "s.csv")],
                     ["bundle", "--workspace", str(root / "ws"), "--blend", "scored-only", "--out",
                      str(tmp_path / "bundle"), "--no-wheels"]):
            err = refused(capsys, *args)
            assert "without test predictions ['stats-a', 'stats-b']" in err and "{oof:" in err
        assert not (tmp_path / "s.csv").exists() and not (tmp_path / "bundle").exists()
    finally:
        shutil.rmtree(root / "ws/blends/scored-only")


def test_test_ids_that_differ_are_named_before_any_member_predicts(recipe, tmp_path, capsys):
    root, data = recipe, recipe / "data"
    test = pd.read_csv(data / "test.csv")
    other = pd.concat([test.iloc[2:], pd.read_csv(data / "train.csv").iloc[:2][[ID_COL, TEXT_COL]]])
    other.to_csv(tmp_path / "other_test.csv", index=False)
    cache_before = sorted((root / "ws/predictions").iterdir()) if (root / "ws/predictions").is_dir() else []
    err = refused(capsys, "predict", "--workspace", str(root / "ws"), "--test", str(tmp_path / "other_test.csv"),
                  "--out", str(tmp_path / "s.csv"))
    assert "stats-a_test.csv" in err and "ids differ from the test file's" in err
    for text_id in [*test[ID_COL].iloc[:2], *other[ID_COL].iloc[-2:]]:  # both sides named
        assert text_id in err
    # nothing predicted: no cache folder for this test set, no submission
    now = sorted((root / "ws/predictions").iterdir()) if (root / "ws/predictions").is_dir() else []
    assert now == cache_before and not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("damage", ["nan", "out-of-range", "missing-id", "duplicate-id", "no-column"])
def test_bad_test_predictions_name_file_row_and_column(recipe, tmp_path, capsys, damage):
    """Given at predict (--member-test: the same model's predictions for this test file) or at blend time."""
    root, data = recipe, recipe / "data"
    df = pd.read_csv(root / "outside/stats-a_test.csv")
    bad_id = df[ID_COL].iloc[4]
    if damage == "nan":
        df.loc[4, "syntax"] = np.nan
    elif damage == "out-of-range":
        df.loc[4, "syntax"] = 30.0
    elif damage == "missing-id":
        df = df.drop(index=4)
    elif damage == "duplicate-id":
        df.loc[5, ID_COL] = bad_id
    else:
        df = df.drop(columns="syntax")
    bad = tmp_path / "bad_test.csv"
    df.to_csv(bad, index=False)
    fragment = {"nan": f"row 5 (text_id={bad_id}), column 'syntax': NaN",
                "out-of-range": f"row 5 (text_id={bad_id}), column 'syntax': prediction 30 is outside [0, 6]",
                "missing-id": f"1 id(s) in the test file {data / 'test.csv'} but not here: {bad_id}",
                "duplicate-id": f"row 6 (text_id={bad_id}), column 'text_id': duplicate text_id",
                "no-column": "missing column(s) ['syntax']"}[damage]
    err = refused(capsys, "predict", "--workspace", str(root / "ws"), "--test", str(data / "test.csv"), "--out",
                  str(tmp_path / "s.csv"), "--member-test", f"stats-a={bad}")
    assert str(bad) in err and fragment in err, err
    if damage != "missing-id":  # found at blend time too, before anything is written
        blend = {"name": "bad", "members": ["tfidf-ridge", {"oof": str(root / "outside/stats-a_oof.csv"),
                                                            "test": str(bad)}],
                 "methods": [{"name": "mean", "kind": "mean"}]}
        (tmp_path / "b.yaml").write_text(yaml.safe_dump(blend))
        err = refused(capsys, "blend", str(tmp_path / "b.yaml"), "--workspace", str(root / "ws"), "--data-dir",
                      str(data))
        assert str(bad) in err and fragment in err, err
        assert not (root / "ws/blends/bad").exists()


def test_member_test_gives_this_test_files_predictions(recipe, tmp_path, capsys):
    """A code competition reruns the notebook on hidden essays: the outside model predicts them there and
    --member-test hands its file over (checked like the recorded one, but not by hash: it is new)."""
    root, data = recipe, recipe / "data"
    test = pd.read_csv(data / "test.csv").iloc[:25]
    test.to_csv(tmp_path / "hidden.csv", index=False)
    a = pd.read_csv(root / "outside/stats-a_test.csv")
    a[a[ID_COL].isin(test[ID_COL])].iloc[::-1].to_csv(tmp_path / "a_hidden.csv", index=False)
    b = pd.read_parquet(root / "outside/stats-b_test.parquet")
    b[b[ID_COL].isin(test[ID_COL])].to_parquet(tmp_path / "b_hidden.parquet", index=False)
    args = ["predict", "--workspace", str(root / "ws"), "--test", str(tmp_path / "hidden.csv"), "--out",
            str(tmp_path / "s.csv")]
    assert main([*args, "--member-test", f"stats-a={tmp_path / 'a_hidden.csv'}", "--member-test",
                 f"stats-b={tmp_path / 'b_hidden.parquet'}"]) == 0
    full = expected_submission(root).set_index(ID_COL).loc[test[ID_COL]].reset_index()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "s.csv"), full, atol=1e-6, rtol=0)
    err = refused(capsys, *args, "--member-test", f"stats-a={tmp_path / 'a_hidden.csv'}")  # stats-b: recorded file
    assert "stats-b_test.parquet" in err and "15 id(s) here but not in the test file" in err
    err = refused(capsys, *args, "--member-test", f"tfidf-ridge={tmp_path / 'a_hidden.csv'}")
    assert "not an outside member" in err and "['stats-a', 'stats-b']" in err
    assert "expected NAME=FILE" in refused(capsys, *args, "--member-test", "stats-a")


def test_a_test_file_changed_since_the_blend_is_refused_at_predict_and_bundle(recipe, tmp_path, capsys):
    root, data = recipe, recipe / "data"
    path = root / "outside/stats-a_test.csv"
    original = path.read_bytes()
    df = pd.read_csv(path)
    df.loc[0, "cohesion"] += 0.25  # a notebook rerun rewrote the file
    df.to_csv(path, index=False)
    try:
        err = refused(capsys, "predict", "--workspace", str(root / "ws"), "--test", str(data / "test.csv"), "--out",
                      str(tmp_path / "s.csv"))
        assert str(path) in err and "changed since blend 'mix' was fitted" in err
        err = refused(capsys, "bundle", "--workspace", str(root / "ws"), "--out", str(tmp_path / "bundle"),
                      "--no-wheels")
        assert "changed since blend 'mix' was fitted" in err and not (tmp_path / "bundle").exists()
        # status says so too: the blend is stale, as predict would refuse it
        capsys.readouterr()
        assert main(["status", "--workspace", str(root / "ws"), "--data-dir", str(data), "--json"]) == 0
        blends = {b["blend"]: b for b in json.loads(capsys.readouterr().out)["blends"]}
        assert blends["mix"]["state"] == "stale"
        path.unlink()
        err = refused(capsys, "predict", "--workspace", str(root / "ws"), "--test", str(data / "test.csv"), "--out",
                      str(tmp_path / "s.csv"))
        assert "test predictions of member 'stats-a'" in err and "not there" in err
    finally:
        path.write_bytes(original)
    capsys.readouterr()
    assert main(["status", "--workspace", str(root / "ws"), "--data-dir", str(data), "--json"]) == 0
    assert {b["blend"]: b for b in json.loads(capsys.readouterr().out)["blends"]}["mix"]["state"] == "fresh"


def test_run_checks_the_outside_files_before_training(recipe, tmp_path, capsys):
    root = recipe
    zoo = yaml.safe_load((root / "zoo.yaml").read_text())
    zoo["blend"] = {"name": "z", "members": ["tfidf-ridge", {"oof": str(root / "outside/stats-a_oof.csv"),
                                                             "test": str(tmp_path / "nope.csv")}]}
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    err = refused(capsys, "run", str(tmp_path / "zoo.yaml"), "--workspace", str(tmp_path / "ws"), "--data-dir",
                  str(root / "data"))
    assert "members[1].test" in err and "nope.csv" in err and not (tmp_path / "ws").exists()
    zoo["blend"]["members"][1] = str(root / "outside/stats-a_oof.csv")  # no test predictions: run could not predict
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    err = refused(capsys, "run", str(tmp_path / "zoo.yaml"), "--workspace", str(tmp_path / "ws"), "--data-dir",
                  str(root / "data"))
    assert "members[1]" in err and "without test predictions" in err and not (tmp_path / "ws").exists()
    zoo["blend"]["members"][1] = {"oof": "a.csv", "tests": "b.csv"}
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    err = refused(capsys, "run", str(tmp_path / "zoo.yaml"), "--workspace", str(tmp_path / "ws"))
    assert "members[1]: unknown key(s) ['tests']" in err and "allowed: ['name', 'oof', 'test']" in err
