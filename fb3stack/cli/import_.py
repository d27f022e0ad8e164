"""`fb3stack import --workspace W SRC...`: bring members trained in other workspaces (read-only is fine) into W."""

from __future__ import annotations

import argparse
import sys

from fb3stack.cli.common import writing
from fb3stack.status import human_bytes
from fb3stack.workspace import Workspace
from fb3stack.workspace_import import ImportRefused, import_members


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="bring members trained in other workspaces (same folds and data) into this "
                       "one: hard links where possible, else clones or copies")
    p.add_argument("sources", nargs="+", metavar="SRC", help="workspace folders to import from (read-only is fine)")
    p.add_argument("--workspace", required=True, help="the workspace to import into (created if missing)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="import only these members")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ws = Workspace.at(args.workspace)
    try:
        with writing(ws, "import"):
            done = import_members(ws.root, args.sources, args.only or None)
    except ImportRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for item in done:
        how = ", ".join(f"{n} {kind}" for kind, n in item.files.items() if n)
        print(f"{item.name}: " + ("already here (same model)" if item.already else
                                  f"imported from {item.source} ({how}; {human_bytes(item.bytes)})"))
    print(f"-> {ws.root}/models; blend them by name (the blend config's members:), e.g. "
          f"fb3stack blend BLEND.yaml --workspace {args.workspace}")
    return 0
