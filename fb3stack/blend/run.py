"""Run a blend: load members, score every method by nested CV, keep the best, write workspace/blends/<name>/.

    blends/<name>/config.yaml     the BlendConfig used
    blends/<name>/spec.json       chosen method, members in order, per-trait weights or the stacker file, clip,
                                  and each outside member's test-prediction file with its sha256 (member_tests)
    blends/<name>/blender.joblib  the chosen method refitted on all OOF rows
    blends/<name>/oof.parquet     text_id(, fold), six traits: the chosen method's nested-CV (held-out) predictions
    blends/<name>/table.csv, .md  every member and method: in-sample vs nested MCRMSE, per trait, wall time,
                                  the `best-member` row (choosing one member, unblended, inside each outer fold),
                                  the `selected-by-inner-CV` row: the honest score of choosing a method, each
                                  row's difference to the plain mean and to the best member with a paired
                                  bootstrap interval, and each member's leave-one-out score (uncertainty.py)
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

from fb3stack.blend.config import BlendConfig, MethodConfig, UncertaintyConfig
from fb3stack.blend.fitted import MODEL_FILE, SPEC_FILE
from fb3stack.blend.inputs import BlendInput, load_members, meta_features, workspace_label_ids
from fb3stack.blend.methods import BestMember, Blender, make_method
from fb3stack.blend.nested import OuterSplit, in_sample, nested_cv, outer_splits
from fb3stack.blend.selection import InnerCVSelect, SelectThenBlend
from fb3stack.blend.uncertainty import bootstrap_scores, gain_cells, leave_one_out
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
    member: str | None = None  # the member used alone when no blend method beats the best member (best-member)


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
BEST_MEMBER_KIND = "best_member"
BEST_MEMBER_ROW = "best-member"


def candidate_specs(cfg: BlendConfig, n_members: int) -> list[MethodConfig]:
    """`best-member` (the best single member, unblended) when there are members to choose from and the config does
    not list that kind itself, then the config's methods: not blending is always a candidate, and the first, so
    a method that only ties with it (e.g. hill climbing that never leaves the best member) is not chosen over it."""
    specs = list(cfg.methods)
    if n_members > 1 and not any(s.kind == BEST_MEMBER_KIND for s in specs):
        if any(s.name == BEST_MEMBER_ROW for s in specs):
            raise ConfigError(f"{cfg.source or 'blend config'}: method name {BEST_MEMBER_ROW!r} is the table's row "
                              f"for the best single member; rename that method (or give it kind {BEST_MEMBER_KIND})")
        specs.insert(0, MethodConfig(BEST_MEMBER_ROW, BEST_MEMBER_KIND))
    return specs


def build_method(spec: MethodConfig, cfg: BlendConfig) -> Blender:
    model = make_method(spec.kind, spec.params)
    s = cfg.selection
    if s.enabled and spec.kind != BEST_MEMBER_KIND:  # choosing one member is itself a selection
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


def build_selector(cfg: BlendConfig, n_members: int = 2) -> InnerCVSelect:
    """The whole "score every method and the best single member, keep the best" procedure as one blender (choice
    by inner CV)."""
    built = dict(zip([s.name for s in cfg.methods], build_methods(cfg)))
    cands = [(spec.name, built[spec.name] if spec.name in built else build_method(spec, cfg), spec.meta)
             for spec in candidate_specs(cfg, n_members)]
    return InnerCVSelect(cands, n_folds=cfg.outer.n_folds, seed=cfg.outer.seed)


def _row(name: str, kind: str, ins: np.ndarray, nested: np.ndarray, std: float, seconds: float) -> dict:
    row = {"name": name, "kind": kind, "in_sample": float(ins.mean()), "nested": float(nested.mean()),
           "nested_std": std, "seconds": round(seconds, 3)}
    row.update({f"nested_{t}": float(v) for t, v in zip(TARGETS, nested)})
    row.update({f"in_sample_{t}": float(v) for t, v in zip(TARGETS, ins)})
    return row


def score_methods(cfg: BlendConfig, P: np.ndarray, y: np.ndarray, splits: list[OuterSplit], meta: np.ndarray | None,
                  member_names: list[str]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One table row per member (its OOF as is: nothing fitted, so in-sample = nested) and per candidate (the
    methods and `best-member`), and each row's held-out predictions, (repeats, n, 6)."""
    rows, held = [], {}
    repeats = len({s.repeat for s in splits})
    for name, p in zip(member_names, P):
        per = rmse_per_trait(y, p)
        rows.append(_row(name, "member", per, per, 0.0, 0.0))
        held[name] = np.broadcast_to(p, (repeats, *p.shape))
    specs = candidate_specs(cfg, len(P))
    runs = [(spec.name, spec.kind, build_method(spec, cfg), meta if spec.meta else None, 1) for spec in specs]
    if cfg.honest_selection and len(specs) > 1:  # a whole inner CV per outer fold: worth the processes
        runs.append((SELECTED_ROW, "selection", build_selector(cfg, len(P)), meta, -1))
    for name, kind, est, m, n_jobs in runs:
        t0 = time.perf_counter()
        res = nested_cv(est, P, y, splits, meta=m, n_jobs=n_jobs)
        _, ins, _ = in_sample(est, P, y, meta=m)
        rows.append(_row(name, kind, ins, res.per_trait, res.mcrmse_std, time.perf_counter() - t0))
        held[name] = res.oof
        logger.info("%-24s nested %.5f  in-sample %.5f  (%.2fs)%s", name, res.mcrmse, ins.mean(), rows[-1]["seconds"],
                    f"  choosing among {len(specs)} candidates by inner CV" if kind == "selection" else "")
    return pd.DataFrame(rows), held


def add_uncertainty(table: pd.DataFrame, held: dict[str, np.ndarray], P: np.ndarray, y: np.ndarray,
                    u: UncertaintyConfig, seed: int) -> tuple[pd.DataFrame, dict]:
    """Each row's nested score minus the plain mean's (`vs_mean`) and the best single member's (`vs_best`), with
    the paired bootstrap interval's ends (`_lo`, `_hi`), and what the table's header says about them."""
    if not u.bootstrap:
        return table, {}
    t0 = time.perf_counter()
    members = table[table["kind"] == "member"]
    best = str(members.sort_values("nested", kind="stable").iloc[0]["name"])
    names = list(table["name"])
    repeats = held[names[0]].shape[0]
    # the plain mean fits nothing: the same held-out predictions every repeat, clipped as MeanBlend clips
    plain_mean = np.broadcast_to(np.clip(P.mean(axis=0), SCORE_MIN, SCORE_MAX), (repeats, *y.shape))
    boot = bootstrap_scores(y, np.stack([held[n] for n in names] + [plain_mean]), u.bootstrap, seed, u.level)
    table = table.copy()
    for col, ref in (("vs_mean", len(names)), ("vs_best", names.index(best))):
        d = boot.versus(ref)
        table[col], table[f"{col}_lo"], table[f"{col}_hi"] = d.diff[:-1], d.lo[:-1], d.hi[:-1]
    info = {"n_boot": u.bootstrap, "seed": seed, "level": u.level, "n_essays": len(y), "best_member": best,
            "best_member_mcrmse": float(boot.full[names.index(best)]), "mean_mcrmse": float(boot.full[-1]),
            "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("paired bootstrap over %d essays, %d resamples: %.2fs", len(y), u.bootstrap, info["seconds"])
    return table, info


def add_leave_one_out(table: pd.DataFrame, est: Blender, P: np.ndarray, y: np.ndarray, splits: list[OuterSplit],
                      meta: np.ndarray | None, chosen: str) -> pd.DataFrame:
    """On each member's row: the chosen method's nested MCRMSE without that member (`loo_nested`) and how much
    worse that is than with it (`loo_delta` > 0: the member helps)."""
    t0 = time.perf_counter()
    rows = table.set_index("name")
    cost = float(rows.loc[chosen, "seconds"]) * len(P)
    loo = leave_one_out(est, P, y, splits, meta=meta, n_jobs=-1 if cost > 10 else 1)
    table = table.copy()
    member = (table["kind"] == "member").to_numpy()
    table["loo_nested"] = np.nan
    table.loc[member, "loo_nested"] = loo
    table["loo_delta"] = table["loo_nested"] - float(rows.loc[chosen, "nested"])
    logger.info("leave-one-member-out of %s: %d nested CVs, %.2fs", chosen, len(P), time.perf_counter() - t0)
    return table


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


def member_note(table: pd.DataFrame, chosen: str, member: str | None) -> str:
    """Whether blending beats using the best single member alone (the `best-member` row), in one sentence."""
    names = table.set_index("name")
    rows = table[table["kind"] == BEST_MEMBER_KIND]
    if rows.empty:
        return ""
    row, alone = str(rows.iloc[0]["name"]), float(rows.iloc[0]["nested"])
    if member is not None:
        others = table[~table["kind"].isin(["member", "selection", BEST_MEMBER_KIND])]
        best = "" if others.empty else (f"; the best blend method, {others.sort_values('nested').iloc[0]['name']}, "
                                        f"scores {others['nested'].min():.5f}")
        return (f"**No blend method beats the best single member**: `{row}` (the best member chosen "
                f"inside each outer fold) has the lowest nested MCRMSE, {alone:.5f}{best}. The saved blend is member "
                f"**{member}** alone: predicting needs only that member.")
    return (f"The chosen method beats the best single member (`{row}`, nested {alone:.5f}) by "
            f"{alone - float(names.loc[chosen, 'nested']):.5f}.")


def uncertainty_note(info: dict) -> str:
    if not info:
        return ""
    return (f"`vs mean` / `vs best member`: the row's nested MCRMSE minus that of the plain mean "
            f"({info['mean_mcrmse']:.5f}) / of the best single member ({info['best_member']}, "
            f"{info['best_member_mcrmse']:.5f}); negative is better. In brackets its {100 * info['level']:g}% "
            f"interval from a paired bootstrap over the {info['n_essays']} essays of the held-out predictions "
            f"({info['n_boot']} resamples, seed {info['seed']}): an interval that contains 0 is a difference the "
            "essays drawn could give by chance. `without member (loo)`: the chosen method's nested MCRMSE refitted "
            "without that member (in brackets, minus the chosen's own: > 0 means the member helps).")


def to_markdown(table: pd.DataFrame, chosen: str, outer_desc: str, info: dict | None = None,
                member: str | None = None) -> str:
    cols = ["name", "kind", "in_sample", "nested", "nested_std", *[f"nested_{t}" for t in TARGETS], "seconds"]
    head = [c.replace("nested_", "") if c.startswith("nested_") and c != "nested_std" else c for c in cols]
    gains = gain_cells(table)
    rows = []
    for i, (_, r) in enumerate(table.iterrows()):
        cells = [f"{r[c]:.5f}" if isinstance(r[c], float) and c != "seconds" else f"{r[c]}" for c in cols]
        cells += [col[i] for col in gains.values()]
        if r["name"] == chosen:
            cells[0] = f"**{cells[0]}**"
        rows.append(cells)
    notes = [n for n in (honest_note(table, chosen), member_note(table, chosen, member), uncertainty_note(info or {}))
             if n]
    return "\n".join([f"Nested CV over {outer_desc}; chosen method: **{chosen}** (lowest nested MCRMSE).", *notes, "",
                      markdown_table(head + list(gains), rows)]) + "\n"


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
    member = spec["members"][0] if spec.get("kind") == BEST_MEMBER_KIND else None
    return BlendResult(pd.read_csv(folder / "table.csv"), spec["method"], folder,
                       oof[list(TARGETS)].to_numpy(), spec["outer"], folds, spec.get("honest_mcrmse"), member)


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
    table, held = score_methods(cfg, P, y, splits, meta, names)
    methods = table[~table["kind"].isin(["member", "selection"])]
    chosen = str(methods.sort_values("nested", kind="stable").iloc[0]["name"])
    spec_cfg = next(s for s in candidate_specs(cfg, len(P)) if s.name == chosen)
    u = cfg.uncertainty
    table, info = add_uncertainty(table, held, P, y, u, cfg.outer.seed if u.seed is None else u.seed)
    if u.leave_one_out and len(P) > 1:
        table = add_leave_one_out(table, build_method(spec_cfg, cfg), P, y, splits, meta if spec_cfg.meta else None,
                                  chosen)
    used = list(range(len(P)))
    if spec_cfg.kind == BEST_MEMBER_KIND:  # no method beats the best member: the blend is that member alone
        used = [BestMember().fit(P, y).best_]
    honest = table.set_index("name")["nested"].get(SELECTED_ROW)
    result = BlendResult(table, chosen, None, held[chosen].mean(axis=0), outer_desc, outer_folds,
                         float(honest) if honest is not None else None,
                         names[used[0]] if spec_cfg.kind == BEST_MEMBER_KIND else None)
    if not write or ws is None:
        return result
    final = build_method(spec_cfg, cfg).fit(P[used], y, meta=meta if spec_cfg.meta else None)
    used_members = [members[i] for i in used]
    spec = {
        "name": cfg.name, "method": chosen, "kind": spec_cfg.kind, "params": spec_cfg.params,
        "selection": to_dict(cfg.selection) if cfg.selection.enabled else None,
        # the members the saved blender predicts from (only the best one when no method beats it), and all scored
        "members": [m.name for m in used_members], "input_members": names,
        "external_members": [m.name for m in used_members if m.external],
        "member_files": [str(m.path) for m in used_members],
        # what predict blends for an outside member, and the file's sha256 it refuses any other content of
        "member_tests": {m.name: {"file": str(m.test_path), "sha256": m.test_sha256}
                         for m in used_members if m.test_path is not None},
        "meta_features": cfg.meta_features if spec_cfg.meta else [], "uses_meta": bool(spec_cfg.meta),
        "clip": [SCORE_MIN, SCORE_MAX], "model_file": MODEL_FILE, "outer": outer_desc,
        "nested_mcrmse": float(methods.set_index("name").loc[chosen, "nested"]),
        "honest_mcrmse": result.honest, "honest_note": honest_note(table, chosen),
        "best_member_note": member_note(table, chosen, result.member), "uncertainty": info,
        **(weights_spec(final, [m.name for m in used_members]) or {}),
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
        write_text(tmp / "table.md", to_markdown(table, chosen, outer_desc, info, result.member))
        write_manifest(tmp, **hashes,
                       # what prediction checks: the blend is used only with exactly these member models
                       member_hashes=member_hashes)
        seal_folder(tmp)
    result.blend_dir = target
    return result
