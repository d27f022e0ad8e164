"""What a workspace holds, read-only: members x folds (done / missing / stale and why), blends and whether they
are fresh, cached test predictions and disk use.

"Stale" is decided exactly as training decides it (runner.expected_hashes + workspace.stale_reasons; the blend's
manifest_hashes), against the current config: the one given, else the workspace's run_config.yaml re-read with
today's member YAMLs. Nothing here writes to the workspace.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fb3stack.base.member import MemberConfig
from fb3stack.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_dir,
    from_dict,
    load_yaml,
    result_dict,
    split_member_overrides,
    to_dict,
)
from fb3stack.constants import FOLD_COL, ID_COL, TEXT_COL
from fb3stack.data import DataError
from fb3stack.io import read_json, sha256_file
from fb3stack.workspace import Prepared, StaleArtefactError, Workspace, imported_members, read_manifest, stale_reasons

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"


@dataclass
class Check:
    """The current state the artefacts are compared with; None fields are unknown (and said why in `problems`)."""

    cfg: RunConfig | None
    members: list[MemberConfig]
    prep: Prepared | None
    problems: list[str] = field(default_factory=list)


def saved_run_config(root: Path, overrides: list[str] | None = None) -> RunConfig | None:
    """The workspace's last resolved zoo config, keeping its source so member YAML paths resolve as then, with
    `--set` overrides applied as `run` would apply them to the zoo YAML."""
    path = root / RUN_CONFIG
    if not path.is_file():
        if overrides:
            raise ConfigError(f"--set {' '.join(overrides)}: the workspace has no {RUN_CONFIG} to apply it to; "
                              "pass the zoo YAML as well (fb3stack status ZOO.yaml --workspace ... --set ...)")
        return None
    run_level, per_member = split_member_overrides(overrides)
    cfg = from_dict(RunConfig, apply_overrides(load_yaml(path), run_level), where=str(path))
    for name, items in per_member.items():  # added to the overrides the run itself was given
        cfg.member_overrides.setdefault(name, []).extend(items)
    return cfg


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    """Dotted keys down to scalars; a list of mappings (blend methods, members) is keyed by each one's name, so a
    diff says `methods[slsqp].kind: (unset) -> scipy` rather than two long, equal-looking lists."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = [str(v.get("name", i)) for i, v in enumerate(value)]
        base = prefix.rstrip(".")
        return {k: v for key, item in zip(keys, value) for k, v in _flatten(item, f"{base}[{key}].").items()}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def settings_changed(before: dict, after: dict, shown: int = 6) -> str | None:
    """The settings that differ between two resolved configs, as 'key: old -> new' (None when none differ)."""
    old, new = _flatten(before), _flatten(after)
    diffs = [f"{k}: {_short(old.get(k, '(unset)'))} -> {_short(new.get(k, '(unset)'))}"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not diffs:
        return None
    more = f" (+{len(diffs) - shown} more)" if len(diffs) > shown else ""
    return "settings changed: " + ", ".join(diffs[:shown]) + more


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


HASH_WORDS = {"data_hash": "the training data differ from those it was made from",
              "folds_hash": "the folds differ from those it was made with",
              "members_hash": "its members' OOF predictions changed"}


def explain(reasons: list[str], before: dict | None, after: dict) -> list[str]:
    """stale_reasons in words: a changed config becomes the settings that changed, a changed hash what it covers."""
    out = []
    for reason in reasons:
        key = reason.split(" ", 1)[0]
        if key == "config_hash" and before is not None:
            out.append(settings_changed(before, after) or reason)
        elif key in HASH_WORDS:
            out.append(f"{HASH_WORDS[key]} ({reason})")
        else:
            out.append(reason)
    return out


def current_state(root: Path, cfg: RunConfig | None, data_dir: str | os.PathLike | None) -> Check:
    from fb3stack.base.runner import resolve_members
    from fb3stack.data import fingerprint
    from fb3stack.workspace import ensure_folds, load_training_data

    check = Check(cfg, [], None)
    if cfg is None:
        check.problems.append(f"no config given and no {RUN_CONFIG} in the workspace: staleness of the config "
                              "cannot be judged")
        return check
    try:
        check.members = resolve_members(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        check.problems.append(f"members cannot be resolved: {err}")
    ws = Workspace(root)
    try:
        data_root, train = load_training_data(cfg.data, data_dir)
    except DataError as err:
        check.problems.append(f"training data unavailable ({err}): data and folds staleness not checked")
        return check
    if not (ws.folds_path.is_file() and ws.folds_meta_path.is_file()):
        check.problems.append("no folds.csv yet: nothing trained")
        return check
    try:
        # with both files present this only reads and compares
        folds = ensure_folds(ws, train, cfg.folds, base_dir=config_dir(cfg.source))
    except (StaleArtefactError, DataError) as err:
        check.problems.append(f"folds: {err}")
        return check
    merged = train.merge(folds, on=ID_COL, how="left", validate="one_to_one")
    if merged[FOLD_COL].isna().any():
        check.problems.append(f"{ws.folds_path} does not cover every training essay")
        return check
    merged[FOLD_COL] = merged[FOLD_COL].astype(int)
    check.prep = Prepared(ws, data_root, merged, fingerprint(train), sha256_file(ws.folds_path))
    return check


def member_status(root: Path, check: Check) -> list[dict[str, Any]]:
    from fb3stack.base.runner import expected_hashes

    ws = Workspace(root)
    n_folds = check.prep.n_folds if check.prep is not None else _saved_n_folds(root)
    configured = {m.name: m for m in check.members}
    on_disk = sorted(p.name for p in (root / "models").iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if (root / "models").is_dir() else []
    imported = imported_members(root)
    rows = []
    for name in [*configured, *[n for n in on_disk if n not in configured]]:
        model_dir = ws.model_dir(name)
        cfg = configured.get(name)
        reasons: list[str] = []
        if not model_dir.is_dir():
            state = "missing"
        elif cfg is None and name in imported:
            # trained elsewhere (fb3stack import): judged on the data and folds, its config is its own
            reasons = stale_reasons(model_dir, data_hash=check.prep.data_hash, folds_hash=check.prep.folds_hash) \
                if check.prep is not None else []
            state = "stale" if reasons else "" if check.prep is not None else "unknown"
            reasons = reasons or [f"imported from {imported[name].get('source')}"]
        elif cfg is None:
            state, reasons = "extra", ["not a member of the current config"]
        elif check.prep is None:
            state = "unknown"
        elif read_manifest(model_dir) is None:
            state, reasons = "stale", [f"{model_dir.name} has no manifest.json"]
        else:
            reasons = stale_reasons(model_dir, **expected_hashes(cfg, check.prep))
            saved = model_dir / "config.yaml"
            before = result_dict(_saved_member_config(saved)) if reasons and saved.is_file() else None
            reasons = explain(reasons, before, result_dict(cfg))
            state = "stale" if reasons else ""
        manifest = (read_manifest(model_dir) or {}) if model_dir.is_dir() else {}
        if (cfg is not None and cfg.seeds is not None) or (cfg is None and manifest.get("seed_average")):
            rows.append(_seed_average_row(name, model_dir, cfg, state, reasons, check, n_folds or 0))
            continue
        folds, state = _fold_states(model_dir, n_folds or 0, state)
        rows.append({"member": name, "kind": getattr(cfg, "kind", None) or _saved_kind(model_dir), "state": state,
                     "folds": folds, "mcrmse": _score(model_dir), "reasons": reasons})
    return rows


def _fold_states(model_dir: Path, n_folds: int, state: str) -> tuple[list[str], str]:
    """Each fold's state (done / partial / missing, stale when the member is), and the member's state when
    nothing made it stale, missing or unknown: done, not finalised, or how many folds are done."""
    from fb3stack.base.runner import fold_done

    folds = []
    for k in range(n_folds):
        done = model_dir.is_dir() and fold_done(model_dir, k)
        # partial: a run was killed inside this fold; training restarts it
        folds.append(("stale" if state == "stale" else "done") if done else
                     "partial" if any(model_dir.glob(f".fold{k}.*.tmp")) else "missing")
    if not state:
        finished = (model_dir / "metrics.json").is_file() and (model_dir / "oof.parquet").is_file()
        state = "done" if finished and all(f == "done" for f in folds) else \
            "not finalised" if all(f == "done" for f in folds) else f"{folds.count('done')}/{len(folds)} folds"
    return folds, state


def _score(model_dir: Path) -> float | None:
    metrics = model_dir / "metrics.json"
    return read_json(metrics).get("mcrmse") if metrics.is_file() else None


def _seed_average_row(name: str, model_dir: Path, cfg: MemberConfig | None, state: str, reasons: list[str],
                      check: Check, n_folds: int) -> dict[str, Any]:
    """A seed average's row (the mean's score; a fold is done when every seed has it) with one row per seed under
    "seeds": each judged as the single-seed member it is, and the seed folders on disk the list no longer names."""
    from fb3stack.base.runner import expected_hashes, seed_dir_name, seed_members

    manifest = (read_manifest(model_dir) or {}) if model_dir.is_dir() else {}
    listed = seed_members(cfg) if cfg is not None else []
    seeds = [c.seed for c in listed] if cfg is not None else list(manifest.get("seeds") or [])
    dirs = {seed: model_dir / seed_dir_name(seed) for seed in seeds}
    if state == "stale" and manifest and not manifest.get("seed_average") and check.prep is not None:
        # trained as a single-seed member with one of the seeds: training keeps it as that seed (runner)
        prep = check.prep
        kept = next((c for c in listed if not stale_reasons(model_dir, **expected_hashes(c, prep))), None)
        if kept is not None:
            state, dirs[kept.seed] = "", model_dir
            reasons = [f"trained with seed {kept.seed} before `seeds` was set: kept as that seed, the others train"]
    seed_rows = []
    for seed in seeds:
        child = next((c for c in listed if c.seed == seed), None)
        seed_dir = dirs[seed]
        seed_state, seed_reasons = ("stale" if state == "stale" else "", [])
        if child is not None and check.prep is not None and seed_dir.is_dir() and not seed_state:
            found = stale_reasons(seed_dir, **expected_hashes(child, check.prep))
            saved = seed_dir / "config.yaml"
            before = result_dict(_saved_member_config(saved)) if found and saved.is_file() else None
            seed_reasons = explain(found, before, result_dict(child))
            seed_state = "stale" if seed_reasons else ""
        if not seed_dir.is_dir():
            seed_state = "missing"
        folds, seed_state = _fold_states(seed_dir, n_folds, seed_state)
        seed_rows.append({"member": f"{name}/{seed_dir_name(seed)}", "seed": seed, "state": seed_state,
                          "folds": folds, "mcrmse": _score(seed_dir), "reasons": seed_reasons})
    for seed_dir in sorted(model_dir.glob("seed*")) if model_dir.is_dir() else []:
        if seed_dir.is_dir() and (seed_dir / "config.yaml").is_file() and seed_dir.name not in \
                {seed_dir_name(x) for x in seeds}:
            folds, _ = _fold_states(seed_dir, n_folds, "")
            seed_rows.append({"member": f"{name}/{seed_dir.name}", "seed": None, "state": "unused", "folds": folds,
                              "mcrmse": _score(seed_dir), "reasons": ["not in `seeds`: left out of the mean (kept; "
                                                                      "listed again, it is used again)"]})
    used = [r for r in seed_rows if r["state"] != "unused"]
    folds = [("stale" if state == "stale" else "done") if all(r["folds"][k] == "done" for r in used) else
             f"{sum(r['folds'][k] == 'done' for r in used)}/{len(used)} seeds" for k in range(n_folds)]
    if not state:
        if manifest.get("content_hash") and manifest.get("seeds") != seeds:
            reasons = [*reasons, f"seeds {manifest.get('seeds')} -> {seeds}: averaged again by train / run"]
        finished = manifest.get("seeds") == seeds and (model_dir / "oof.parquet").is_file()
        all_done = all(r["state"] == "done" for r in used)
        state = "done" if finished and all_done else "not finalised" if all_done else \
            f"{sum(r['state'] == 'done' for r in used)}/{len(used)} seeds"
    return {"member": name, "kind": getattr(cfg, "kind", None) or _saved_kind(model_dir), "state": state,
            "folds": folds, "mcrmse": _score(model_dir) if manifest.get("seed_average") else None,
            "reasons": reasons, "seeds": seed_rows}


def _saved_n_folds(root: Path) -> int | None:
    meta = root / "folds.json"
    return int(read_json(meta).get("n_folds") or 0) or None if meta.is_file() else None


def _saved_member_config(path: Path) -> object:
    """A member's config.yaml as trained, typed (so execution-only fields drop out of result_dict); the raw
    mapping when it no longer reads as its kind's config (a field since renamed)."""
    from fb3stack.base.registry import load_member_config

    try:
        return load_member_config(path)
    except (ConfigError, ValueError):
        return load_yaml(path)


def _saved_kind(model_dir: Path) -> str | None:
    path = model_dir / "config.yaml"
    return (load_yaml(path) or {}).get("kind") if path.is_file() else None


def blend_status(root: Path, check: Check, members: list[dict[str, Any]], data_dir: str | os.PathLike | None
                 ) -> list[dict[str, Any]]:
    blends = root / "blends"
    if not blends.is_dir():
        return []
    rows = []
    for blend_dir in sorted(p for p in blends.iterdir() if (p / "spec.json").is_file()):
        spec = read_json(blend_dir / "spec.json")
        reasons = _blend_stale_reasons(root, blend_dir, check, data_dir)
        # every member the blend was scored on (a best-member blend predicts from one of them but chose among all)
        mine = [m for m in members if m["member"] in spec.get("input_members", spec.get("members", []))]
        reasons += [f"member {m['member']} is not up to date" for m in mine if m["state"] not in ("done", "extra",
                                                                                                  "unknown")]
        # without the data nothing can be compared: say unknown, not stale
        unknown = any(r.startswith("cannot be rebuilt") for r in reasons) or any(m["state"] == "unknown" for m in mine)
        state = "stale" if reasons and not unknown else "unknown" if unknown else "fresh"
        info = read_blend_scores(blend_dir, spec)
        rows.append({"blend": blend_dir.name, "method": spec.get("method"), "mcrmse": info[1],
                     "mcrmse_from": info[0], "nested_mcrmse": spec.get("nested_mcrmse"),
                     "members": spec.get("members", []), "state": state, "reasons": reasons})
    return rows


def _blend_stale_reasons(root: Path, blend_dir: Path, check: Check, data_dir: str | os.PathLike | None) -> list[str]:
    from fb3stack.blend.config import BlendConfig, zoo_blend_config
    from fb3stack.blend.inputs import load_members, workspace_label_ids
    from fb3stack.blend.run import manifest_hashes, resolve_outer
    from fb3stack.data import load_train, resolve_data_dir

    cfg = None
    if check.cfg is not None and check.cfg.blend is not None:
        try:
            zoo_blend = zoo_blend_config(check.cfg)
            cfg = zoo_blend if zoo_blend.name == blend_dir.name else None
        except (ConfigError, ValueError) as err:
            return [f"zoo blend config unreadable: {err}"]
    if cfg is None:  # a blend outside the zoo config: judged against the config it was made with
        raw = load_yaml(blend_dir / "config.yaml")
        source = raw.pop("source", None)
        cfg = from_dict(BlendConfig, raw, where=str(blend_dir / "config.yaml"))
        cfg.source = source
    ws = Workspace(root)
    base_dir = config_dir(cfg.source)
    try:
        recorded = cfg.data_dir or (check.cfg.data.data_dir if check.cfg else None)  # where the run read them
        labels = workspace_label_ids(ws, load_train(resolve_data_dir(data_dir, recorded) / cfg.train_file))
        members = load_members(cfg.members, labels, ws, base_dir)
        _, outer_folds, outer_desc = resolve_outer(cfg, members, labels, base_dir)
    except (DataError, ConfigError, ValueError) as err:
        return [f"cannot be rebuilt as configured: {err}"]
    reasons = stale_reasons(blend_dir, **manifest_hashes(cfg, labels, members, outer_desc, outer_folds))
    saved = blend_dir / "config.yaml"
    return explain(reasons, load_yaml(saved) if saved.is_file() else None, to_dict(cfg))


def read_blend_scores(blend_dir: Path, spec: dict) -> tuple[str, float | None]:
    """(which row, score): the blend's one shown score, the honest estimate, found as the report finds it."""
    import pandas as pd

    from fb3stack.report.gather import honest_choice

    table = pd.read_csv(blend_dir / "table.csv") if (blend_dir / "table.csv").is_file() else None
    return honest_choice(table, spec)


def prediction_status(root: Path, check: Check, data_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    from fb3stack.data import fingerprint, load_test, resolve_data_dir

    cache = root / "predictions"
    if not cache.is_dir():
        return []
    current = None
    if check.cfg is not None:
        try:
            test = load_test(resolve_data_dir(data_dir, check.cfg.data.data_dir) / check.cfg.data.test_file)
            current = fingerprint(test[[ID_COL, TEXT_COL]])[:16]
        except DataError:
            current = None
    rows = []
    for folder in sorted(p for p in cache.iterdir() if p.is_dir()):
        # predictions/<test hash>/<member>-<content hash>.npz: keyed by the exact model that made them
        for f in sorted(folder.glob("*.npz")):
            member, _, content = f.stem.rpartition("-")
            current_model = str((read_manifest(root / "models" / member) or {}).get("content_hash", ""))
            rows.append({"test_hash": folder.name, "member": member,
                         "current_test": None if current is None else folder.name == current,
                         "state": "ok" if current_model.startswith(content) else "for another model (unused)",
                         "bytes": f.stat().st_size})
    return rows


def disk_use(root: Path) -> list[dict[str, Any]]:
    def size(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())

    rows = []
    for top in sorted(root.iterdir()):
        if top.is_dir() and top.name in ("models", "cache", "blends"):
            rows += [{"path": f"{top.name}/{p.name}", "bytes": size(p)} for p in sorted(top.iterdir()) if p.is_dir()]
        else:
            rows.append({"path": top.name + ("/" if top.is_dir() else ""), "bytes": size(top)})
    return rows


def collect(workspace: str | os.PathLike, cfg: RunConfig | None = None, data_dir: str | os.PathLike | None = None,
            overrides: list[str] | None = None) -> dict[str, Any]:
    """The workspace's state against `cfg`, or else its run_config.yaml with `overrides` applied."""
    root = Workspace.existing(workspace).root
    source = "given" if cfg is not None else RUN_CONFIG
    if cfg is None:
        try:
            cfg = saved_run_config(root, overrides)
        except ConfigError as err:
            if overrides:
                raise  # the user's --set cannot be applied: refused, never ignored
            logger.warning("%s", err)
    if overrides and cfg is not None:
        from fb3stack.base.runner import resolve_members

        resolve_members(cfg)  # a --set naming no member, or a bad value, is refused, not shown as a problem
    check = current_state(root, cfg, data_dir)
    members = member_status(root, check)
    disk = disk_use(root)
    files = {name: (root / name).is_file() for name in ("submission.csv", "report.md", "report.html")}
    return {
        "workspace": str(root),
        "config": (cfg.source if cfg is not None else None), "config_from": source if cfg is not None else None,
        "n_folds": check.prep.n_folds if check.prep is not None else _saved_n_folds(root),
        "problems": check.problems,
        "members": members,
        "blends": blend_status(root, check, members, data_dir),
        "predictions": prediction_status(root, check, data_dir),
        "files": files,
        "disk": disk,
        "disk_total": sum(d["bytes"] for d in disk),
    }


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
