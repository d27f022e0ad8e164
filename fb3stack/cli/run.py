"""`fb3stack run <zoo.yaml>`: the main job — data check, folds, every member, blend, submission, report.

Everything that can be checked is checked before the first model trains, so a mistake costs seconds, not
the hours of the members before it: the zoo and every member config, every backbone, the blend config with
every method constructed, the training data (with the run's own data settings, which the blend then reuses
rather than reading train.csv its own way), the test file and the sample submission.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fb3stack.base.executors import RayOptions, run_local, run_ray
from fb3stack.base.member import MemberConfig
from fb3stack.base.runner import check_backbones, resolve_members
from fb3stack.cli.common import add_run_options, log_to_workspace, run_config, save_resolved_config, writing
from fb3stack.config import ConfigError, RunConfig, config_dir, resolve_path
from fb3stack.data import check_same_ids, load_sample_submission, load_test
from fb3stack.io import check_writable
from fb3stack.submit.predict import PredictSources, predict_submission
from fb3stack.submit.report import run_summary, write_report
from fb3stack.workspace import Workspace, imported_members, load_training_data, prepare

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole job: check data, folds, train the zoo, blend, predict, report")
    add_run_options(p, config_required=True)
    p.add_argument("--test", help="test CSV to predict (default: the data folder's test.csv)")
    p.add_argument("--out", help="submission path (default: <workspace>/submission.csv)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address")
    p.set_defaults(func=run)


@dataclass
class Checked:
    """Everything `run` needs, validated before anything is written or trained."""

    members: list[MemberConfig]
    blend: object  # BlendConfig
    data_dir: Path
    train: pd.DataFrame
    test_path: Path
    sample_path: Path | None


def check_blend_members(blend_cfg, members: list[MemberConfig], where: str, imported: frozenset[str] = frozenset()
                        ) -> None:
    """The blend's members are zoo members, members imported into the workspace (`fb3stack import`) or outside
    models' OOF + test files; `run` ends by predicting, so an OOF file without test predictions is refused here,
    before anything trains (`fb3stack blend` scores one)."""
    names = {m.name for m in members} | imported
    for i, spec in enumerate(blend_cfg.members):
        if not isinstance(spec, str):  # an outside model's {oof, test} files
            for key, file in (("oof", spec.oof), ("test", spec.test)):
                if file is not None and not resolve_path(file, config_dir(blend_cfg.source)).is_file():
                    raise ConfigError(f"{where}members[{i}].{key}: {file!r} is not a file")
            if spec.test is not None:
                continue
        elif spec in names:
            continue
        elif not any(ch in spec for ch in "*?[") and not resolve_path(spec, config_dir(blend_cfg.source)).is_file():
            raise ConfigError(f"{where}members[{i}]: {spec!r} is not a member of this zoo {sorted(names)} nor an "
                              "OOF file")
        raise ConfigError(f"{where}members[{i}]: {getattr(spec, 'oof', spec)!r} is an OOF file without test "
                          "predictions, and `run` ends by predicting the test essays: give it as {oof: <file>, test: "
                          "<its test predictions>}, or score it with `fb3stack blend`, which does not predict")


def check_zoo_blend(cfg: RunConfig, members: list[MemberConfig], workspace: str | Path):  # -> BlendConfig
    """The zoo's blend config with every method constructed and every member known (a zoo member, one imported
    into the workspace, or an OOF file); ConfigError naming the file and key otherwise."""
    from fb3stack.blend.config import zoo_blend_config
    from fb3stack.blend.run import build_methods

    blend_cfg = zoo_blend_config(cfg)
    where = f"{blend_cfg.source}:" if isinstance(cfg.blend, str) else f"{cfg.source}:blend."
    build_methods(blend_cfg, where)
    check_blend_members(blend_cfg, members, where, frozenset(imported_members(workspace)))
    return blend_cfg


def validate(args: argparse.Namespace, cfg: RunConfig) -> Checked:
    """Configs first (seconds), then the data files; raises ConfigError / DataError naming what is wrong."""
    members = resolve_members(cfg)
    if cfg.blend is None:
        raise ConfigError(f"{args.config}: the zoo config needs a 'blend' (a blend YAML path or mapping)")
    check_backbones(members)
    blend_cfg = check_zoo_blend(cfg, members, args.workspace or cfg.workspace)
    data_dir, train = load_training_data(cfg.data, args.data_dir)
    test_path = Path(args.test) if args.test else data_dir / cfg.data.test_file
    test = load_test(test_path)
    sample = data_dir / cfg.data.sample_submission_file
    sample_path = sample if sample.is_file() else None
    if sample_path is not None:
        check_same_ids(load_sample_submission(sample_path), test, sample_path, test_path)
    if args.out:
        check_writable(args.out)
    logger.info("checked: %d members, blend %s with %d methods, %d training essays, %d test essays",
                len(members), blend_cfg.name, len(blend_cfg.methods), len(train), len(test))
    return Checked(members, blend_cfg, data_dir, train, test_path, sample_path)


def run(args: argparse.Namespace) -> int:
    from fb3stack.blend.run import run_blend

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cfg = run_config(args)
    checked = validate(args, cfg)
    timings["checks"] = time.perf_counter() - t0
    ws = Workspace.at(args.workspace or cfg.workspace)
    with writing(ws, "run"):
        t = time.perf_counter()
        prep = prepare(cfg, workspace=ws.root, loaded=(checked.data_dir, checked.train))
        log_path = log_to_workspace(ws, "run")
        cfg.data.data_dir = str(checked.data_dir)  # recorded, so `status` and `report` find the data later
        save_resolved_config(ws, cfg)
        timings["data+folds"] = time.perf_counter() - t

        t = time.perf_counter()
        if args.executor == "ray":
            run_ray(checked.members, prep, options=RayOptions(address=args.ray_address))
        else:
            run_local(checked.members, prep)
        timings["train"] = time.perf_counter() - t

        t = time.perf_counter()
        result = run_blend(checked.blend, ws.root, checked.data_dir, labels=prep.train)
        blend_dir = result.blend_dir
        logger.info("blend %s: chosen %s, honest MCRMSE %s (selected-by-inner-CV)", checked.blend.name,
                    result.chosen, "n/a" if result.honest is None else f"{result.honest:.4f}")
        timings["blend"] = time.perf_counter() - t

        t = time.perf_counter()
        out = Path(args.out) if args.out else ws.root / "submission.csv"
        predict_submission(PredictSources.from_workspace(ws.root, blend_dir.name), checked.test_path, out,
                           checked.sample_path)
        timings["predict"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        report = write_report(ws, blend_dir, out, timings, data_dir=checked.data_dir)
    print(run_summary(ws, out, report, log_path, blend_dir, timings))
    return 0
