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


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; found {list(df.columns)}", file=path, column=missing[0])


def _check_ids_and_text(df: pd.DataFrame, path: Path) -> None:
    ids = df[ID_COL].str.strip()
    empty = np.flatnonzero((ids == "").to_numpy())
    if len(empty):
        raise DataError("empty text_id", file=path, row=int(empty[0]) + 1, column=ID_COL)
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        first = ids.iloc[rows[0]]
        same = [int(r) + 1 for r in rows if ids.iloc[r] == first]
        raise DataError(f"duplicate text_id '{first}' (rows {same}); {int(dup.sum())} rows share an id", file=path,
                        row=same[-1], column=ID_COL, text_id=first)
    blank = np.flatnonzero((df[TEXT_COL].str.strip() == "").to_numpy())
    if len(blank):
        i = int(blank[0])
        raise DataError(f"empty or missing essay text ({len(blank)} such rows)", file=path, row=i + 1,
                        column=TEXT_COL, text_id=ids.iloc[i])


def _check_scores(df: pd.DataFrame, path: Path, on_bad_score: str) -> pd.DataFrame:
    for col in TARGETS:
        raw = df[col].str.strip()
        values = pd.to_numeric(raw, errors="coerce")
        nan = np.flatnonzero(values.isna().to_numpy())
        if len(nan):
            i = int(nan[0])
            what = "missing score" if raw.iloc[i] == "" else f"not a number: {raw.iloc[i]!r}"
            raise DataError(what, file=path, row=i + 1, column=col, text_id=df[ID_COL].iloc[i])
        arr = values.to_numpy(dtype=np.float64)
        outside = (arr < SCORE_MIN) | (arr > SCORE_MAX)
        off_grid = ~outside & ~np.isclose((arr - SCORE_MIN) / SCORE_STEP, np.round((arr - SCORE_MIN) / SCORE_STEP))
        for mask, what in ((outside, f"outside [{SCORE_MIN}, {SCORE_MAX}]"), (off_grid, f"off the {SCORE_STEP} grid")):
            if mask.any():
                i = int(np.flatnonzero(mask)[0])
                err = DataError(f"score {arr[i]} is {what} ({int(mask.sum())} such rows)", file=path, row=i + 1,
                                column=col, text_id=df[ID_COL].iloc[i])
                if on_bad_score == "error":
                    raise err
                logger.warning("%s (kept because on_bad_score=warn)", err)
        df[col] = arr
    return df


def load_train(path: str | os.PathLike, on_bad_score: Literal["error", "warn"] = "error") -> pd.DataFrame:
    """train.csv → DataFrame[text_id, full_text, *TARGETS] with float scores, validated."""
    path = Path(path)
    df = _read_csv_text(path)
    _require_columns(df, (ID_COL, TEXT_COL, *TARGETS), path)
    _check_ids_and_text(df, path)
    df = _check_scores(df, path, on_bad_score)
    df[ID_COL] = df[ID_COL].str.strip()
    return df[[ID_COL, TEXT_COL, *TARGETS]].reset_index(drop=True)


def load_test(path: str | os.PathLike) -> pd.DataFrame:
    """test.csv → DataFrame[text_id, full_text], validated like training data."""
    path = Path(path)
    df = _read_csv_text(path)
    _require_columns(df, (ID_COL, TEXT_COL), path)
    _check_ids_and_text(df, path)
    df[ID_COL] = df[ID_COL].str.strip()
    return df[[ID_COL, TEXT_COL]].reset_index(drop=True)


def load_sample_submission(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    df = _read_csv_text(path)
    _require_columns(df, (ID_COL, *TARGETS), path)
    df[ID_COL] = df[ID_COL].str.strip()
    return df


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
