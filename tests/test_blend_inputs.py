"""Members are aligned on text_id; misaligned inputs are refused with a message naming file, id and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fb3stack.blend.inputs import load_members, workspace_label_ids
from fb3stack.constants import FOLD_COL, ID_COL, TARGETS
from fb3stack.data import DataError
from fb3stack.workspace import Workspace


@pytest.fixture(scope="module")
def public_oofs(extras_dir: Path) -> list[Path]:
    files = sorted((extras_dir / "oof_sunpnwt12").glob("*_oof_df.csv"))
    if len(files) < 2:
        pytest.skip(f"public OOF files not found in {extras_dir / 'oof_sunpnwt12'}")
    return files


@pytest.fixture(scope="module")
def folds(extras_dir: Path) -> pd.DataFrame:
    return pd.read_csv(extras_dir / "folds_yomura_4fold_seed42_multilabelstrat.csv")


def test_public_oofs_align_to_label_order(train_df, public_oofs):
    members = load_members([str(p) for p in public_oofs[:3]], train_df)
    assert [m.name for m in members] == [p.name.removesuffix("_oof_df.csv") for p in public_oofs[:3]]
    raw = pd.read_csv(public_oofs[0]).set_index(ID_COL)
    np.testing.assert_allclose(members[0].preds, raw.loc[train_df[ID_COL], list(TARGETS)].to_numpy())
    assert all(m.external and m.folds is None for m in members)


def test_glob_pattern_expands(train_df, public_oofs):
    members = load_members([str(public_oofs[0].parent / "robertal_*_oof_df.csv")], train_df)
    assert len(members) == len(list(public_oofs[0].parent.glob("robertal_*_oof_df.csv"))) > 1


def write_model(ws: Workspace, name: str, oof: pd.DataFrame) -> Path:
    path = ws.model_dir(name) / "oof.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    oof.to_parquet(path, index=False)
    return path


def workspace_oof(public: Path, folds: pd.DataFrame) -> pd.DataFrame:
    return pd.read_csv(public).merge(folds, on=ID_COL)[[ID_COL, FOLD_COL, *TARGETS]]


def test_workspace_members_keep_their_folds(tmp_path, train_df, public_oofs, folds):
    ws = Workspace.at(tmp_path / "ws")
    write_model(ws, "a", workspace_oof(public_oofs[0], folds))
    write_model(ws, "b", workspace_oof(public_oofs[1], folds))
    members = load_members(["a", "b"], train_df, ws)
    expected = folds.set_index(ID_COL).loc[train_df[ID_COL], FOLD_COL].to_numpy()
    assert all(not m.external for m in members)
    np.testing.assert_array_equal(members[1].folds, expected)


def test_members_on_different_folds_are_refused(tmp_path, train_df, public_oofs, folds):
    ws = Workspace.at(tmp_path / "ws")
    write_model(ws, "a", workspace_oof(public_oofs[0], folds))
    shifted = folds.assign(**{FOLD_COL: (folds[FOLD_COL] + 1) % 4})
    path = write_model(ws, "b", workspace_oof(public_oofs[1], shifted))
    with pytest.raises(DataError, match="different folds than 'a'") as err:
        load_members(["a", "b"], train_df, ws)
    assert str(path) in str(err.value) and "column 'fold'" in str(err.value)


def corrupt(public: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    df = pd.read_csv(public)
    victim = df[ID_COL].iloc[10]
    if how == "missing":
        df = df.drop(index=10)
    elif how == "extra":
        df = pd.concat([df, df.iloc[[0]].assign(**{ID_COL: "NOT_A_TRAIN_ID"})])
        victim = "NOT_A_TRAIN_ID"
    elif how == "duplicate":
        df = pd.concat([df, df.iloc[[10]]])
    elif how == "nan":
        df.loc[10, "grammar"] = np.nan
    path = tmp_path / f"{how}_oof.csv"
    df.to_csv(path, index=False)
    return path, victim


@pytest.mark.parametrize("how,message", [
    ("missing", "1 training id\\(s\\) missing"),
    ("extra", "1 id\\(s\\) not in the training labels"),
    ("duplicate", "duplicate text_id"),
    ("nan", "NaN or non-numeric prediction"),
])
def test_bad_oof_files_are_refused_naming_file_id_and_column(tmp_path, train_df, public_oofs, how, message):
    path, victim = corrupt(public_oofs[0], tmp_path, how)
    with pytest.raises(DataError, match=message) as err:
        load_members([str(public_oofs[1]), str(path)], train_df)
    text = str(err.value)
    assert str(path) in text and victim in text
    assert ("column 'grammar'" if how == "nan" else "column 'text_id'") in text
    if how in ("nan", "duplicate"):
        assert "row " in text


def test_missing_member_and_column_are_refused(tmp_path, train_df, public_oofs):
    with pytest.raises(DataError, match="member 'nope' has no OOF in the workspace; train it first"):
        load_members(["nope"], train_df, Workspace.at(tmp_path / "ws"))
    with pytest.raises(DataError, match="member 'x.csv' is neither an OOF file nor a model"):
        load_members(["x.csv"], train_df, Workspace.at(tmp_path / "ws"))
    path = tmp_path / "short_oof.csv"
    pd.read_csv(public_oofs[0]).drop(columns=["syntax"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing column.*syntax"):
        load_members([str(path)], train_df)


def test_members_on_an_older_workspace_split_are_refused(tmp_path, train_df, public_oofs, folds):
    ws = Workspace.at(tmp_path / "ws")
    path = write_model(ws, "a", workspace_oof(public_oofs[0], folds))
    folds.assign(**{FOLD_COL: (folds[FOLD_COL] + 1) % 4}).to_csv(ws.folds_path, index=False)
    with pytest.raises(DataError, match="other folds than the workspace's") as err:
        load_members(["a"], train_df, ws)
    assert str(path) in str(err.value)


def test_a_subset_workspace_blends_on_its_own_essays(tmp_path, train_df, public_oofs, folds):
    ws = Workspace.at(tmp_path / "ws")
    subset = folds.sample(500, random_state=0)
    subset.to_csv(ws.folds_path, index=False)
    write_model(ws, "a", workspace_oof(public_oofs[0], subset))
    labels = workspace_label_ids(ws, train_df)
    assert set(labels[ID_COL]) == set(subset[ID_COL])
    assert load_members(["a"], labels, ws)[0].preds.shape == (500, 6)
    with pytest.raises(DataError, match=f"{len(train_df) - 500} training id\\(s\\) missing"):
        load_members(["a"], train_df, ws)  # against the full labels the subset member is refused


def test_non_integer_fold_is_refused(tmp_path, train_df, public_oofs, folds):
    ws = Workspace.at(tmp_path / "ws")
    oof = workspace_oof(public_oofs[0], folds).astype({FOLD_COL: float})
    oof.loc[7, FOLD_COL] = 1.5
    path = write_model(ws, "a", oof)
    with pytest.raises(DataError, match="fold must be a non-negative integer") as err:
        load_members(["a"], train_df, ws)
    assert str(path) in str(err.value) and "row 8" in str(err.value)
