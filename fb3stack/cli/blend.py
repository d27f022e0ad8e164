"""`fb3stack blend <blend.yaml>`: score blending methods by nested CV and save the best to workspace/blends/."""

from __future__ import annotations

import argparse
from pathlib import Path

from fb3stack.blend.config import load_blend_config
from fb3stack.blend.run import run_blend
from fb3stack.cli.common import log_to_workspace, writing
from fb3stack.config import config_dir, glob_paths, load_run_config, load_yaml
from fb3stack.workspace import Workspace, load_training_data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("blend", help="blend member OOFs; nested-CV table of methods; saves the best blend")
    p.add_argument("config", help="blend YAML (or a zoo YAML with a 'blend' section)")
    p.add_argument("--workspace", default="workspace", help="workspace folder with models/<name>/ (default: workspace)")
    p.add_argument("--data-dir", help="folder with train.csv (default: $FB3STACK_DATA, then the config's data_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a blend config value, e.g. --set outer.repeats=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_blend_config(args.config, args.overrides)
    labels = None
    if "blend" in load_yaml(args.config):  # a zoo YAML: read the labels with the zoo's data settings, as `run` does
        _, labels = load_training_data(load_run_config(args.config).data, args.data_dir)
    if not Path(args.workspace).expanduser().is_dir():
        names = [spec for spec in cfg.members if isinstance(spec, str) and not glob_paths(spec, config_dir(cfg.source))]
        if names:  # workspace members in a workspace that is not there: refused before the folder is made
            Workspace.existing(args.workspace)
    ws = Workspace.at(args.workspace)
    with writing(ws, "blend"):
        log_to_workspace(ws, "blend")
        res = run_blend(cfg, ws.root, args.data_dir, labels=labels)
    cols = ["name", "kind", "in_sample", "nested", "nested_std", "seconds"]
    print(res.table[cols].to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    score = "" if res.honest is None else f"; honest MCRMSE {res.honest:.4f} (selected-by-inner-CV)"
    print(f"chosen: {res.chosen}{score}  ->  {res.blend_dir}")
    return 0
