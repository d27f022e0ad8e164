"""`fb3stack bundle`: a self-contained folder for offline (Kaggle) prediction."""

from __future__ import annotations

import argparse

from fb3stack.cli.common import log_to_workspace
from fb3stack.submit.bundle import check_out, make_bundle
from fb3stack.workspace import Workspace, find_blend


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="copy models, blend, backbones and wheels into one offline folder")
    p.add_argument("--workspace", required=True, help="workspace with the fitted blend and its members")
    p.add_argument("--out", required=True, help="bundle folder to create (replaced if it exists)")
    p.add_argument("--blend", help="blend name (default: the only one)")
    p.add_argument("--no-wheels", action="store_true", help="skip the wheels (the target has fb3stack installed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ws = Workspace.existing(args.workspace)
    find_blend(ws.root, args.blend)  # a wrong name or --out writes nothing, not even a log
    check_out(ws.root, args.out)
    log_to_workspace(ws, "bundle")
    out = make_bundle(ws.root, args.out, args.blend, wheels=not args.no_wheels)
    print(f"bundle: {out}\n  pip install --no-index --find-links {out}/wheels fb3stack\n"
          f"  fb3stack predict --bundle {out} --test test.csv --out submission.csv")
    return 0
