"""`fb3stack folds`: make (or import) the workspace's shared folds.csv once."""

from __future__ import annotations

import argparse
from pathlib import Path

from fb3stack.cli.common import add_run_options, log_to_workspace, run_config, writing
from fb3stack.config import config_dir, resolve_path
from fb3stack.data import DataError
from fb3stack.folds import fold_summary
from fb3stack.workspace import Workspace, ensure_folds, load_training_data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("folds", help="write workspace/folds.csv (MultilabelStratifiedKFold or an imported file)")
    add_run_options(p)
    p.add_argument("--n-folds", type=int, help="number of folds (default: config folds.n_folds)")
    p.add_argument("--seed", type=int, help="split seed (default: config folds.seed)")
    p.add_argument("--from", dest="from_file", help="import an external folds CSV (text_id, fold)")
    p.add_argument("--force", action="store_true", help="rewrite an existing folds.csv made with other settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if args.n_folds is not None:
        cfg.folds.n_folds = args.n_folds
    if args.seed is not None:
        cfg.folds.seed = args.seed
    if args.from_file:  # a command-line path: relative to the current folder, not the zoo YAML's
        cfg.folds.file = str(Path(args.from_file).expanduser().resolve())
    _, train = load_training_data(cfg.data, args.data_dir)  # a wrong data folder or file creates no workspace
    if cfg.folds.file and not resolve_path(cfg.folds.file, config_dir(cfg.source)).is_file():
        raise DataError("folds file not found (folds.file / --from)", file=cfg.folds.file)
    ws = Workspace.at(args.workspace or cfg.workspace)
    with writing(ws, "folds"):
        log_to_workspace(ws, "folds")
        folds = ensure_folds(ws, train, cfg.folds, force=args.force, base_dir=config_dir(cfg.source))
    print(f"{ws.folds_path}: {len(folds)} essays in {folds['fold'].nunique()} folds")
    print(fold_summary(train, folds).round(3).to_string())
    return 0
