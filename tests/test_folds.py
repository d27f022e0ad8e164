import numpy as np
import pandas as pd
import pytest

from fb3stack.config import FoldsConfig
from fb3stack.constants import TARGETS
from fb3stack.data import DataError
from fb3stack.folds import make_folds, read_folds
from fb3stack.workspace import StaleArtefactError, Workspace, ensure_folds


@pytest.fixture(scope="module")
def folds5(train_df):
    return make_folds(train_df, n_folds=5, seed=42)


def test_every_id_once_and_sizes_within_one(train_df, folds5):
    assert list(folds5["text_id"]) == list(train_df["text_id"])
    assert folds5["text_id"].is_unique
    sizes = folds5["fold"].value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3, 4]
    assert sizes.max() - sizes.min() <= 1


def test_fold_trait_means_close_to_global(real_train_df):
    train_df, folds5 = real_train_df, make_folds(real_train_df, n_folds=5, seed=42)
    merged = train_df.merge(folds5, on="text_id")
    global_means = merged[list(TARGETS)].mean()
    per_fold = merged.groupby("fold")[list(TARGETS)].mean()
    assert (per_fold - global_means).abs().to_numpy().max() < 0.02
    # rare extreme scores are spread over every fold too
    for trait in TARGETS:
        ones = merged[merged[trait] <= 1.5].groupby("fold").size()
        assert len(ones) == 5


def test_seed_changes_split_and_is_reproducible(train_df, folds5):
    again = make_folds(train_df, n_folds=5, seed=42)
    other = make_folds(train_df, n_folds=5, seed=7)
    assert (again["fold"] == folds5["fold"]).all()
    assert (other["fold"] != folds5["fold"]).mean() > 0.5


def test_workspace_folds_written_once_and_mismatch_refused(train_df, tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    small = train_df.iloc[:300].reset_index(drop=True)
    first = ensure_folds(ws, small, FoldsConfig(n_folds=3, seed=1))
    mtime = ws.folds_path.stat().st_mtime_ns
    second = ensure_folds(ws, small, FoldsConfig(n_folds=3, seed=1))
    assert ws.folds_path.stat().st_mtime_ns == mtime
    assert (first["fold"] == second["fold"]).all()
    with pytest.raises(StaleArtefactError, match="n_folds"):
        ensure_folds(ws, small, FoldsConfig(n_folds=4, seed=1))
    with pytest.raises(StaleArtefactError, match="data_hash"):
        ensure_folds(ws, train_df.iloc[:299].reset_index(drop=True), FoldsConfig(n_folds=3, seed=1))
    rewritten = ensure_folds(ws, small, FoldsConfig(n_folds=4, seed=1), force=True)
    assert rewritten["fold"].nunique() == 4


def test_import_external_folds(train_df, extras_dir, tmp_path):
    path = extras_dir / "folds_yomura_4fold_seed42_multilabelstrat.csv"
    ws = Workspace.at(tmp_path / "ws")
    folds = ensure_folds(ws, train_df, FoldsConfig(file=str(path)))
    external = pd.read_csv(path).set_index("text_id")["fold"]
    assert (folds.set_index("text_id")["fold"] == external.loc[folds["text_id"]]).all()
    assert folds["fold"].nunique() == 4


def test_external_folds_missing_ids_refused(train_df, tmp_path):
    bad = make_folds(train_df.iloc[:200], 2, 0).iloc[:-1]
    path = tmp_path / "folds.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match="1 training ids have no fold"):
        read_folds(path, train_df.iloc[:200])


def test_external_folds_bad_value_names_row(train_df, tmp_path):
    folds = make_folds(train_df.iloc[:100], 2, 0)
    folds.loc[4, "fold"] = -1
    path = tmp_path / "folds.csv"
    folds.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 5 .*column 'fold'"):
        read_folds(path, train_df.iloc[:100])


def test_score_indicators_one_hot():
    from fb3stack.folds import score_indicators

    m = score_indicators(np.array([[1.0, 5.0], [3.5, 2.0]]))
    assert m.shape == (2, 18)
    assert m.sum(axis=1).tolist() == [2, 2]
    assert m[0, 0] == 1 and m[0, 9 + 8] == 1 and m[1, 5] == 1 and m[1, 9 + 2] == 1
