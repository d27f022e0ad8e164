"""`fb3stack report --workspace W`: rebuild report.md and report.html from what the workspace holds now."""

from __future__ import annotations

import argparse
from pathlib import Path

from fb3stack.cli.common import log_to_workspace
from fb3stack.report.gather import gather, headline
from fb3stack.workspace import Workspace, find_blend


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.md + report.html (figures embedded) from a workspace")
    p.add_argument("--workspace", default="workspace", help="workspace folder (default: workspace)")
    p.add_argument("--data-dir", help="folder with train.csv, for the residual figures (default: $FB3STACK_DATA, "
                   "then the workspace's run_config.yaml)")
    p.add_argument("--blend", help="which blends/<name> to report (default: the newest)")
    p.add_argument("--out", help="report.html path (default: <workspace>/report.html; report.md goes beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fb3stack.submit.report import write_report

    ws = Workspace.existing(args.workspace)
    root = ws.root
    blend_dir = find_blend(root, args.blend, newest=True)
    log_to_workspace(ws, "report")
    submission = root / "submission.csv"
    out = Path(args.out).with_suffix(".md") if args.out else None
    md = write_report(ws, blend_dir, submission if submission.is_file() else None, {}, out=out,
                      data_dir=args.data_dir)
    html_path = md.with_suffix(".html")
    print(f"report: {html_path if html_path.is_file() else md}\n"
          f"{headline(gather(root, blend_dir=blend_dir, with_labels=False))}")
    return 0 if html_path.is_file() else 1
