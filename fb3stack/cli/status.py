"""`fb3stack status --workspace W`: members x folds, blends, cached test predictions, disk use (read-only).

A rich table on a terminal, aligned plain text when piped, JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fb3stack.status import collect, human_bytes

STYLE = {"done": "green", "fresh": "green", "ok": "green", "stale": "red", "missing": "yellow", "partial": "yellow",
         "extra": "magenta", "unused": "magenta", "unknown": "yellow", "for another model (unused)": "red"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what a workspace holds: members x folds (done/missing/stale and why), "
                       "blends, cached predictions, disk use")
    p.add_argument("config", nargs="?", help="zoo YAML to compare with (default: the workspace's run_config.yaml)")
    p.add_argument("--workspace", default="workspace", help="workspace folder (default: workspace)")
    p.add_argument("--data-dir", help="folder with train.csv/test.csv (default: $FB3STACK_DATA, then the config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as given to run/train; without a zoo YAML it applies to the workspace's "
                   "run_config.yaml (e.g. --set members.tfidf-ridge.alpha=3: would that retrain?)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fb3stack.config import load_run_config

    cfg = load_run_config(args.config, args.overrides) if args.config else None
    status = collect(args.workspace, cfg, args.data_dir, overrides=args.overrides)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    elif sys.stdout.isatty():
        render_rich(status)
    else:
        print(render_plain(status))
    return 0


def tables(status: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the rich and plain renderers."""
    n = status.get("n_folds") or max((len(m["folds"]) for m in status["members"]), default=0)
    out = []
    # a seed average: its row (the mean's score), then one row per seed, each with its own score
    member_rows = [[m["member"] if row is m else f"  {row['member']}", (m["kind"] or "") if row is m else "seed",
                    *(row["folds"] + [""] * (n - len(row["folds"]))), row["state"],
                    "" if row["mcrmse"] is None else f"{row['mcrmse']:.4f}", "; ".join(row["reasons"])]
                   for m in status["members"] for row in [m, *m.get("seeds", [])]]
    out.append(("Members x folds", ["member", "kind", *[f"fold{k}" for k in range(n)], "state", "OOF MCRMSE", "why"],
                member_rows))
    # one score per blend, the one report and run show: the honest estimate, with the table row it comes from
    blend_rows = [[b["blend"], b["method"] or "", "" if b["mcrmse"] is None else f"{b['mcrmse']:.4f}",
                   b["mcrmse_from"] or "", b["state"], "; ".join(b["reasons"])] for b in status["blends"]]
    out.append(("Blends", ["blend", "method", "honest MCRMSE", "scored as", "state", "why"], blend_rows))
    pred_rows = [[p["test_hash"], p["member"], {None: "?", True: "yes", False: "no"}[p["current_test"]], p["state"],
                  human_bytes(p["bytes"])] for p in status["predictions"]]
    out.append(("Cached test predictions", ["test hash", "member", "current test.csv", "state", "size"], pred_rows))
    disk_rows = [[d["path"], human_bytes(d["bytes"])] for d in status["disk"]]
    disk_rows.append(["total", human_bytes(status["disk_total"])])
    out.append(("Disk use", ["path", "size"], disk_rows))
    return out


def _header(status: dict[str, Any]) -> list[str]:
    cfg = status["config"] or "none"
    lines = [f"workspace {status['workspace']}  (compared with {cfg}, from {status['config_from'] or '-'})"]
    lines += [f"! {p}" for p in status["problems"]]
    lines.append(", ".join(f"{k} {'yes' if v else 'no'}" for k, v in status["files"].items()))
    return lines


def render_plain(status: dict[str, Any]) -> str:
    parts = _header(status)
    for title, header, rows in tables(status):
        parts += ["", f"{title}:"]
        if not rows:
            parts.append("  (none)")
            continue
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        widths[-1] = 0  # the last column (reasons, sizes) is not padded
        for row in [header, *rows]:
            parts.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(parts)


def render_rich(status: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        print(render_plain(status))
        return
    console = Console()
    for line in _header(status):
        console.print(line, style="bold red" if line.startswith("!") else None, markup=False, highlight=False)
    for title, header, rows in tables(status):
        table = Table(title=title, title_justify="left", show_lines=False)
        for h in header:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*[f"[{STYLE[c]}]{c}[/]" if c in STYLE else escape(str(c)) for c in row])
        if not rows:
            table.add_row(*(["(none)"] + [""] * (len(header) - 1)))
        console.print(table)
