"""Everything the report shows, read from a workspace (never written to) and the training labels.

What cannot be read (no labels, no blend yet, no transformer member) becomes a note in the report rather than an
error: a report of a half-finished workspace is still useful.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fb3stack.constants import ID_COL, TARGETS
from fb3stack.data import DataError, load_train, resolve_data_dir
from fb3stack.io import read_json
from fb3stack.workspace import Workspace, find_blend

logger = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
# a table row that scores the whole "pick a method by inner CV" procedure on held-out rows: the honest figure
HONEST_ROW = re.compile(r"select.*inner", re.IGNORECASE)


@dataclass
class MemberInfo:
    name: str
    kind: str | None
    mcrmse: float
    rmse: dict[str, float]
    fold_mcrmse: list[float]
    seconds: float
    seeds: dict[int, float] = field(default_factory=dict)  # a seed average: each seed's OOF MCRMSE

    @property
    def seeds_text(self) -> str:
        """'42: 0.5012, 43: 0.5020' for a seed average, '' for any other member."""
        return ", ".join(f"{seed}: {score:.4f}" for seed, score in self.seeds.items())


@dataclass
class BlendInfo:
    name: str
    blend_dir: Path
    spec: dict
    table: pd.DataFrame | None  # every member and method: in_sample, nested, nested_std, nested_<trait>
    oof: pd.DataFrame | None  # chosen method's held-out predictions, text_id + traits
    chosen: str  # the method the blend saved (spec.json 'method')
    honest_name: str  # the row whose nested score is the honest estimate
    honest_score: float | None
    explanation: tuple[str, pd.DataFrame] | None  # (title, rows x traits) of weights / coefficients / importances


@dataclass
class ReportData:
    root: Path
    members: list[MemberInfo]
    oofs: dict[str, pd.DataFrame]  # member -> text_id-indexed traits
    labels: pd.DataFrame | None  # text_id-indexed full_text + traits, the workspace's essays only
    blend: BlendInfo | None
    histories: dict[str, list[tuple[int, pd.DataFrame]]]  # member -> [(fold, history.csv)]
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def best_member(self) -> MemberInfo | None:
        return min(self.members, key=lambda m: m.mcrmse) if self.members else None


def read_members(root: Path) -> tuple[list[MemberInfo], dict[str, pd.DataFrame]]:
    ws = Workspace(root)
    members, oofs = [], {}
    for name in ws.list_models():
        path = ws.model_dir(name) / "metrics.json"
        if not path.is_file():
            continue
        m = read_json(path)
        folds = m.get("folds", [])
        members.append(MemberInfo(name, m.get("kind"), float(m["mcrmse"]), {t: float(m["rmse"][t]) for t in TARGETS},
                                  [float(f["mcrmse"]) for f in folds if "mcrmse" in f],
                                  float(sum(f.get("seconds", 0.0) for f in folds)),
                                  {int(x["seed"]): float(x["mcrmse"]) for x in m.get("seeds", [])}))
        oofs[name] = read_oof(ws.model_dir(name) / "oof.parquet")
    return members, oofs


def read_oof(path: Path) -> pd.DataFrame:
    """An oof.parquet's trait predictions indexed by text id (as str, so labels and OOFs always align)."""
    oof = pd.read_parquet(path)
    return oof.assign(**{ID_COL: oof[ID_COL].astype(str)}).set_index(ID_COL)[list(TARGETS)]


def read_histories(root: Path) -> dict[str, list[tuple[int, pd.DataFrame]]]:
    out: dict[str, list[tuple[int, pd.DataFrame]]] = {}
    # a seed average's seeds train as members of their own: models/<name>/seed<s>/fold<k>/, shown as <name>/seed<s>
    found = [*root.glob("models/[!.]*/fold[0-9]*/history.csv"), *root.glob("models/[!.]*/seed*/fold[0-9]*/history.csv")]
    for f in sorted(found, key=lambda f: (_history_member(root, f), int(f.parent.name[4:]))):
        try:
            hist = pd.read_csv(f)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            logger.warning("%s: unreadable training history (%s), left out of the report", f, err)
            continue
        if "step" in hist.columns and len(hist):
            out.setdefault(_history_member(root, f), []).append((int(f.parent.name[4:]), hist))
    return out


def _history_member(root: Path, history: Path) -> str:
    return history.parent.parent.relative_to(root / "models").as_posix()


def read_labels(root: Path, data_dir: str | os.PathLike | None) -> tuple[pd.DataFrame | None, str | None]:
    """The training labels of the workspace's essays, or (None, why not)."""
    run_cfg = root / "run_config.yaml"
    data_cfg: dict = {}
    if run_cfg.is_file():
        import yaml

        data_cfg = (yaml.safe_load(run_cfg.read_text(encoding="utf-8")) or {}).get("data") or {}
    try:
        folder = resolve_data_dir(data_dir, data_cfg.get("data_dir"))
        labels = load_train(folder / data_cfg.get("train_file", "train.csv"), on_bad_score="warn")
    except DataError as err:
        return None, f"labels not available ({err}); the residual and distribution figures need train.csv"
    labels[ID_COL] = labels[ID_COL].astype(str)
    folds = root / "folds.csv"
    if folds.is_file():  # a data.limit workspace covers a subset of train.csv
        ids = set(pd.read_csv(folds, dtype={ID_COL: str})[ID_COL].str.strip())
        labels = labels[labels[ID_COL].isin(ids)]
    return labels.set_index(ID_COL), None


def honest_choice(table: pd.DataFrame | None, spec: dict) -> tuple[str, float | None]:
    """The row whose nested score honestly estimates the saved blend.

    A row scoring the selection procedure itself (e.g. `selected-by-inner-cv`) is honest about picking the best
    of many methods; without one, the chosen method's nested score is the best estimate there is.
    """
    chosen = str(spec.get("method", ""))
    if table is not None and "name" in table.columns:
        rows = table[table["name"].astype(str).str.contains(HONEST_ROW)]
        if len(rows):
            return str(rows.iloc[0]["name"]), float(rows.iloc[0]["nested"])
        mine = table[table["name"].astype(str) == chosen]
        if len(mine):
            return chosen, float(mine.iloc[0]["nested"])
    score = spec.get("nested_mcrmse")
    return chosen, float(score) if score is not None else None


def methods_shown(table: pd.DataFrame) -> pd.DataFrame:
    """The blend table as report.md and report.html show it: best nested score first, traits by name, and no
    nested_std column when it is all zeros (one repeat of fixed folds has no spread)."""
    cols = [c for c in ["name", "kind", "in_sample", "nested", "nested_std", *[f"nested_{t}" for t in TARGETS],
                        "seconds"] if c in table.columns]
    if "nested_std" in cols and not (table["nested_std"].fillna(0) > 0).any():
        cols.remove("nested_std")
    shown = table[cols].rename(columns={f"nested_{t}": t for t in TARGETS})
    from fb3stack.blend.uncertainty import gain_cells

    for label, cells in gain_cells(table).items():
        shown[label] = cells
    return shown.sort_values("nested", kind="stable") if "nested" in shown else shown


def explain_blend(blend_dir: Path, spec: dict) -> tuple[str, pd.DataFrame] | None:
    """What the fitted blend exposes about where its weight goes, as (title, rows x traits)."""
    members = list(spec.get("members", []))
    method = spec.get("method", "?")
    if "weights" in spec:  # weight methods: spec.json holds the refitted per-trait weights
        df = pd.DataFrame(spec["weights"]).reindex(columns=list(TARGETS))
        return f"weights of '{method}' per trait (columns) and member (rows)", df
    try:
        from fb3stack.blend.fitted import load_fitted_blend

        model = load_fitted_blend(blend_dir).model
    except Exception as err:  # noqa: BLE001 - an unloadable model only costs this one figure
        logger.warning("%s: cannot load the fitted blend for its importances (%s)", blend_dir, err)
        return None
    if hasattr(model, "selected_") and hasattr(model, "base_"):  # member selection wraps the real method
        members = [members[i] for i in model.selected_]
        model = model.base_
    fitted = getattr(model, "models_", None)
    if not fitted:
        return None
    if all(hasattr(m, "coef_") for m in fitted):  # ridge stacker
        cross = bool(getattr(model, "cross_trait", False))
        index = [f"{n} · {t}" for n in members for t in TARGETS] if cross else members
        df = pd.DataFrame(np.stack([np.ravel(m.coef_) for m in fitted], axis=1), index=index, columns=list(TARGETS))
        what = "deviations from the member mean" if getattr(model, "prior", "") == "mean" else "member predictions"
        return f"ridge coefficients of '{method}' on {what}", df
    if all(hasattr(m, "feature_importances_") for m in fitted):  # LightGBM stacker
        imp = np.stack([np.asarray(m.feature_importances_, dtype=float) for m in fitted], axis=1)
        if getattr(model, "features", "summary") == "all":
            index = [f"{n} · {t}" for n in members for t in TARGETS]
        else:
            index = [f"member mean · {t}" for t in TARGETS] + [f"member spread · {t}" for t in TARGETS]
        index += list(spec.get("meta_features", [])) if spec.get("uses_meta") else []
        if len(index) != len(imp):
            index = [f"feature {i}" for i in range(len(imp))]
        imp = imp / np.maximum(imp.sum(axis=0, keepdims=True), 1e-12)
        return f"LightGBM stacker '{method}': share of splits per feature", pd.DataFrame(imp, index, list(TARGETS))
    return None


def read_blend(root: Path, blend_dir: Path | None) -> BlendInfo | None:
    if blend_dir is None or not (blend_dir / "spec.json").is_file():
        return None
    spec = read_json(blend_dir / "spec.json")
    table = pd.read_csv(blend_dir / "table.csv") if (blend_dir / "table.csv").is_file() else None
    oof = read_oof(blend_dir / "oof.parquet") if (blend_dir / "oof.parquet").is_file() else None
    honest_name, honest_score = honest_choice(table, spec)
    return BlendInfo(blend_dir.name, blend_dir, spec, table, oof, str(spec.get("method", "")), honest_name,
                     honest_score, explain_blend(blend_dir, spec))


def gather(root: str | os.PathLike, data_dir: str | os.PathLike | None = None, blend_dir: Path | None = None,
           blend_name: str | None = None, timings: dict[str, float] | None = None, with_labels: bool = True
           ) -> ReportData:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such workspace")
    members, oofs = read_members(root)
    labels, why = read_labels(root, data_dir) if with_labels else (None, None)
    blend = read_blend(root, blend_dir if blend_dir is not None else find_blend(root, blend_name, newest=True))
    if timings is None:
        timings = read_json(root / TIMINGS_FILE) if (root / TIMINGS_FILE).is_file() else {}
    data = ReportData(root, members, oofs, labels, blend, read_histories(root), timings)
    if why:
        data.notes.append(why)
    if not members:
        data.notes.append("no finished member (models/<name>/metrics.json) yet: run `fb3stack train`")
    if blend is None:
        data.notes.append("no fitted blend (blends/<name>/spec.json) yet: run `fb3stack blend`")
    return data


def headline(data: ReportData) -> str:
    """One line: the honest blend score, the best member and the wall time."""
    parts = []
    b = data.blend
    if b is not None and b.honest_score is not None:
        how = "nested CV" if b.honest_name == b.chosen else f"nested CV, row '{b.honest_name}'"
        parts.append(f"blend '{b.name}' ({b.chosen}): honest MCRMSE {b.honest_score:.4f} ({how})")
    best = data.best_member
    if best is not None:
        parts.append(f"best member {best.name} {best.mcrmse:.4f}")
    if "total" in data.timings:
        parts.append(f"wall time {format_seconds(data.timings['total'])}")
    return " | ".join(parts) if parts else "nothing trained yet"


def format_seconds(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"
