"""Run a blend: load members, score every method by nested CV, keep the best, write workspace/blends/<name>/.

    blends/<name>/config.yaml     the BlendConfig used
    blends/<name>/spec.json       chosen method, members in order, per-trait weights or the stacker file, clip,
                                  and each outside member's test-prediction file with its sha256 (member_tests)
    blends/<name>/blender.joblib  the chosen method refitted on all OOF rows
    blends/<name>/oof.parquet     text_id(, fold), six traits: the chosen method's nested-CV (held-out) predictions
    blends/<name>/table.csv, .md  every member and method: in-sample vs nested MCRMSE, per trait, wall time,
                                  and the `selected-by-inner-CV` row: the honest score of choosing a method
    blends/<name>/manifest.json   hashes of the labels, members (member_hashes: each workspace member's content
                                  hash, which prediction checks), folds and config
    blends/<name>/files.json      sha256 of every file above (checked before the blend is loaded)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from fb3stack.blend.config import BlendConfig, MethodConfig
from fb3stack.blend.fitted import MODEL_FILE, SPEC_FILE
from fb3stack.blend.inputs import BlendInput, load_members, meta_features, workspace_label_ids
from fb3stack.blend.methods import Blender, make_method
from fb3stack.blend.nested import OuterSplit, in_sample, nested_cv, outer_splits
from fb3stack.blend.selection import InnerCVSelect, SelectThenBlend
from fb3stack.config import ConfigError, config_dir, resolve_path, to_dict
from fb3stack.constants import FOLD_COL, ID_COL, SCORE_MAX, SCORE_MIN, TARGETS
from fb3stack.data import fingerprint, load_train, resolve_data_dir
from fb3stack.folds import read_folds
from fb3stack.io import atomic_dir, read_json, sha256_json, write_csv, write_json, write_parquet, write_text, write_yaml
from fb3stack.metrics import rmse_per_trait
from fb3stack.report.markdown import markdown_table
from fb3stack.workspace import Workspace, read_manifest, seal_folder, stale_reasons, verify_folder, write_manifest

logger = logging.getLogger(__name__)


@dataclass
class BlendResult:
    table: pd.DataFrame
    chosen: str
    blend_dir: Path | None
    oof: np.ndarray  # chosen method's nested-CV predictions (mean over repeats)
    outer: str  # how the outer folds were made
    outer_folds: np.ndarray | None  # the fold of each row when the outer folds are fixed
    honest: float | None = None  # nested MCRMSE of choosing the method by inner CV (None when not scored)


def resolve_outer(cfg: BlendConfig, members: list[BlendInput], labels: pd.DataFrame,
                  base_dir: Path | None) -> tuple[list[OuterSplit], np.ndarray | None, str]:
    """The outer splits, the fold column they came from (if any), and a description for the table."""
    o, n = cfg.outer, len(labels)
    folds = next((m.folds for m in members if m.folds is not None), None)  # the members' shared fold column
    if o.split == "zoo" and folds is None:
        raise ConfigError("outer.split is 'zoo' but no member has a fold column; use 'kfold' or 'file'")
    if o.split == "file":
        if not o.file:
            raise ConfigError("outer.split is 'file' but outer.file is not set")
        path = resolve_path(o.file, base_dir)
        f = read_folds(path, labels).set_index(ID_COL).loc[labels[ID_COL], FOLD_COL].to_numpy().astype(int)
        return outer_splits(n, f), f, f"folds file {path} ({len(np.unique(f))} folds)"
    if o.split in ("auto", "zoo") and folds is not None:
        return outer_splits(n, folds), folds, f"the members' own {len(np.unique(folds))} folds"
    return (outer_splits(n, None, o.n_folds, o.repeats, o.seed), None,
            f"{o.repeats} x seeded KFold({o.n_folds}), seed {o.seed}")


SELECTED_ROW = "selected-by-inner-CV"


def build_method(spec: MethodConfig, cfg: BlendConfig) -> Blender:
    model = make_method(spec.kind, spec.params)
    s = cfg.selection
    if s.enabled:
        model = SelectThenBlend(model, s.prune_corr, s.forward, s.max_members, s.min_gain)
    return model


def build_methods(cfg: BlendConfig, where: str | None = None) -> list[Blender]:
    """Every method of the config constructed, so an unknown kind or parameter fails naming its key path."""
    from fb3stack.blend.methods import BLEND_METHODS

    where = where or f"{cfg.source or 'blend config'}:"
    known = BLEND_METHODS.names()
    out = []
    for i, spec in enumerate(cfg.methods):
        key = f"{where}methods[{i}].{'params' if spec.kind in known else 'kind'}"
        try:
            out.append(build_method(spec, cfg))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key} (method {spec.name!r}): {err}") from err
    return out


def build_selector(cfg: BlendConfig) -> InnerCVSelect:
    """The whole "score every method, keep the best" procedure as one blender (choice by inner CV)."""
    cands = [(spec.name, est, spec.meta) for spec, est in zip(cfg.methods, build_methods(cfg))]
    return InnerCVSelect(cands, n_folds=cfg.outer.n_folds, seed=cfg.outer.seed)


def _row(name: str, kind: str, ins: np.ndarray, nested: np.ndarray, std: float, seconds: float) -> dict:
    row = {"name": name, "kind": kind, "in_sample": float(ins.mean()), "nested": float(nested.mean()),
           "nested_std": std, "seconds": round(seconds, 3)}
    row.update({f"nested_{t}": float(v) for t, v in zip(TARGETS, nested)})
    row.update({f"in_sample_{t}": float(v) for t, v in zip(TARGETS, ins)})
    return row


def score_methods(cfg: BlendConfig, P: np.ndarray, y: np.ndarray, splits: list[OuterSplit], meta: np.ndarray | None,
                  member_names: list[str]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One table row per member (its OOF as is: nothing fitted, so in-sample = nested) and per method."""
    rows = []
    for name, p in zip(member_names, P):
        per = rmse_per_trait(y, p)
        rows.append(_row(name, "member", per, per, 0.0, 0.0))
    runs = [(spec.name, spec.kind, build_method(spec, cfg), meta if spec.meta else None, 1) for spec in cfg.methods]
    if cfg.honest_selection and len(cfg.methods) > 1:  # a whole inner CV per outer fold: worth the processes
        runs.append((SELECTED_ROW, "selection", build_selector(cfg), meta, -1))
    oofs = {}
    for name, kind, est, m, n_jobs in runs:
        t0 = time.perf_counter()
        res = nested_cv(est, P, y, splits, meta=m, n_jobs=n_jobs)
        _, ins, _ = in_sample(est, P, y, meta=m)
        rows.append(_row(name, kind, ins, res.per_trait, res.mcrmse_std, time.perf_counter() - t0))
        oofs[name] = res.mean_oof
        logger.info("%-24s nested %.5f  in-sample %.5f  (%.2fs)%s", name, res.mcrmse, ins.mean(), rows[-1]["seconds"],
                    f"  choosing among {len(cfg.methods)} methods by inner CV" if kind == "selection" else "")
    return pd.DataFrame(rows), oofs


def honest_note(table: pd.DataFrame, chosen: str) -> str:
    """Which number to believe: the selector's outer score when it was computed, else the chosen method's."""
    names = table.set_index("name")
    nested = float(names.loc[chosen, "nested"])
    if SELECTED_ROW not in names.index:
        return (f"Honest estimate: {nested:.5f}, the nested MCRMSE of **{chosen}**; with one method there is no "
                "choice to account for.") if (table["kind"] != "member").sum() == 1 else (
                f"The chosen method's nested MCRMSE {nested:.5f} is the lowest of several, so slightly optimistic "
                "(honest_selection is off).")
    honest = float(names.loc[SELECTED_ROW, "nested"])
    return (f"**Honest estimate: {honest:.5f}** (`{SELECTED_ROW}`: choosing the method by inner CV, scored by the "
            f"outer CV). The chosen method's own nested MCRMSE {nested:.5f} is the best of "
            f"{int((table['kind'] != 'member').sum()) - 1} nested scores, so it is biased low by the choice.")


def to_markdown(table: pd.DataFrame, chosen: str, outer_desc: str) -> str:
    cols = ["name", "kind", "in_sample", "nested", "nested_std", *[f"nested_{t}" for t in TARGETS], "seconds"]
    head = [c.replace("nested_", "") if c.startswith("nested_") and c != "nested_std" else c for c in cols]
    rows = []
    for _, r in table.iterrows():
        cells = [f"{r[c]:.5f}" if isinstance(r[c], float) and c != "seconds" else f"{r[c]}" for c in cols]
        if r["name"] == chosen:
            cells[0] = f"**{cells[0]}**"
        rows.append(cells)
    return "\n".join([f"Nested CV over {outer_desc}; chosen method: **{chosen}** (lowest nested MCRMSE).",
                      honest_note(table, chosen), "", markdown_table(head, rows)]) + "\n"


def weights_spec(model: Blender, names: list[str]) -> dict | None:
    try:
        w, b = model.weights_, model.intercept_  # type: ignore[attr-defined]
    except AttributeError:
        return None
    return {"weights": {t: {n: float(w[i, k]) for i, n in enumerate(names)} for k, t in enumerate(TARGETS)},
            "intercept": {t: float(b[k]) for k, t in enumerate(TARGETS)}}


def manifest_hashes(cfg: BlendConfig, labels: pd.DataFrame, members: list[BlendInput], outer_desc: str,
                    outer_folds: np.ndarray | None) -> dict[str, str]:
    """What a saved blend was made from; `fb3stack status` recomputes these to tell a fresh blend from a stale one."""
    return {"data_hash": fingerprint(labels), "config_hash": sha256_json(to_dict(cfg)),
            "members_hash": sha256_json({m.name: m.file_hashes for m in members}),
            "folds_hash": sha256_json(outer_desc if outer_folds is None else outer_folds.tolist())}


def _unchanged_blend(folder: Path, hashes: dict[str, str], member_hashes: dict[str, str | None]
                     ) -> BlendResult | None:
    """The saved blend, when it was made from exactly these labels, config, members (content) and folds and its
    files are intact: scoring every method again would give the same table (the methods are seeded)."""
    if not folder.is_dir() or stale_reasons(folder, **hashes) or verify_folder(folder):
        return None
    if (read_manifest(folder) or {}).get("member_hashes") != member_hashes:
        return None
    spec, oof = read_json(folder / SPEC_FILE), pd.read_parquet(folder / "oof.parquet")
    logger.info("blend %s: made from these exact members, config and folds; reused (%s)", spec["name"], folder)
    folds = oof[FOLD_COL].to_numpy() if FOLD_COL in oof else None
    return BlendResult(pd.read_csv(folder / "table.csv"), spec["method"], folder,
                       oof[list(TARGETS)].to_numpy(), spec["outer"], folds, spec.get("honest_mcrmse"))


def warn_cannot_predict(members: list[BlendInput]) -> None:
    """Said at `blend`, not first at the last step of a submission: an OOF file without its model's test
    predictions is scored, but a blend of it cannot predict."""
    alone = [m for m in members if m.external and m.test_path is None]
    for m in alone:
        logger.warning("member '%s' (%s) is an OOF file without test predictions: it is scored, but this blend "
                       "cannot predict (predict and bundle refuse it); give the member as {oof: %s, test: "
                       "<its test predictions>} to submit with it", m.name, m.path, m.path.name)


def run_blend(cfg: BlendConfig, workspace: str | os.PathLike | None, data_dir: str | os.PathLike | None = None,
              write: bool = True, labels: pd.DataFrame | None = None) -> BlendResult:
    """Score every method, keep the best by nested score, write blends/<name>/.

    `labels` (text_id, full_text, six traits) are the training rows as the caller already validated them:
    `fb3stack run` passes its own, read with the run's data settings (file, on_bad_score, limit), so the blend
    never reads train.csv another way. Without them the blend config's data_dir/train_file are read.
    """
    base_dir = config_dir(cfg.source)
    if labels is None:
        labels = load_train(resolve_data_dir(data_dir, cfg.data_dir) / cfg.train_file)
    labels = labels[[c for c in labels.columns if c != FOLD_COL]]
    ws = Workspace.at(workspace) if workspace is not None else None
    labels = workspace_label_ids(ws, labels)
    members = load_members(cfg.members, labels, ws, base_dir)
    warn_cannot_predict(members)
    names = [m.name for m in members]
    P, y = np.stack([m.preds for m in members]), labels[list(TARGETS)].to_numpy(dtype=np.float64)
    splits, outer_folds, outer_desc = resolve_outer(cfg, members, labels, base_dir)
    hashes = manifest_hashes(cfg, labels, members, outer_desc, outer_folds)
    member_hashes = {m.name: m.content_hash for m in members}
    if write and ws is not None and (saved := _unchanged_blend(ws.blend_dir(cfg.name), hashes, member_hashes)):
        return saved
    meta = meta_features(labels, cfg.meta_features) if any(s.meta for s in cfg.methods) else None
    logger.info("blending %d members over %d essays; outer folds: %s", len(members), len(y), outer_desc)
    table, oofs = score_methods(cfg, P, y, splits, meta, names)
    methods = table[~table["kind"].isin(["member", "selection"])]
    chosen = str(methods.sort_values("nested", kind="stable").iloc[0]["name"])
    honest = table.set_index("name")["nested"].get(SELECTED_ROW)
    result = BlendResult(table, chosen, None, oofs[chosen], outer_desc, outer_folds,
                         float(honest) if honest is not None else None)
    if not write or ws is None:
        return result
    spec_cfg = next(s for s in cfg.methods if s.name == chosen)
    final = build_method(spec_cfg, cfg).fit(P, y, meta=meta if spec_cfg.meta else None)
    external = [m.name for m in members if m.external]
    spec = {
        "name": cfg.name, "method": chosen, "kind": spec_cfg.kind, "params": spec_cfg.params,
        "selection": to_dict(cfg.selection) if cfg.selection.enabled else None,
        "members": names, "external_members": external, "member_files": [str(m.path) for m in members],
        # what predict blends for an outside member, and the file's sha256 it refuses any other content of
        "member_tests": {m.name: {"file": str(m.test_path), "sha256": m.test_sha256}
                         for m in members if m.test_path is not None},
        "meta_features": cfg.meta_features if spec_cfg.meta else [], "uses_meta": bool(spec_cfg.meta),
        "clip": [SCORE_MIN, SCORE_MAX], "model_file": MODEL_FILE, "outer": outer_desc,
        "nested_mcrmse": float(methods.set_index("name").loc[chosen, "nested"]),
        "honest_mcrmse": result.honest, "honest_note": honest_note(table, chosen),
        **(weights_spec(final, names) or {}),
    }
    oof = pd.DataFrame(result.oof, columns=list(TARGETS))
    if outer_folds is not None:
        oof.insert(0, FOLD_COL, outer_folds)
    oof.insert(0, ID_COL, labels[ID_COL].to_numpy())
    target = ws.blend_dir(cfg.name)
    with atomic_dir(target) as tmp:
        write_yaml(tmp / "config.yaml", to_dict(cfg))
        joblib.dump(final, tmp / MODEL_FILE)
        write_json(tmp / SPEC_FILE, spec)
        write_parquet(tmp / "oof.parquet", oof)
        write_csv(tmp / "table.csv", table)
        write_text(tmp / "table.md", to_markdown(table, chosen, outer_desc))
        write_manifest(tmp, **hashes,
                       # what prediction checks: the blend is used only with exactly these member models
                       member_hashes=member_hashes)
        seal_folder(tmp)
    result.blend_dir = target
    return result
