"""`fb3stack predict`: submission.csv from a workspace or an offline bundle, with no network."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fb3stack.cli.common import log_to_workspace, writing
from fb3stack.config import ConfigError
from fb3stack.submit.predict import PredictSources, check_inputs, predict_submission
from fb3stack.workspace import Workspace

OUT_HELP = ("where to write the submission (default: as `run` does, <workspace>/submission.csv; with --bundle, "
            "which is read-only, submission.csv in the current folder)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict a test CSV with the saved fold models and the fitted blend",
                       description="Predict a test CSV with every fold model of the blend's members and the fitted "
                       "blend; no network. Everything that needs no model (test file, sample submission ids, the "
                       "output folder, the blend and its members' files) is checked before any member predicts.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workspace", help="workspace with models/ and blends/")
    src.add_argument("--bundle", help="folder made by `fb3stack bundle` (never written to)")
    p.add_argument("--blend", help="blend name under workspace/blends (default: the only one)")
    p.add_argument("--test", required=True, help="test CSV (text_id, full_text)")
    p.add_argument("--out", help=OUT_HELP)
    p.add_argument("--sample-submission", help="sample_submission.csv whose row and column order to follow; its ids "
                   "must be the test file's")
    p.add_argument("--cache", help="folder for cached member predictions (default: <workspace>/predictions; with "
                   "--bundle, fb3stack-<uid>/predictions under the system's temporary folder)")
    p.add_argument("--member-test", action="append", default=[], metavar="NAME=FILE",
                   help="an outside member's predictions for this test file (text_id + six traits), made by the "
                   "same model (e.g. on a code competition's hidden test essays), instead of the file the blend "
                   "was fitted with; repeat per member")
    p.set_defaults(func=run)


def default_out(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return Path("submission.csv") if args.bundle else Path(args.workspace).expanduser() / "submission.csv"


def run(args: argparse.Namespace) -> int:
    # never reach for a hub at predict time; restored after, so a caller's later commands (an in-process
    # `main([...])` in a notebook or test) are not switched offline behind their back
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return _run(args)
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)


def member_tests(values: list[str]) -> dict[str, Path]:
    pairs = [value.partition("=") for value in values]
    bad = next((value for value, (name, eq, file) in zip(values, pairs) if not (name and eq and file)), None)
    if bad is not None:
        raise ConfigError(f"--member-test {bad!r}: expected NAME=FILE (an outside member of the blend = its test "
                          "predictions)")
    return {name: Path(file).expanduser() for name, _, file in pairs}


def _run(args: argparse.Namespace) -> int:
    out = default_out(args)
    given = member_tests(args.member_test)
    if args.bundle and args.blend:
        raise ConfigError("--blend applies to --workspace; a bundle holds one blend")
    if args.bundle:  # a bundle is not a workspace: nothing to lock, nothing written into it
        sources = PredictSources.from_bundle(args.bundle, args.cache)
        inputs = check_inputs(args.test, out, args.sample_submission)
        sub = predict_submission(sources, args.test, out, args.sample_submission, inputs, given)
    else:  # writes the workspace's prediction cache, so it waits for no other writer
        ws = Workspace.existing(args.workspace)
        sources = PredictSources.from_workspace(ws.root, args.blend, args.cache)
        inputs = check_inputs(args.test, out, args.sample_submission)  # a wrong file or name writes nothing
        with writing(ws, "predict"):
            log_to_workspace(ws, "predict")
            sub = predict_submission(sources, args.test, out, args.sample_submission, inputs, given)
    print(f"wrote {out.resolve()}: {len(sub)} essays")
    return 0
