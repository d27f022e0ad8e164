"""`fb3stack check-data`: validate train/test/sample_submission and print a summary."""

from __future__ import annotations

import argparse

from fb3stack.cli.common import add_run_options, run_config
from fb3stack.constants import TARGETS
from fb3stack.data import load_sample_submission, load_test, resolve_data_dir
from fb3stack.workspace import load_training_data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="validate the FB3 files; errors name file, row and column")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    root, train = load_training_data(cfg.data, args.data_dir)
    print(f"{root / cfg.data.train_file}: {len(train)} essays, OK")
    print(train[list(TARGETS)].describe().loc[["mean", "std", "min", "max"]].round(3).to_string())
    lengths = train["full_text"].str.split().str.len()
    print(f"words per essay: median {int(lengths.median())}, 95th pct {int(lengths.quantile(0.95))}, "
          f"max {int(lengths.max())}")
    data_dir = resolve_data_dir(args.data_dir, cfg.data.data_dir)
    test_path = data_dir / cfg.data.test_file
    if test_path.exists():
        test = load_test(test_path)
        print(f"{test_path}: {len(test)} essays, OK")
        overlap = set(test["text_id"]) & set(train["text_id"])
        if overlap:
            print(f"warning: {len(overlap)} test ids also appear in train, e.g. {sorted(overlap)[:3]}")
    sample_path = data_dir / cfg.data.sample_submission_file
    if sample_path.exists():
        sample = load_sample_submission(sample_path)
        print(f"{sample_path}: {len(sample)} rows, OK")
    return 0
