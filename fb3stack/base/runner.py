"""Train zoo members fold by fold on the shared folds, resumably, and write the OOF contract.

    models/<name>/config.yaml        the resolved member config
    models/<name>/manifest.json      data, folds and config hashes the member was made from; once complete also
                                     its content_hash (config hash + every fold's digest) and oof.parquet's sha256
    models/<name>/fold<k>/           what `predict_fold` needs + oof.parquet of that fold (+ embeddings.npy),
                                     sealed by files.json (sha256 of every file)
    models/<name>/oof.parquet        text_id, fold, six traits: one row per training essay
    models/<name>/metrics.json       overall and per-fold MCRMSE and per-trait RMSE
    models/<name>/embeddings.npy     pooled features of the OOF rows (row order: embeddings_ids.csv)

A fold folder is built under a temporary name and renamed when complete, so its presence means "done":
a killed run resumes at the first missing fold and never retrains a finished one. A fold whose files no
longer match their seal (truncated, altered) is moved to models/.corrupt/ and trained again, and a member's
oof.parquet that no longer matches its manifest is rebuilt from the folds. `train_fold` and
`finalize_member` are separate so an executor can run (member, fold) jobs anywhere in parallel; the one
training loop is `fb3stack.base.executors` (`run_local` is what `fb3stack train` / `run` and the tests call).

The config hash covers only result-relevant settings (`fb3stack.config.result_dict`): the execution-only
fields a config class declares (threads, device, eval batch size ...) never make a member stale.

Seed averages. `seeds: [42, 43, 44]` on any member kind makes the member the mean of one single-seed member per
seed, each trained on the shared folds into its own folder, laid out and sealed exactly as a member of its own
(it *is* one, named <name>/seed<s>: `seed_members`), so every rule above holds per seed:

    models/<name>/config.yaml        the config with its `seeds`
    models/<name>/manifest.json      data, folds and config hash (the seed list left out) and, once complete, the
                                     seeds, each seed's content hash, and content_hash over all of these
    models/<name>/oof.parquet        the mean of the seeds' OOFs: what blend, predict and bundle see
    models/<name>/metrics.json       the mean's scores, and each seed's under "seeds"
    models/<name>/seed<s>/           one seed: config.yaml (seed s), manifest.json, fold<k>/, oof.parquet, ...

A seed's config hash is that of the single-seed member with that seed, so a seed added later trains only itself,
a seed removed from the list is left out of the mean (its folder stays, unused, until it is listed again), and a
member trained with `seed: 42` before `seeds: [42, 43]` was set becomes that list's first seed without
retraining (and the other way round). Without `seeds` nothing differs from a single-seed member: same files,
same hashes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fb3stack import dist
from fb3stack.base.member import Member, MemberConfig
from fb3stack.base.registry import HASHED_AS, load_member_config, member_class
from fb3stack.config import ConfigError, RunConfig, config_dir, load_yaml, result_dict, to_dict
from fb3stack.constants import FOLD_COL, ID_COL, TARGETS, TEXT_COL
from fb3stack.io import (
    atomic_dir,
    read_json,
    save_npy,
    sha256_file_cached,
    sha256_json,
    write_csv,
    write_json,
    write_parquet,
    write_yaml,
)
from fb3stack.metrics import score_report
from fb3stack.workspace import (
    PREDICT_UNUSED,
    CorruptArtefactError,
    Prepared,
    StaleArtefactError,
    folder_digest,
    imported_members,
    read_manifest,
    seal_folder,
    stale_reasons,
    update_manifest,
    verify_folder,
    write_manifest,
)

logger = logging.getLogger(__name__)


def fold_dir(model_dir: Path, fold: int) -> Path:
    return model_dir / f"fold{fold}"


def config_hash(cfg: MemberConfig) -> str:
    """Hash of the settings that change what the member learns (execution-only fields left out); a renamed kind
    hashes under its old name, so the rename retrains nothing. One seed of a seed average hashes as the
    single-seed member it is (its member's name, its seed); a seed average leaves its seeds to its content hash,
    so adding or removing one never makes the seeds already trained stale."""
    settings = result_dict(cfg)
    settings["kind"] = HASHED_AS.get(settings["kind"], settings["kind"])
    settings["name"] = _member_name(cfg)
    if cfg.seeds is not None:
        del settings["seeds"], settings["seed"]
        settings["seed_average"] = True
    return sha256_json(settings)


def content_hash(cfg_hash: str, fold_digests: list[str]) -> str:
    """What a member's predictions depend on: its result-relevant config and the files of every fold model."""
    return sha256_json({"config_hash": cfg_hash, "folds": fold_digests})


def seed_average_hash(cfg_hash: str, seeds: list[int], seed_hashes: list[str]) -> str:
    """What a seed average's predictions depend on: its config, the seed list and each seed's content hash."""
    return sha256_json({"config_hash": cfg_hash, "seeds": list(seeds), "seed_hashes": list(seed_hashes)})


def seed_dir_name(seed: int) -> str:
    return f"seed{seed}"


def seed_members(cfg: MemberConfig) -> list[MemberConfig]:
    """What trains for `cfg`: the member itself, or for a seed average one single-seed member per seed (the same
    settings with `seed` set), named <name>/seed<s> so that it lives in models/<name>/seed<s>/."""
    if cfg.seeds is None:
        return [cfg]
    return [dataclasses.replace(cfg, name=f"{cfg.name}/{seed_dir_name(s)}", seed=s, seeds=None) for s in cfg.seeds]


def _member_name(cfg: MemberConfig) -> str:
    """The zoo member a config belongs to: its name, or for one seed of a seed average the average's name."""
    parent, sep, last = cfg.name.rpartition("/")
    return parent if sep and cfg.seeds is None and last == seed_dir_name(cfg.seed) else cfg.name


def _archive_label(cfg: MemberConfig) -> str:
    return cfg.name.replace("/", "-")


def expected_hashes(cfg: MemberConfig, prep: Prepared) -> dict[str, str]:
    return {"data_hash": prep.data_hash, "folds_hash": prep.folds_hash, "config_hash": config_hash(cfg)}


def resolve_members(cfg: RunConfig) -> list[MemberConfig]:
    base, where, members = config_dir(cfg.source), cfg.source or "config", []
    for i, entry in enumerate(cfg.members):
        try:
            member = load_member_config(entry, base)
        except ConfigError as err:
            raise ConfigError(f"{where}: members[{i}]: {err}") from err
        extra = cfg.member_overrides.get("*", []) + cfg.member_overrides.get(member.name, [])
        if extra:
            try:
                member = load_member_config({**to_dict(member)}, base, extra)
            except ConfigError as err:
                sets = ", ".join(f"members.{member.name}.{o}" for o in extra)
                raise ConfigError(f"--set {sets} (members[{i}], {member.name!r}): {err}") from err
        if not member.name or any(ch in member.name for ch in "/\\") or member.name.startswith("."):
            raise ConfigError(f"{where}: members[{i}]: name {member.name!r} must be a plain folder name "
                              "(models/<name>/): not empty, no '/' or '\\', not starting with '.'")
        members.append(member)
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: member names must be unique, repeated: {dupes}")
    unknown = set(cfg.member_overrides) - set(names) - {"*"}
    if unknown:
        raise ConfigError(f"--set members.<name>... names unknown member(s) {sorted(unknown)}; members: {names}")
    return members


BACKBONE_FIELDS = ("backbone", "backbones")  # config fields naming model folders (a path, pkg: spec or hub name)


@dataclass(frozen=True)
class BackboneStatus:
    """Where one backbone a member names comes from on this machine; `error` is why `run` would refuse it."""

    key: str  # members.<name>.<field>[i]
    spec: str
    where: str  # local folder, pkg: package, pkgparts: packages, Hugging Face cache, hub download, missing
    error: str | None = None


def backbone_status(members: list[MemberConfig]) -> list[BackboneStatus]:
    """Every backbone the members name, checked as `run` checks it: a local model folder, a `pkg:` / `pkgparts:`
    folder, or a hub name already in the local cache (or downloadable: only when HF_HUB_OFFLINE is not set)."""
    import os

    from fb3stack.base.backbones import PARTS_PREFIX, PKG_PREFIX, is_backbone_spec, resolve_backbone_path

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    out = []
    for m in members:
        for field_name in BACKBONE_FIELDS:
            value = getattr(m, field_name, None)
            specs = [value] if isinstance(value, str) else list(value or [])
            for i, spec in enumerate(specs):
                key = f"members.{m.name}.{field_name}" + (f"[{i}]" if isinstance(value, list) else "")
                looks_local = (is_backbone_spec(spec) or spec.startswith(("/", ".", "~"))
                               or Path(spec).expanduser().exists())
                if looks_local:
                    where = ("pkg: package" if spec.startswith(PKG_PREFIX) else "pkgparts: packages"
                             if spec.startswith(PARTS_PREFIX) else "local folder")
                    try:
                        resolve_backbone_path(spec)
                        out.append(BackboneStatus(key, spec, where))
                    except FileNotFoundError as err:
                        out.append(BackboneStatus(key, spec, "missing", str(err)))
                elif _in_hub_cache(spec):
                    out.append(BackboneStatus(key, spec, "Hugging Face cache"))
                elif offline:
                    out.append(BackboneStatus(key, spec, "missing", f"{spec!r} is neither a local model folder nor in "
                                              "the Hugging Face cache, and HF_HUB_OFFLINE is set; point it at a local "
                                              "copy"))
                else:
                    out.append(BackboneStatus(key, spec, "hub download"))
    return out


def check_backbones(members: list[MemberConfig]) -> None:
    """Every backbone must be loadable here (`backbone_status`); checked before training, so a typo costs
    seconds, not the hours of the members before it."""
    for status in backbone_status(members):
        if status.error:
            raise ConfigError(f"{status.key}: {status.error}")
        if status.where == "hub download":
            logger.warning("%s: %r is not cached locally; it will be downloaded from the hub", status.key, status.spec)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def build_member(cfg: MemberConfig, prep: Prepared | None = None) -> Member:
    return member_class(cfg.kind)(cfg, prep.workspace if prep else None)


def begin_member(cfg: MemberConfig, prep: Prepared) -> Path:
    """Create or check models/<name>; a member made from other data/folds/config is archived, not reused.

    Under data parallelism the main process does this first; the others then find it up to date.
    """
    with dist.main_first():
        return _begin_member(cfg, prep)


def _begin_member(cfg: MemberConfig, prep: Prepared) -> Path:
    if cfg.seeds is not None:
        return _begin_seed_average(cfg, prep)
    model_dir = prep.workspace.model_dir(cfg.name)
    expected = expected_hashes(cfg, prep)
    manifest = read_manifest(model_dir) if model_dir.exists() else None
    if manifest is not None and manifest.get("seed_average") and _take_seed_out(cfg, prep):
        manifest = read_manifest(model_dir)
    if manifest is not None:
        reasons = stale_reasons(model_dir, **expected)
        if not reasons:
            _record_execution_settings(cfg, model_dir)
            return model_dir
        _refuse_imported(cfg, prep, reasons)
        _archive_stale(cfg, prep, model_dir, reasons)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(model_dir / "config.yaml", to_dict(cfg))
    write_manifest(model_dir, **expected)
    return model_dir


def _refuse_imported(cfg: MemberConfig, prep: Prepared, reasons: list[str]) -> None:
    source = imported_members(prep.workspace.root).get(cfg.name, {}).get("source")
    if source:  # trained elsewhere (fb3stack import): never replaced by a retrain here
        raise StaleArtefactError(
            f"member '{cfg.name}' was imported from {source} and does not match this zoo's entry "
            f"({'; '.join(reasons)}); it is not retrained here. Leave it out of the zoo YAML (the blend still "
            "names it), or give it the settings it was trained with")


def _archive_stale(cfg: MemberConfig, prep: Prepared, model_dir: Path, reasons: list[str]) -> Path:
    archive = _move_aside(model_dir, prep.workspace.root / "models" / ".stale", _archive_label(cfg))
    logger.warning("%s is stale (%s); moved to %s and retraining", model_dir, "; ".join(reasons), archive)
    return archive


def _begin_seed_average(cfg: MemberConfig, prep: Prepared) -> Path:
    """models/<name>/ of a seed average: a stale one (other data, folds or settings than the seed list) archived,
    a single-seed member trained with one of the seeds taken in as that seed; a changed seed list only makes the
    member incomplete until `finalize_member` averages the listed seeds again."""
    model_dir = prep.workspace.model_dir(cfg.name)
    expected = expected_hashes(cfg, prep)
    _finish_taking_in(model_dir)
    manifest = read_manifest(model_dir) if model_dir.exists() else None
    if manifest is not None and not manifest.get("seed_average") and _take_in_single_seed(cfg, prep, model_dir):
        manifest = None
    if manifest is not None:
        reasons = stale_reasons(model_dir, **expected)
        seeds_changed = "content_hash" in manifest and manifest.get("seeds") != list(cfg.seeds)
        if not reasons and not seeds_changed:
            _record_execution_settings(cfg, model_dir)
            return model_dir
        if not reasons:  # seeds added or removed: the seeds' own folders stay, the mean is made again
            _refuse_imported(cfg, prep, [f"seeds {manifest.get('seeds')} -> {cfg.seeds}"])
            logger.info("%s: seeds %s -> %s; a seed not trained yet trains, the mean is made of the listed ones",
                        cfg.name, manifest.get("seeds"), cfg.seeds)
        else:
            _refuse_imported(cfg, prep, reasons)
            _archive_stale(cfg, prep, model_dir, reasons)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(model_dir / "config.yaml", to_dict(cfg))
    write_manifest(model_dir, **expected, seed_average=True)
    return model_dir


def _taking_in(model_dir: Path) -> Path:
    # a fixed name (the workspace lock makes this process its only writer): a run killed between the two renames of
    # _take_in_single_seed is completed by the next one
    return model_dir.parent / f".{model_dir.name}.seed-average.tmp"


def _finish_taking_in(model_dir: Path) -> None:
    staging = _taking_in(model_dir)
    if staging.is_dir():
        if model_dir.exists():
            staging.rmdir()  # killed before the first rename: it is empty
        else:
            os.rename(staging, model_dir)


def _take_in_single_seed(cfg: MemberConfig, prep: Prepared, model_dir: Path) -> bool:
    """models/<name>/ holds a single-seed member, up to date as one of `cfg.seeds` (trained with `seed: s` before
    `seeds` was set): it becomes models/<name>/seed<s>/, not retrained. False when it is none of them."""
    if cfg.name in imported_members(prep.workspace.root):
        return False  # an imported member is never rearranged; it is refused as it is
    child = next((c for c in seed_members(cfg) if not stale_reasons(model_dir, **expected_hashes(c, prep))), None)
    if child is None:
        return False
    staging = _taking_in(model_dir)
    staging.mkdir()
    os.rename(model_dir, staging / seed_dir_name(child.seed))
    os.rename(staging, model_dir)
    logger.info("%s: the single-seed member trained with seed %d is now seed %d of the seed average %s",
                cfg.name, child.seed, child.seed, cfg.seeds)
    return True


def _take_seed_out(cfg: MemberConfig, prep: Prepared) -> bool:
    """The other way: models/<name>/ is a seed average and `cfg` a single-seed member whose seed it holds up to
    date; the average (with its other seeds) is archived and that seed's folder becomes the member."""
    model_dir = prep.workspace.model_dir(cfg.name)
    seed_dir = model_dir / seed_dir_name(cfg.seed)
    if cfg.name in imported_members(prep.workspace.root) or read_manifest(seed_dir) is None \
            or stale_reasons(seed_dir, **expected_hashes(cfg, prep)):
        return False
    archive = _move_aside(model_dir, prep.workspace.root / "models" / ".stale", _archive_label(cfg))
    os.rename(archive / seed_dir.name, model_dir)
    logger.info("%s: seed %d taken out of the seed average (archived as %s) as the single-seed member", cfg.name,
                cfg.seed, archive)
    return True


def _move_aside(src: Path, folder: Path, name: str) -> Path:
    """Move `src` to `folder`/<name>-<time>: kept for inspection, never loaded again."""
    dest = folder / f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dest))
    return dest


def _record_execution_settings(cfg: MemberConfig, model_dir: Path) -> None:
    """Only execution-only settings differ from config.yaml (else the member would be stale): keep the models and
    record the new settings, which prediction from this folder then runs with."""
    path = model_dir / "config.yaml"
    if dist.is_main() and path.is_file() and load_yaml(path) != to_dict(cfg):
        write_yaml(path, to_dict(cfg))


def fold_done(model_dir: Path, fold: int) -> bool:
    """A fold folder exists only once complete (atomic rename); its seal says so too."""
    target = fold_dir(model_dir, fold)
    return (target / "oof.parquet").is_file() and (target / "files.json").is_file()


def check_fold(model_dir: Path, fold: int, cfg: MemberConfig | None = None) -> bool:
    """True when the fold is done and its files match their seal (and, given the member's config, the files it
    shares with the other folds match the fold's record); a damaged fold is moved to models/.corrupt/ (kept for
    inspection, never loaded) so that it is trained again."""
    target = fold_dir(model_dir, fold)
    if not target.exists():
        return False
    problems = verify_folder(target) if (target / "oof.parquet").is_file() else [f"{target} has no oof.parquet"]
    if not problems and cfg is not None:
        problems = build_member(cfg).check_shared(target)
    if not problems:
        return True
    if not dist.is_main():  # the main process sets it aside; helpers just see it as not done
        return False
    # models/.corrupt/, also for one seed of a seed average (models/<name>/seed<s>/)
    root, label = (model_dir.parents[cfg.name.count("/")], _archive_label(cfg)) if cfg else (model_dir.parent,
                                                                                               model_dir.name)
    grave = _move_aside(target, root / ".corrupt", f"{label}-{target.name}")
    logger.warning("%s fold %d is damaged (%s); moved to %s and training it again", model_dir.name, fold,
                   "; ".join(problems[:3]), grave)
    return False


def train_fold(cfg: MemberConfig, prep: Prepared, fold: int) -> Path:
    """Train one fold unless it is already done; returns its folder."""
    model_dir = begin_member(cfg, prep)
    target = fold_dir(model_dir, fold)
    if fold_done(model_dir, fold):
        logger.info("%s fold %d: done already, skipped", cfg.name, fold)
        return target
    if dist.is_main():
        for leftover in model_dir.glob(f".fold{fold}.*.tmp"):  # a run killed in this fold (no cleanup ran)
            shutil.rmtree(leftover, ignore_errors=True)
    member = build_member(cfg, prep)
    df = prep.train
    train = df[df[FOLD_COL] != fold].reset_index(drop=True)
    valid = df[df[FOLD_COL] == fold].reset_index(drop=True)
    logger.info("%s fold %d: training on %d essays, validating on %d", cfg.name, fold, len(train), len(valid))
    if not dist.is_main():
        # data-parallel helper process: trains alongside the main one, which alone writes the fold folder
        with tempfile.TemporaryDirectory(prefix=f"fb3stack-rank{dist.rank()}-") as scratch:
            member.fit_fold(train, valid, fold, Path(scratch))
        dist.barrier()
        return target
    t0 = time.perf_counter()
    with atomic_dir(target) as tmp:
        result = member.fit_fold(train, valid, fold, tmp)
        preds = np.asarray(result.preds, dtype=np.float64)
        if preds.shape != (len(valid), len(TARGETS)):
            raise ValueError(f"{cfg.name} fold {fold}: fit_fold returned {preds.shape}, expected {(len(valid), 6)}")
        if not np.isfinite(preds).all():
            raise ValueError(f"{cfg.name} fold {fold}: predictions contain NaN or inf")
        oof = pd.DataFrame(preds, columns=list(TARGETS))
        oof.insert(0, FOLD_COL, fold)
        oof.insert(0, ID_COL, valid[ID_COL].to_numpy())
        if result.embeddings is not None:
            save_npy(tmp / "embeddings.npy", np.asarray(result.embeddings, dtype=np.float32))
        if result.history is not None:
            write_csv(tmp / "history.csv", result.history)
        for name, alt in (result.alt_preds or {}).items():
            if alt is not None:
                alt_oof = oof.copy()
                alt_oof[list(TARGETS)] = np.asarray(alt, dtype=np.float64)
                write_parquet(tmp / f"oof_{name}.parquet", alt_oof)
        report = score_report(valid[list(TARGETS)].to_numpy(), preds)
        report.update(fold=fold, seconds=round(time.perf_counter() - t0, 2), **(result.info or {}))
        write_json(tmp / "metrics.json", report)
        write_parquet(tmp / "oof.parquet", oof)
        seal_folder(tmp)  # sha256 of every file, checked before anything in the fold is loaded again
    dist.barrier()
    logger.info("%s fold %d: MCRMSE %.4f (%.0f s)", cfg.name, fold, report["mcrmse"], report["seconds"])
    return target


def finalize_member(cfg: MemberConfig, prep: Prepared) -> dict:
    """Gather the fold OOFs into oof.parquet, metrics.json and embeddings.npy; all folds must be done. A seed
    average: each seed's first (where not complete yet), then their mean."""
    if cfg.seeds is not None:
        return _finalize_seed_average(cfg, prep)
    model_dir = prep.workspace.model_dir(cfg.name)
    missing = [k for k in range(prep.n_folds) if not fold_done(model_dir, k)]
    if missing:
        raise RuntimeError(f"{cfg.name}: folds {missing} are not trained yet")
    folds = [fold_dir(model_dir, k) for k in range(prep.n_folds)]
    oof = pd.concat([pd.read_parquet(f / "oof.parquet") for f in folds], ignore_index=True)
    order = pd.Series(np.arange(len(oof)), index=oof[ID_COL])
    oof = oof.set_index(ID_COL).loc[prep.train[ID_COL]].reset_index()  # training-file row order
    truth = prep.train[list(TARGETS)].to_numpy()
    metrics = score_report(truth, oof[list(TARGETS)].to_numpy())
    metrics["folds"] = [read_json(f / "metrics.json") for f in folds]
    metrics["name"], metrics["kind"] = cfg.name, cfg.kind
    for name in sorted(p.stem[4:] for p in folds[0].glob("oof_*.parquet")):
        files = [f / f"oof_{name}.parquet" for f in folds]
        if all(f.is_file() for f in files):
            alt = pd.concat([pd.read_parquet(f) for f in files]).set_index(ID_COL).loc[prep.train[ID_COL]]
            # e.g. a transformer's best-of-N-evaluations vs last-checkpoint OOF: the gap is the selection bias
            metrics.setdefault("oof_checkpoints", {})[name] = score_report(truth, alt[list(TARGETS)].to_numpy())[
                "mcrmse"]
    emb_files = [f / "embeddings.npy" for f in folds]
    if all(f.is_file() for f in emb_files):
        emb = np.concatenate([np.load(f) for f in emb_files])[order.loc[oof[ID_COL]].to_numpy()]
        save_npy(model_dir / "embeddings.npy", emb)
        write_csv(model_dir / "embeddings_ids.csv", oof[[ID_COL]])
    write_parquet(model_dir / "oof.parquet", oof)
    write_json(model_dir / "metrics.json", metrics)
    digests = [folder_digest(f) for f in folds]
    # written last: a member is complete once its manifest has the content hash of exactly these files
    update_manifest(model_dir, content_hash=content_hash(config_hash(cfg), digests), fold_digests=digests,
                    oof_sha256=sha256_file_cached(model_dir / "oof.parquet"),
                    metrics_sha256=sha256_file_cached(model_dir / "metrics.json"))
    logger.info("%s: OOF MCRMSE %.4f over %d essays", cfg.name, metrics["mcrmse"], len(oof))
    return metrics


def _finalize_seed_average(cfg: MemberConfig, prep: Prepared) -> dict:
    """oof.parquet = the mean of the seeds' OOFs, metrics.json = its scores with each seed's, and the content hash
    over the seed list and the seeds' content hashes; every listed seed's folds must be done."""
    ws = prep.workspace
    model_dir = ws.model_dir(cfg.name)
    truth = prep.train[list(TARGETS)].to_numpy()
    oofs, seed_metrics, hashes = [], [], []
    for child in seed_members(cfg):
        child_dir = ws.model_dir(child.name)
        metrics = read_json(child_dir / "metrics.json") if member_is_complete(child, prep) else \
            finalize_member(child, prep)
        oof = pd.read_parquet(child_dir / "oof.parquet")  # training-file row order, as every member's
        if list(oof[ID_COL]) != list(prep.train[ID_COL]) or (oof[FOLD_COL].to_numpy() != prep.train[FOLD_COL]).any():
            raise CorruptArtefactError(f"{child_dir / 'oof.parquet'}: its rows are not the training essays in their "
                                       "folds; retrain the seed")
        oofs.append(oof)
        hashes.append(str(read_manifest(child_dir)["content_hash"]))
        seed_metrics.append({"seed": child.seed, "mcrmse": metrics["mcrmse"], "rmse": metrics["rmse"],
                             "folds": [f["mcrmse"] for f in metrics["folds"]],
                             "seconds": round(sum(f.get("seconds", 0.0) for f in metrics["folds"]), 2)})
    mean = np.mean([o[list(TARGETS)].to_numpy(dtype=np.float64) for o in oofs], axis=0)
    oof = oofs[0][[ID_COL, FOLD_COL]].copy()
    oof[list(TARGETS)] = mean
    folds = oof[FOLD_COL].to_numpy()
    metrics = score_report(truth, mean)
    # per fold: the mean's score there, and the time every seed spent on it
    metrics["folds"] = [{**score_report(truth[folds == k], mean[folds == k]), "fold": k,
                         "seconds": round(sum(read_json(fold_dir(ws.model_dir(c.name), k) / "metrics.json")
                                              .get("seconds", 0.0) for c in seed_members(cfg)), 2)}
                        for k in range(prep.n_folds)]
    metrics["name"], metrics["kind"] = cfg.name, cfg.kind
    metrics["seeds"] = seed_metrics
    write_parquet(model_dir / "oof.parquet", oof)
    write_json(model_dir / "metrics.json", metrics)
    update_manifest(model_dir, seeds=list(cfg.seeds), seed_hashes=hashes,
                    content_hash=seed_average_hash(config_hash(cfg), cfg.seeds, hashes),
                    oof_sha256=sha256_file_cached(model_dir / "oof.parquet"),
                    metrics_sha256=sha256_file_cached(model_dir / "metrics.json"))
    logger.info("%s: OOF MCRMSE %.4f, the mean of seeds %s (each: %s)", cfg.name, metrics["mcrmse"], cfg.seeds,
                ", ".join(f"{m['mcrmse']:.4f}" for m in seed_metrics))
    return metrics


def member_is_complete(cfg: MemberConfig, prep: Prepared) -> bool:
    """Up to date (same data, folds, result-relevant config), every fold intact, and oof.parquet, metrics.json
    and the content hash made from exactly those folds (a seed average: every listed seed complete, and the mean
    made from exactly those seeds). Damaged folds are set aside here to be retrained."""
    model_dir = prep.workspace.model_dir(cfg.name)
    manifest = read_manifest(model_dir)
    if manifest is None or stale_reasons(model_dir, **expected_hashes(cfg, prep)):
        return False
    if cfg.seeds is not None:
        seeds_ok = [member_is_complete(c, prep) for c in seed_members(cfg)]  # each seed checked, damage set aside
        if not all(seeds_ok) or "content_hash" not in manifest or manifest.get("seeds") != list(cfg.seeds):
            return False
        hashes = [read_manifest(prep.workspace.model_dir(c.name))["content_hash"] for c in seed_members(cfg)]
        if manifest.get("seed_hashes") != hashes:
            return False
    else:
        folds_ok = [check_fold(model_dir, k, cfg) for k in range(prep.n_folds)]
        if not all(folds_ok) or "content_hash" not in manifest:
            return False
        digests = [folder_digest(fold_dir(model_dir, k)) for k in range(prep.n_folds)]
        if manifest.get("fold_digests") != digests:
            return False
    for path in (model_dir / "oof.parquet", model_dir / "metrics.json"):
        if not path.is_file() or sha256_file_cached(path) != manifest.get(f"{path.stem}_sha256"):
            logger.warning("%s does not match the manifest (missing, truncated or altered); rebuilding it from "
                           "the folds", path)
            return False
    _record_execution_settings(cfg, model_dir)
    return True


@dataclass
class SavedMember:
    """A trained member loaded from its folder, ready to predict new essays."""

    config: MemberConfig
    model_dir: Path

    @classmethod
    def load(cls, model_dir: str | Path) -> SavedMember:
        model_dir = Path(model_dir)
        cfg = load_member_config(model_dir / "config.yaml")
        return cls(cfg, model_dir)

    @property
    def seeds(self) -> list[SavedMember]:
        """A seed average's single-seed members (models/<name>/seed<s>/, `seeds` order); [] for any other member.
        Their configs come from this one, so paths rewritten for a bundle reach them."""
        return [SavedMember(c, self.model_dir / seed_dir_name(c.seed)) for c in seed_members(self.config)] \
            if self.config.seeds is not None else []

    @property
    def fold_dirs(self) -> list[Path]:
        """Every fold model prediction loads (a seed average: every seed's, seed by seed)."""
        if self.config.seeds is not None:
            return [d for s in self.seeds for d in s.fold_dirs]
        n_folds = len((read_manifest(self.model_dir) or {}).get("fold_digests") or [])
        if n_folds:  # exactly the folds the content hash covers
            return [fold_dir(self.model_dir, k) for k in range(n_folds)]
        dirs = sorted(self.model_dir.glob("fold[0-9]*"), key=lambda p: int(p.name[4:]))
        dirs = [d for d in dirs if d.is_dir() and (d / "oof.parquet").is_file()]
        if not dirs:
            raise FileNotFoundError(f"{self.model_dir}: no trained folds")
        return dirs

    def verify(self) -> str:
        """Check every fold's files against its seal and the member's recorded content hash; return the hash.

        Raises CorruptArtefactError naming the file when anything prediction would load is missing, truncated
        or altered, or when the member was never completed (no content hash): such a member is never loaded.
        """
        manifest = read_manifest(self.model_dir) or {}
        recorded = manifest.get("content_hash")
        if not recorded:
            raise CorruptArtefactError(f"{self.model_dir}: the member is not complete (no content_hash in its "
                                       "manifest); finish training it (fb3stack train / run)")
        if self.config.seeds is not None:
            actual = seed_average_hash(config_hash(self.config), self.config.seeds, [s.verify() for s in self.seeds])
            if actual != recorded:
                raise CorruptArtefactError(f"{self.model_dir}: its config, seed list or seeds' models do not match "
                                           f"the content hash recorded when it was averaged ({recorded[:12]} vs "
                                           f"{actual[:12]})")
            return recorded
        n_folds = len(manifest.get("fold_digests") or [])
        dirs = [fold_dir(self.model_dir, k) for k in range(n_folds)]
        member = build_member(self.config)
        problems = [p for d in dirs for p in verify_folder(d, may_be_absent=PREDICT_UNUSED) + member.check_shared(d)]
        if problems:
            raise CorruptArtefactError(f"{self.config.name}: damaged model files, not loaded: "
                                       + "; ".join(problems[:5]) + ". Retrain it (fb3stack train / run).")
        actual = content_hash(config_hash(self.config), [folder_digest(d) for d in dirs])
        if actual != recorded:
            raise CorruptArtefactError(f"{self.model_dir}: its config or fold models do not match the content hash "
                                       f"recorded when it was trained ({recorded[:12]} vs {actual[:12]})")
        return recorded

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Mean over the fold models of (n, 6) predictions for `df` (text_id, full_text); a seed average: the mean
        over its seeds of each seed's."""
        if self.config.seeds is not None:
            return np.mean([s.predict(df) for s in self.seeds], axis=0)
        member = build_member(self.config)
        return np.asarray(member.predict_folds(df[[ID_COL, TEXT_COL]].reset_index(drop=True), self.fold_dirs))
