"""Loading the members to blend and aligning them on text_id, refusing anything that would mislead.

Each blend input (`BlendInput`) is one first-layer member's OOF: a workspace model folder
(models/<name>/oof.parquet: text_id, fold, six traits) or an external OOF file (CSV or parquet with text_id
and the six traits, e.g. the public FB3 OOFs), optionally paired with the same model's test predictions
(`MemberFiles`: `{oof: a_oof.csv, test: a_test.csv}`), which is what lets a blend of it predict. Inputs are
aligned to the label order of train.csv; different id sets, NaN, duplicate ids and members trained on different
folds are refused with a DataError naming the file, the row or id, and the column. A test-prediction file is
checked here as far as it can be without the test CSV (columns, duplicates, NaN, values on the score scale:
`read_test_predictions`); its ids are checked against the test CSV, and its hash against the blend's record,
when `fb3stack predict` uses it (fb3stack/submit/predict.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fb3stack.blend.config import MemberFiles
from fb3stack.config import glob_paths, resolve_path
from fb3stack.constants import FOLD_COL, ID_COL, PREDICTION_RANGE, TARGETS, TEXT_COL
from fb3stack.data import DataError
from fb3stack.io import sha256_file, sha256_file_cached
from fb3stack.workspace import Workspace, read_manifest

logger = logging.getLogger(__name__)

OOF_FILE = "oof.parquet"


@dataclass
class BlendInput:
    """One first-layer member's OOF predictions, aligned to the label rows: what the blend reads of a member (the
    member itself, `fb3stack.base.member.Member`, is the model that wrote them)."""

    name: str
    path: Path  # the OOF file read
    preds: np.ndarray  # (n, 6) in label order
    folds: np.ndarray | None  # (n,) fold of each row when the file has a fold column
    external: bool  # True for an OOF file outside the workspace: it predicts new essays only with test_path
    sha256: str
    content_hash: str | None = None  # a workspace member's content hash (config + fold models) from its manifest
    test_path: Path | None = None  # an external member's test predictions (text_id + six traits), if given
    test_sha256: str | None = None  # recorded in the blend's spec; predict and bundle refuse a changed file

    @property
    def file_hashes(self) -> str | list[str]:
        """What of the member's files a blend depends on: the OOF, and the test predictions it would submit."""
        return self.sha256 if self.test_sha256 is None else [self.sha256, self.test_sha256]


def read_oof(path: str | Path, what: str = "OOF file") -> pd.DataFrame:
    """A predictions file (CSV, or parquet by its suffix) with text_id and the six traits."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found", file=path)
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise DataError(f"cannot read {what}: {err}", file=path) from err
    missing = [c for c in (ID_COL, *TARGETS) if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; found {list(df.columns)}", file=path, column=missing[0])
    return df


def check_prediction_rows(df: pd.DataFrame, path: Path, value_range: tuple[float, float] | None = None
                          ) -> pd.Series:
    """Refuse duplicate ids and NaN/non-numeric predictions (and, with `value_range`, values outside it), naming
    the first bad row (1-based, header not counted); returns the ids, stripped."""
    ids = df[ID_COL].astype(str).str.strip()
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[1])
        raise DataError(f"duplicate text_id '{ids.iloc[i]}' ({int(dup.sum())} rows share an id)", file=path,
                        row=i + 1, column=ID_COL, text_id=ids.iloc[i])
    for col in TARGETS:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"NaN or non-numeric prediction ({len(bad)} such rows)", file=path, row=i + 1,
                            column=col, text_id=ids.iloc[i])
        if value_range is not None:
            lo, hi = value_range
            bad = np.flatnonzero((values < lo) | (values > hi))
            if len(bad):
                i = int(bad[0])
                raise DataError(f"prediction {values[i]:g} is outside [{lo:g}, {hi:g}] ({len(bad)} such rows): "
                                "not on the traits' 1-5 scale (another scale, or columns mixed up?)", file=path,
                                row=i + 1, column=col, text_id=ids.iloc[i])
    return ids


def read_test_predictions(path: str | Path) -> pd.DataFrame:
    """An outside model's test predictions, checked as far as they can be without the test CSV: the columns,
    duplicate ids, NaN and values off the score scale (`PREDICTION_RANGE`). Ids are stripped strings."""
    path = Path(path)
    df = read_oof(path, "test-prediction file")
    ids = check_prediction_rows(df, path, PREDICTION_RANGE)
    return df.assign(**{ID_COL: ids})


def check_oof(df: pd.DataFrame, path: Path, label_ids: pd.Series) -> pd.DataFrame:
    """Refuse duplicates, NaN/non-numeric predictions and id sets that differ from the labels'."""
    ids = check_prediction_rows(df, path)
    if FOLD_COL in df.columns:
        folds = pd.to_numeric(df[FOLD_COL], errors="coerce")
        bad = np.flatnonzero((folds.isna() | (folds < 0) | (folds != folds.round())).to_numpy())
        if len(bad):
            i = int(bad[0])
            raise DataError(f"fold must be a non-negative integer, got {df[FOLD_COL].iloc[i]!r}", file=path,
                            row=i + 1, column=FOLD_COL, text_id=ids.iloc[i])
    have, want = set(ids), set(label_ids)
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        parts = []
        if missing:
            parts.append(f"{len(missing)} training id(s) missing, e.g. {missing[:3]}")
        if extra:
            parts.append(f"{len(extra)} id(s) not in the training labels, e.g. {extra[:3]}")
        raise DataError("id set differs from train.csv: " + "; ".join(parts), file=path, column=ID_COL,
                        text_id=(missing or extra)[0])
    return df.assign(**{ID_COL: ids})


def external_name(path: Path) -> str:
    """An OOF file's member name: its stem without a trailing `_oof_df` / `_oof` (the public FB3 OOFs' names)."""
    return path.stem.removesuffix("_oof_df").removesuffix("_oof")


def load_input(entry: str | MemberFiles, label_ids: pd.Series, ws: Workspace | None, base_dir: Path | None = None
               ) -> BlendInput:
    """`entry` (of the blend config's `members:`) is a workspace member name (models/<entry>/oof.parquet), a path
    to an OOF file, or an outside model's OOF + test-prediction files (`MemberFiles`)."""
    if isinstance(entry, MemberFiles):
        return _load_files(entry, label_ids, base_dir)
    model_dir = ws.model_dir(entry) if ws is not None else None
    content = None
    if model_dir is not None and (model_dir / OOF_FILE).is_file():
        path, name, external = model_dir / OOF_FILE, entry, False
        content = _checked_workspace_oof(model_dir)
    else:
        path = resolve_path(entry, base_dir)
        if not path.is_file():
            if model_dir is not None and not path.suffix:  # a plain name: a workspace member not trained yet
                raise DataError(f"member '{entry}' has no OOF in the workspace; train it first (fb3stack train)",
                                file=model_dir / OOF_FILE)
            where = f" nor a model in {ws.root / 'models'}" if ws is not None else ""
            raise DataError(f"member '{entry}' is neither an OOF file{where}", file=path)
        name, external = external_name(path), True
    preds, folds = _aligned_oof(path, label_ids)
    return BlendInput(name, path, preds, folds, external, sha256_file(path), content)


def _aligned_oof(path: Path, label_ids: pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
    df = check_oof(read_oof(path), path, label_ids).set_index(ID_COL).loc[label_ids.to_numpy()]
    preds = df[list(TARGETS)].to_numpy(dtype=np.float64)
    folds = df[FOLD_COL].to_numpy().astype(int) if FOLD_COL in df.columns else None
    return preds, folds


def _load_files(entry: MemberFiles, label_ids: pd.Series, base_dir: Path | None) -> BlendInput:
    """An outside model: its OOF, and its test predictions checked now (a bad file is found at `blend`, not at
    the last step of a submission notebook) and hashed for the blend's record."""
    path = resolve_path(entry.oof, base_dir)
    preds, folds = _aligned_oof(path, label_ids)
    test_path = test_sha = None
    if entry.test is not None:
        test_path = resolve_path(entry.test, base_dir).resolve()
        read_test_predictions(test_path)
        test_sha = sha256_file(test_path)
    return BlendInput(entry.name or external_name(path), path, preds, folds, True, sha256_file(path),
                      test_path=test_path, test_sha256=test_sha)


def _checked_workspace_oof(model_dir: Path) -> str | None:
    """A workspace member's content hash, once its oof.parquet is proven to be the one its training wrote.

    A folder with no manifest at all holds an OOF file placed by hand: it can be blended and scored, but has
    no content hash, so prediction refuses a blend of it."""
    manifest = read_manifest(model_dir)
    path = model_dir / OOF_FILE
    if manifest is None:
        logger.info("%s has no manifest: blended as a plain OOF file", path)
        return None
    if not manifest.get("content_hash") or not manifest.get("oof_sha256"):
        raise DataError("the member is not complete (its manifest has no content hash); finish training it "
                        "(fb3stack train / run)", file=path)
    if sha256_file_cached(path) != manifest["oof_sha256"]:
        raise DataError("does not match the sha256 recorded when it was written (truncated or altered); "
                        "`fb3stack train` or `run` rebuilds it from the folds", file=path)
    return str(manifest["content_hash"])


def expand_entries(entries: list[str | MemberFiles], base_dir: Path | None = None) -> list[str | MemberFiles]:
    """Expand glob patterns (`fb3stack.config.glob_paths`: the YAML's folder first); names and file pairs pass
    through."""
    out: list[str | MemberFiles] = []
    for entry in entries:
        if isinstance(entry, str) and any(ch in entry for ch in "*?["):
            hits = glob_paths(entry, base_dir)
            if not hits:
                raise DataError(f"member pattern '{entry}' matches no file", file=resolve_path(entry, base_dir))
            out += [str(h) for h in hits]
        else:
            out.append(entry)
    return out


def load_members(entries: list[str | MemberFiles], labels: pd.DataFrame, ws: Workspace | None = None,
                 base_dir: Path | None = None) -> list[BlendInput]:
    """Load and align every member; refuse members whose fold columns disagree."""
    label_ids = labels[ID_COL].astype(str)
    members = [load_input(e, label_ids, ws, base_dir) for e in expand_entries(entries, base_dir)]
    if not members:
        raise DataError("no members to blend")
    names = [m.name for m in members]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DataError(f"member name(s) {dups} appear more than once; rename the files or list each once")
    check_same_folds(members, label_ids)
    if ws is not None:
        check_workspace_folds(members, ws, label_ids)
    return members


def check_same_folds(members: list[BlendInput], label_ids: pd.Series) -> None:
    """Members trained on different folds have OOFs from different models per row: blending them is unfair."""
    with_folds = [m for m in members if m.folds is not None]
    for m in with_folds[1:]:
        _refuse_other_folds(m, with_folds[0].folds, f"different folds than '{with_folds[0].name}' "
                            f"({with_folds[0].path})", label_ids)


def check_workspace_folds(members: list[BlendInput], ws: Workspace, label_ids: pd.Series) -> None:
    """Workspace members must carry the workspace's current folds.csv; otherwise they are from an older split."""
    if not ws.folds_path.is_file():
        return
    ref = pd.read_csv(ws.folds_path, dtype={ID_COL: str}).set_index(ID_COL)[FOLD_COL]
    if not set(label_ids) <= set(ref.index):
        return  # folds.csv covers other essays than the labels; the id check already speaks for the members
    expected = ref.loc[label_ids.to_numpy()].to_numpy().astype(int)
    for m in members:
        if m.folds is not None and not m.external:
            _refuse_other_folds(m, expected, f"other folds than the workspace's {ws.folds_path}", label_ids,
                                "; retrain it on the current folds")


def _refuse_other_folds(m: BlendInput, expected: np.ndarray, than: str, label_ids: pd.Series, hint: str = ""
                        ) -> None:
    diff = np.flatnonzero(m.folds != expected)
    if len(diff):
        i = int(diff[0])
        raise DataError(f"trained on {than}: {len(diff)} rows differ, e.g. fold {m.folds[i]} vs {expected[i]}{hint}",
                        file=m.path, column=FOLD_COL, text_id=label_ids.iloc[i])


def workspace_label_ids(ws: Workspace | None, labels: pd.DataFrame) -> pd.DataFrame:
    """Restrict the labels to the workspace's essays when its folds.csv covers a subset (a `data.limit` zoo)."""
    if ws is None or not ws.folds_path.is_file():
        return labels
    ids = set(pd.read_csv(ws.folds_path, dtype={ID_COL: str})[ID_COL].str.strip())
    keep = labels[ID_COL].isin(ids)
    if keep.all() or not keep.any():
        return labels
    logger.info("workspace folds cover %d of %d training essays: blending on those", int(keep.sum()), len(labels))
    return labels[keep].reset_index(drop=True)


def meta_features(labels: pd.DataFrame, names: list[str]) -> np.ndarray | None:
    """Per-essay features for stackers; computed from the essay text so they exist for new essays too."""
    if not names:
        return None
    if TEXT_COL not in labels.columns:
        raise DataError(f"meta-features {names} need the '{TEXT_COL}' column")
    text = labels[TEXT_COL].astype(str)
    known = {
        "n_words": lambda: text.str.split().str.len(),
        "n_chars": lambda: text.str.len(),
        "n_paragraphs": lambda: text.str.count("\n\n") + 1,
        "n_sentences": lambda: text.str.count(r"[.!?]+") + 1,
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown meta-feature(s) {unknown}; choose from {sorted(known)}")
    return np.stack([np.log1p(known[n]().to_numpy(dtype=np.float64)) for n in names], axis=1)
