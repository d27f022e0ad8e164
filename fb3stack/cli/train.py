"""`fb3stack train <model.yaml|zoo.yaml>`: train zoo members on the shared folds, resuming what is done."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fb3stack import dist
from fb3stack.base.executors import RayOptions, run_local, run_ray
from fb3stack.base.runner import resolve_members
from fb3stack.cli.common import add_run_options, log_to_workspace, save_resolved_config, writing
from fb3stack.config import ConfigError, RunConfig, load_run_config, load_yaml
from fb3stack.workspace import Workspace, load_training_data, prepare

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model YAML or every member of a zoo YAML, fold by fold")
    add_run_options(p, config_required=True)
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="train only these members")
    p.add_argument("--folds", help="comma-separated folds to train (default: all); finalises when all are done")
    p.add_argument("--force-folds", action="store_true", help="rewrite folds.csv if its settings changed")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one job after another in this process; ray: (member, fold) jobs in parallel")
    p.add_argument("--ray-address", help="existing Ray cluster ('auto', 'ray://host:10001'); default: local Ray")
    p.add_argument("--ray-gpus", type=float, help="GPUs per job (fractions allowed; default 1 for transformers "
                   "when the cluster has GPUs, else 0)")
    p.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per job")
    p.add_argument("--max-retries", type=int, default=2, help="Ray: reruns of a job whose worker died")
    p.add_argument("--dry-run", action="store_true", help="check every member's config and backbone, show each "
                   "model's size, max_len and autocast; train nothing, read no data, download nothing")
    p.set_defaults(func=run)


def load_train_config(path: str, overrides: list[str]) -> RunConfig:
    """A zoo YAML is used as is; a single model YAML becomes a one-member zoo with default data and folds."""
    raw = load_yaml(path)
    if "kind" in raw and "members" not in raw:
        run_keys = ("data", "folds", "workspace")
        is_run = [o.split("=", 1)[0].split(".")[0] in run_keys for o in overrides]
        cfg = load_run_config(None, [o for o, r in zip(overrides, is_run) if r])
        cfg.members = [str(Path(path).resolve())]
        cfg.member_overrides = {"*": [o for o, r in zip(overrides, is_run) if not r]}
        return cfg
    return load_run_config(path, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.overrides)
    members = resolve_members(cfg)
    if args.only:
        unknown = set(args.only) - {m.name for m in members}
        if unknown:
            raise ConfigError(f"--only names unknown member(s) {sorted(unknown)}; have {[m.name for m in members]}")
        members = [m for m in members if m.name in args.only]
    if args.dry_run:
        return dry_run(members)
    loaded = load_training_data(cfg.data, args.data_dir)  # a wrong data folder or file creates no workspace
    dist.init()  # no-op unless launched by accelerate/torchrun
    with writing(Workspace.at(args.workspace or cfg.workspace), "train"):
        return _train(args, cfg, members, loaded)


def _train(args: argparse.Namespace, cfg: RunConfig, members: list, loaded: tuple) -> int:
    with dist.main_first():  # only the main process writes folds.csv; the others read it
        prep = prepare(cfg, args.data_dir, args.workspace, force_folds=args.force_folds, loaded=loaded)
    if dist.is_main():
        log_to_workspace(prep.workspace, "train")
        save_resolved_config(prep.workspace, cfg)
    folds = [int(k) for k in args.folds.split(",")] if args.folds else None
    if args.executor == "ray" and dist.is_distributed():
        raise ConfigError("--executor ray schedules whole jobs; launch it once, not under accelerate/torchrun")
    if args.executor == "ray":
        options = RayOptions(args.ray_address, args.ray_gpus, args.ray_cpus, args.max_retries)
        results = run_ray(members, prep, folds, options)
    else:
        results = run_local(members, prep, folds)
    for name, metrics in results.items():
        print(f"{name}: OOF MCRMSE {metrics['mcrmse']:.4f}  ->  {prep.workspace.model_dir(name)}")
    return 0


def dry_run(members: list) -> int:
    """Build every member (transformers on the meta device) and print one table; exit 2 on the first error."""
    import pandas as pd

    from fb3stack.base.runner import build_member

    rows = []
    for cfg in members:
        try:
            rows.append(build_member(cfg).describe())
        except (ValueError, OSError) as err:  # ConfigError is a ValueError
            print(f"{cfg.name}: {err}")
            return 2
    table = pd.DataFrame(rows, dtype=object)
    print(table.where(table.notna(), "").to_string(index=False))
    print("amp auto: bf16 on GPUs with native bf16 (compute capability >= 8.0), fp16 + GradScaler on older GPUs, "
          "fp32 on CPU; 'here' is what this machine would use")
    return 0
