"""`fb3stack check-data`: validate train/test/sample_submission and print a summary.

Unlike the other commands, which stop at a file's first problem, it lists every problem of every file in one
go (up to data.MAX_LISTED per file), so a file with four bad cells takes one run to fix, not four.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fb3stack.cli.common import add_run_options, run_config
from fb3stack.constants import ID_COL, TARGETS
from fb3stack.data import (
    MAX_LISTED,
    DataError,
    check_same_ids,
    check_sample_submission,
    check_test,
    check_train,
    resolve_data_dir,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="validate the FB3 files; lists every bad cell by file, row and column")
    add_run_options(p)
    p.set_defaults(func=run)


def report(path: Path, problems: list[DataError]) -> None:
    print(f"error: {path}: {len(problems)} problem(s)", file=sys.stderr)
    for err in problems[:MAX_LISTED]:
        print(f"  {err}", file=sys.stderr)
    if len(problems) > MAX_LISTED:
        print(f"  ... and {len(problems) - MAX_LISTED} more", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    data_dir = resolve_data_dir(args.data_dir, cfg.data.data_dir)
    bad = 0
    train_path = data_dir / cfg.data.train_file
    train, problems = check_train(train_path, cfg.data.on_bad_score)
    if problems:
        report(train_path, problems)
        bad += 1
    else:
        print(f"{train_path}: {len(train)} essays, OK")
        print(train[list(TARGETS)].describe().loc[["mean", "std", "min", "max"]].round(3).to_string())
        lengths = train["full_text"].str.split().str.len()
        print(f"words per essay: median {int(lengths.median())}, 95th pct {int(lengths.quantile(0.95))}, "
              f"max {int(lengths.max())}")
    test = None
    test_path = data_dir / cfg.data.test_file
    if not test_path.exists():
        print(f"{test_path}: not checked: no such file (`run` needs it, or --test)")
    else:
        test, problems = check_test(test_path)
        if problems:
            report(test_path, problems)
            bad, test = bad + 1, None
        else:
            print(f"{test_path}: {len(test)} essays, OK")
            if train is not None:
                overlap = set(test[ID_COL]) & set(train[ID_COL])
                if overlap:
                    print(f"warning: {len(overlap)} test ids also appear in train, e.g. {sorted(overlap)[:3]}")
    sample_path = data_dir / cfg.data.sample_submission_file
    if not sample_path.exists():
        print(f"{sample_path}: not checked: no such file (the submission then follows test.csv's order)")
    else:
        sample, problems = check_sample_submission(sample_path)
        if not problems and test is not None:
            try:
                check_same_ids(sample, test, sample_path, test_path)
            except DataError as err:
                problems = [err]
        if problems:
            report(sample_path, problems)
            bad += 1
        else:
            also = "" if test is not None else " (its ids not compared: test.csv not checked)"
            print(f"{sample_path}: {len(sample)} rows, OK{also}")
    return 2 if bad else 0


