"""Reading and validating the FB3 files.

Every problem is reported as a `DataError` naming the file, the row (1-based, header not counted), the
column and, where known, the text_id, so a user can open the file and fix it. Validation happens before
anything is written, so a bad file never leaves half an artefact behind.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fb3stack.constants import ID_COL, SCORE_MAX, SCORE_MIN, SCORE_STEP, TARGETS, TEXT_COL
from fb3stack.io import sha256_bytes

logger = logging.getLogger(__name__)

DATA_ENV = "FB3STACK_DATA"


class DataError(ValueError):
    """Bad input data; the message names file, row and column."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, row: int | None = None,
                 column: str | None = None, text_id: str | None = None) -> None:
        self.file, self.row, self.column, self.text_id, self.reason = file, row, column, text_id, message
        where = [str(file) if file is not None else "<data>"]
        if row is not None:
            where.append(f"row {row}" + (f" (text_id={text_id})" if text_id else ""))
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}")


def resolve_data_dir(cli_value: str | os.PathLike | None = None, config_value: str | os.PathLike | None = None) -> Path:
    """--data-dir wins over $FB3STACK_DATA, which wins over the config's data.data_dir."""
    for source, value in (("--data-dir", cli_value), (DATA_ENV, os.environ.get(DATA_ENV)), ("config", config_value)):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"data directory from {source} does not exist or is not a folder", file=path)
            return path
    raise DataError(f"no data directory: pass --data-dir, set ${DATA_ENV}, or set data.data_dir in the config")


def _read_csv_text(path: Path) -> pd.DataFrame:
    """Read a CSV as strings, refusing undecodable bytes with their row and column."""
    if not path.is_file():
        raise DataError("file not found", file=path)
    raw, bad = path.read_bytes().removeprefix(b"\xef\xbb\xbf"), None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad, text = err, raw.decode("utf-8", errors="replace")  # U+FFFD marks the bad bytes
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"not a readable CSV: {err}", file=path) from err
    if bad is not None:
        for column in df.columns:
            hits = df[column].str.contains("\ufffd", regex=False)
            if hits.any():
                i = int(np.flatnonzero(hits.to_numpy())[0])
                tid = df[ID_COL].iloc[i] if ID_COL in df.columns and column != ID_COL else None
                raise DataError(f"undecodable bytes (not UTF-8) at byte offset {bad.start}", file=path, row=i + 1,
                                column=column, text_id=tid)
        raise DataError(f"undecodable bytes (not UTF-8) at byte offset {bad.start}", file=path)
    return df


# check-data lists at most this many problems per file (a file with every score shifted has thousands)
MAX_LISTED = 20


def _missing_columns(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> list[DataError]:
    missing = [c for c in columns if c not in df.columns]
    return [DataError(f"missing column(s) {missing}; found {list(df.columns)}", file=path, column=missing[0])] \
        if missing else []


def _no_rows(df: pd.DataFrame, path: Path, what: str) -> list[DataError]:
    return [DataError(f"has a header but no rows: no {what}", file=path)] if len(df) == 0 else []


def _id_and_text_problems(df: pd.DataFrame, path: Path) -> list[DataError]:
    """Every empty id, every duplicated id (once, naming its rows) and every empty essay."""
    ids = df[ID_COL].str.strip()
    problems = [DataError("empty text_id", file=path, row=int(i) + 1, column=ID_COL)
                for i in np.flatnonzero((ids == "").to_numpy())]
    dup = ids.duplicated(keep=False).to_numpy() & (ids != "").to_numpy()
    for first in dict.fromkeys(ids[dup]):
        same = [int(r) + 1 for r in np.flatnonzero((ids == first).to_numpy())]
        problems.append(DataError(f"duplicate text_id '{first}' (rows {same})", file=path, row=same[-1],
                                  column=ID_COL, text_id=first))
    blank = np.flatnonzero((df[TEXT_COL].str.strip() == "").to_numpy())
    problems += [DataError("empty or missing essay text", file=path, row=int(i) + 1, column=TEXT_COL,
                           text_id=ids.iloc[i]) for i in blank]
    return problems


def _score_problems(df: pd.DataFrame, path: Path, on_bad_score: str) -> list[DataError]:
    """Converts the score columns to floats in place; returns every bad cell, in row order per column. Scores
    outside [1, 5] or off the grid are logged instead when on_bad_score is 'warn'."""
    problems = []
    for col in TARGETS:
        raw = df[col].str.strip()
        arr = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        for i in np.flatnonzero(np.isnan(arr)):
            what = "missing score" if raw.iloc[i] == "" else f"not a number: {raw.iloc[i]!r}"
            problems.append(DataError(what, file=path, row=int(i) + 1, column=col, text_id=df[ID_COL].iloc[i]))
        with np.errstate(invalid="ignore"):
            outside = (arr < SCORE_MIN) | (arr > SCORE_MAX)
            steps = (arr - SCORE_MIN) / SCORE_STEP
            off_grid = ~outside & ~np.isnan(arr) & ~np.isclose(steps, np.round(steps))
        for mask, what in ((outside, f"outside [{SCORE_MIN}, {SCORE_MAX}]"), (off_grid, f"off the {SCORE_STEP} grid")):
            for i in np.flatnonzero(mask):
                err = DataError(f"score {arr[i]} is {what}", file=path, row=int(i) + 1, column=col,
                                text_id=df[ID_COL].iloc[i])
                if on_bad_score == "error":
                    problems.append(err)
                else:
                    logger.warning("%s (kept because on_bad_score=warn)", err)
        df[col] = arr
    return problems


def _in_row_order(problems: list[DataError]) -> list[DataError]:
    """As a user reads the file: by row, then column order (stable: ties keep their order)."""
    order = {c: i for i, c in enumerate((ID_COL, TEXT_COL, *TARGETS))}
    return sorted(problems, key=lambda e: (e.row or 0, order.get(e.column or "", -1)))


def raise_first(problems: list[DataError]) -> None:
    """Raise the first problem, saying how many more there are (`fb3stack check-data` lists them all)."""
    if not problems:
        return
    first = problems[0]
    if len(problems) == 1:
        raise first
    raise DataError(f"{first.reason} (and {len(problems) - 1} more problem(s) in this file; "
                    "`fb3stack check-data` lists them all)", file=first.file, row=first.row, column=first.column,
                    text_id=first.text_id)


def check_train(path: str | os.PathLike, on_bad_score: Literal["error", "warn"] = "error"
                ) -> tuple[pd.DataFrame | None, list[DataError]]:
    """train.csv → (DataFrame[text_id, full_text, *TARGETS] with float scores, every problem found); the frame is
    None when the file cannot be read as a table of the right columns."""
    path = Path(path)
    try:
        df = _read_csv_text(path)
    except DataError as err:
        return None, [err]
    problems = _missing_columns(df, (ID_COL, TEXT_COL, *TARGETS), path)
    if problems:
        return None, problems
    problems = _no_rows(df, path, "essays") + _in_row_order(_id_and_text_problems(df, path)
                                                            + _score_problems(df, path, on_bad_score))
    df[ID_COL] = df[ID_COL].str.strip()
    return df[[ID_COL, TEXT_COL, *TARGETS]].reset_index(drop=True), problems


def check_test(path: str | os.PathLike) -> tuple[pd.DataFrame | None, list[DataError]]:
    """test.csv → (DataFrame[text_id, full_text], every problem found), validated like training data."""
    path = Path(path)
    try:
        df = _read_csv_text(path)
    except DataError as err:
        return None, [err]
    problems = _missing_columns(df, (ID_COL, TEXT_COL), path)
    if problems:
        return None, problems
    problems = _no_rows(df, path, "essays to predict") + _in_row_order(_id_and_text_problems(df, path))
    df[ID_COL] = df[ID_COL].str.strip()
    return df[[ID_COL, TEXT_COL]].reset_index(drop=True), problems


def check_sample_submission(path: str | os.PathLike) -> tuple[pd.DataFrame | None, list[DataError]]:
    path = Path(path)
    try:
        df = _read_csv_text(path)
    except DataError as err:
        return None, [err]
    problems = _missing_columns(df, (ID_COL, *TARGETS), path)
    if problems:
        return None, problems
    df[ID_COL] = df[ID_COL].str.strip()
    return df, _no_rows(df, path, "rows to fill")


def load_train(path: str | os.PathLike, on_bad_score: Literal["error", "warn"] = "error") -> pd.DataFrame:
    """train.csv → DataFrame[text_id, full_text, *TARGETS] with float scores, validated."""
    df, problems = check_train(path, on_bad_score)
    raise_first(problems)
    return df


def load_test(path: str | os.PathLike) -> pd.DataFrame:
    """test.csv → DataFrame[text_id, full_text], validated like training data."""
    df, problems = check_test(path)
    raise_first(problems)
    return df


def load_sample_submission(path: str | os.PathLike) -> pd.DataFrame:
    df, problems = check_sample_submission(path)
    raise_first(problems)
    return df


def check_same_ids(sample: pd.DataFrame, test: pd.DataFrame, sample_path: str | os.PathLike,
                   test_path: str | os.PathLike, shown: int = 5,
                   hint: str = "Pass the sample submission of this test file") -> None:
    """The sample submission (or another file of test rows: `hint` says what to do) must list exactly the test
    file's ids; the error names the first few that differ on each side."""
    sample_ids, test_ids = set(sample[ID_COL]), set(test[ID_COL])
    if sample_ids == test_ids:
        return
    parts = []
    for ids, where in ((sorted(test_ids - sample_ids), f"in the test file {test_path} but not here"),
                       (sorted(sample_ids - test_ids), "here but not in the test file")):
        if ids:
            more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
            parts.append(f"{len(ids)} id(s) {where}: {', '.join(ids[:shown])}{more}")
    raise DataError("ids differ from the test file's: " + "; ".join(parts) + f". {hint}", file=sample_path,
                    column=ID_COL)


def subsample(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A reproducible random subset for quick runs (None or >= len keeps everything, in file order)."""
    if limit is None or limit >= len(df):
        return df
    if limit < 2:
        raise ValueError(f"data.limit must be >= 2, got {limit}")
    keep = np.sort(np.random.default_rng(seed).choice(len(df), size=limit, replace=False))
    return df.iloc[keep].reset_index(drop=True)


def fingerprint(df: pd.DataFrame) -> str:
    """Hash of the content a model learns from (ids, texts, scores), independent of file path or formatting."""
    cols = [c for c in (ID_COL, TEXT_COL, *TARGETS) if c in df.columns]
    h = pd.util.hash_pandas_object(df[cols].astype(str), index=False).to_numpy()
    return sha256_bytes(h.tobytes() + "|".join(cols).encode())
