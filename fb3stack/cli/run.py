"""`fb3stack run <zoo.yaml>`: the main job — data check, folds, every member, blend, submission, report."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from fb3stack.base.executors import RayOptions, run_local, run_ray
from fb3stack.base.runner import resolve_members
from fb3stack.cli.common import add_run_options, log_to_workspace, run_config, save_resolved_config
from fb3stack.config import ConfigError, RunConfig, from_dict
from fb3stack.data import load_test, resolve_data_dir
from fb3stack.submit.predict import PredictSources, predict_submission
from fb3stack.submit.report import run_summary, write_report
from fb3stack.workspace import prepare

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole job: check data, folds, train the zoo, blend, predict, report")
    add_run_options(p, config_required=True)
    p.add_argument("--test", help="test CSV to predict (default: the data folder's test.csv)")
    p.add_argument("--out", help="submission path (default: <workspace>/submission.csv)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address")
    p.set_defaults(func=run)


def zoo_blend_config(cfg: RunConfig):
    """The zoo's `blend`: a blend YAML path (relative to the zoo file) or an inline mapping."""
    from fb3stack.blend.config import BlendConfig, load_blend_config

    base = Path(cfg.source).parent if cfg.source else Path.cwd()
    if isinstance(cfg.blend, str):
        path = Path(cfg.blend)
        return load_blend_config(path if path.is_absolute() or path.exists() else base / path)
    if not isinstance(cfg.blend, dict):
        raise ConfigError(f"{cfg.source}: 'blend' must be a blend YAML path or a mapping")
    blend = from_dict(BlendConfig, {k: v for k, v in cfg.blend.items() if k != "source"}, where=f"{cfg.source}:blend")
    blend.source = cfg.source
    return blend


def run(args: argparse.Namespace) -> int:
    from fb3stack.blend.run import run_blend

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cfg = run_config(args)
    members = resolve_members(cfg)
    if cfg.blend is None:
        raise SystemExit(f"{args.config}: the zoo config needs a 'blend' (a blend YAML path or mapping)")
    prep = prepare(cfg, args.data_dir, args.workspace)
    ws = prep.workspace
    log_path = log_to_workspace(ws, "run")
    save_resolved_config(ws, cfg)
    data_dir = resolve_data_dir(args.data_dir, cfg.data.data_dir)
    test_path = Path(args.test) if args.test else data_dir / cfg.data.test_file
    load_test(test_path)  # refuse a bad test file before hours of training, not after
    timings["data+folds"] = time.perf_counter() - t0

    t = time.perf_counter()
    if args.executor == "ray":
        run_ray(members, prep, options=RayOptions(address=args.ray_address))
    else:
        run_local(members, prep)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    blend_cfg = zoo_blend_config(cfg)
    result = run_blend(blend_cfg, ws.root, data_dir)
    blend_dir = result.blend_dir
    logger.info("blend %s: chosen %s", blend_cfg.name, result.chosen)
    timings["blend"] = time.perf_counter() - t

    t = time.perf_counter()
    out = Path(args.out) if args.out else ws.root / "submission.csv"
    sample = data_dir / cfg.data.sample_submission_file
    predict_submission(PredictSources.from_workspace(ws.root, blend_dir.name), test_path, out,
                       sample if sample.is_file() else None)
    timings["predict"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    report = write_report(ws, blend_dir, out, timings, data_dir=data_dir)
    print(run_summary(ws, out, report, log_path, blend_dir, timings))
    return 0
