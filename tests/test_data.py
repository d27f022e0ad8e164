"""Each bad-input case is refused with a message naming file, row and column; nothing is half-written."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from fb3stack.cli.main import main
from fb3stack.constants import TARGETS
from fb3stack.data import DataError, load_test, load_train, resolve_data_dir


@pytest.fixture()
def small(train_df) -> pd.DataFrame:
    return train_df.iloc[:20].copy()


def write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def test_real_train_loads(real_train_df):
    assert len(real_train_df) == 3911
    assert list(real_train_df.columns) == ["text_id", "full_text", *TARGETS]
    assert real_train_df[list(TARGETS)].dtypes.eq(float).all()


def test_missing_column(small, tmp_path):
    path = write(small.drop(columns=["grammar"]), tmp_path / "train.csv")
    with pytest.raises(DataError, match=r"train\.csv, column 'grammar': missing column"):
        load_train(path)


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_text(small, tmp_path, value):
    small.loc[6, "full_text"] = value
    path = write(small, tmp_path / "train.csv")
    tid = small.loc[6, "text_id"]
    with pytest.raises(DataError, match=rf"row 7 \(text_id={tid}\), column 'full_text': empty or missing essay"):
        load_train(path)


def test_duplicate_ids(small, tmp_path):
    small.loc[9, "text_id"] = small.loc[2, "text_id"]
    path = write(small, tmp_path / "train.csv")
    with pytest.raises(DataError, match=r"row 10 .*column 'text_id': duplicate text_id .*rows \[3, 10\]"):
        load_train(path)


def test_score_outside_range(small, tmp_path):
    small["syntax"] = small["syntax"].astype(object)
    small.loc[4, "syntax"] = 5.5
    path = write(small, tmp_path / "train.csv")
    with pytest.raises(DataError, match=r"row 5 .*column 'syntax': score 5.5 is outside \[1.0, 5.0\]"):
        load_train(path)


def test_score_off_grid_error_or_warn(small, tmp_path, caplog):
    small.loc[11, "vocabulary"] = 3.25
    path = write(small, tmp_path / "train.csv")
    with pytest.raises(DataError, match=r"row 12 .*column 'vocabulary': score 3.25 is off the 0.5 grid"):
        load_train(path)
    with caplog.at_level(logging.WARNING):
        df = load_train(path, on_bad_score="warn")
    assert df.loc[11, "vocabulary"] == 3.25
    assert "off the 0.5 grid" in caplog.text


@pytest.mark.parametrize(("value", "message"), [("", "missing score"), ("good", "not a number: 'good'")])
def test_missing_or_non_numeric_score(small, tmp_path, value, message):
    small["cohesion"] = small["cohesion"].astype(object)
    small.loc[0, "cohesion"] = value
    path = write(small, tmp_path / "train.csv")
    with pytest.raises(DataError, match=rf"row 1 .*column 'cohesion': {message}"):
        load_train(path)


def test_undecodable_bytes(small, tmp_path):
    path = write(small, tmp_path / "train.csv")
    raw = path.read_bytes()
    needle = small.loc[3, "full_text"][:30].encode()
    path.write_bytes(raw.replace(needle, needle[:10] + b"\xff\xfe" + needle[12:], 1))
    with pytest.raises(DataError, match=r"row 4 .*column 'full_text': undecodable bytes \(not UTF-8\)"):
        load_train(path)


def test_test_file_validated(fb3_dir, tmp_path):
    test = load_test(fb3_dir / "test.csv")
    assert len(test) == 3
    test.loc[1, "full_text"] = ""
    with pytest.raises(DataError, match=r"test\.csv, row 2 .*column 'full_text'"):
        load_test(write(test, tmp_path / "test.csv"))


def test_missing_file_and_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("FB3STACK_DATA", raising=False)
    with pytest.raises(DataError, match="file not found"):
        load_train(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no data directory"):
        resolve_data_dir(None, None)
    monkeypatch.setenv("FB3STACK_DATA", str(tmp_path))
    assert resolve_data_dir(None, None) == tmp_path


def test_cli_bad_data_writes_nothing(small, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    small.loc[2, "full_text"] = ""
    write(small, data / "train.csv")
    ws = tmp_path / "ws"
    rc = main(["folds", "--data-dir", str(data), "--workspace", str(ws), "--n-folds", "2"])
    assert rc == 2
    assert "row 3" in capsys.readouterr().err
    assert not (ws / "folds.csv").exists() and not (ws / "folds.json").exists()


def test_cli_check_data_and_folds_on_real_data(real_fb3_dir, tmp_path, capsys):
    fb3_dir = real_fb3_dir
    assert main(["check-data", "--data-dir", str(fb3_dir)]) == 0
    assert "3911 essays, OK" in capsys.readouterr().out
    ws = tmp_path / "ws"
    assert main(["folds", "--data-dir", str(fb3_dir), "--workspace", str(ws), "--set", "folds.n_folds=4"]) == 0
    folds = pd.read_csv(ws / "folds.csv")
    assert len(folds) == 3911 and folds["fold"].nunique() == 4
