"""`fb3stack predict`: submission.csv from a workspace or an offline bundle, with no network."""

from __future__ import annotations

import argparse
import os

from fb3stack.cli.common import writing
from fb3stack.submit.predict import PredictSources, predict_submission
from fb3stack.workspace import Workspace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict a test CSV with the saved fold models and the fitted blend")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workspace", help="workspace with models/ and blends/")
    src.add_argument("--bundle", help="folder made by `fb3stack bundle`")
    p.add_argument("--blend", help="blend name under workspace/blends (default: the only one)")
    p.add_argument("--test", required=True, help="test CSV (text_id, full_text)")
    p.add_argument("--out", default="submission.csv", help="where to write the submission")
    p.add_argument("--sample-submission", help="sample_submission.csv whose row and column order to follow")
    p.add_argument("--cache", help="folder for cached member predictions (bundle default: inside the bundle)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at predict time
    if args.bundle:  # a bundle is not a workspace: nothing to lock
        sources = PredictSources.from_bundle(args.bundle, args.cache)
        sub = predict_submission(sources, args.test, args.out, args.sample_submission)
    else:  # writes the workspace's prediction cache, so it waits for no other writer
        with writing(Workspace.at(args.workspace), "predict"):
            sources = PredictSources.from_workspace(args.workspace, args.blend)
            sub = predict_submission(sources, args.test, args.out, args.sample_submission)
    print(f"wrote {args.out}: {len(sub)} essays")
    return 0
