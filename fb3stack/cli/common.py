"""Options and set-up shared by the commands."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

from fb3stack import dist
from fb3stack.config import RunConfig, load_run_config, to_dict
from fb3stack.io import write_yaml
from fb3stack.workspace import Workspace, workspace_lock


def add_run_options(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    p.add_argument("config", nargs=None if config_required else "?", help="zoo YAML (data, folds, members, blend)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set folds.n_folds=4 or --set members.tfidf-ridge.alpha=3")
    p.add_argument("--data-dir", help="folder with train.csv/test.csv (default: $FB3STACK_DATA, then the config)")
    p.add_argument("--workspace", help="workspace folder (default: the config's 'workspace')")


def run_config(args: argparse.Namespace) -> RunConfig:
    return load_run_config(getattr(args, "config", None), getattr(args, "overrides", []))


def log_to_workspace(ws: Workspace, command: str) -> Path:
    """Mirror the console log into workspace/logs/<command>-<time>.log."""
    path = ws.logs_dir / f"{command}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return path


def save_resolved_config(ws: Workspace, cfg: RunConfig, name: str = "run_config.yaml") -> Path:
    path = ws.root / name
    write_yaml(path, to_dict(cfg))
    return path


@contextlib.contextmanager
def writing(ws: Workspace, command: str) -> Iterator[None]:
    """Hold the workspace lock for a command that writes to it (main process only under data parallelism:
    the helper processes of one `accelerate launch` are the same command)."""
    if not dist.is_main():
        yield
        return
    with workspace_lock(ws, command):
        yield


def text_table(rows: list[dict]) -> str:
    """Rows as a plain-text table (blank where a row has no value)."""
    import pandas as pd

    table = pd.DataFrame(rows, dtype=object)
    return table.where(table.notna(), "").to_string(index=False)
