"""`fb3stack bundle`: a self-contained folder for offline (Kaggle) prediction."""

from __future__ import annotations

import argparse

from fb3stack.cli.common import log_to_workspace
from fb3stack.config import ConfigError
from fb3stack.submit.bundle import check_out, make_bundle
from fb3stack.workspace import Workspace, find_blend


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="copy models, blend, backbones and wheels into one offline folder")
    p.add_argument("--workspace", required=True, help="workspace with the fitted blend and its members")
    p.add_argument("--out", help="bundle folder to create (replaced if it exists); not needed with --dry-run")
    p.add_argument("--blend", help="blend name (default: the only one)")
    p.add_argument("--no-wheels", action="store_true", help="skip the wheels (the target has fb3stack installed)")
    p.add_argument("--dry-run", action="store_true", help="check the blend and its members and print what the bundle "
                   "would hold (sizes per member and fold, backbones, total); write nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ws = Workspace.existing(args.workspace)
    find_blend(ws.root, args.blend)  # a wrong name or --out writes nothing, not even a log
    if args.dry_run:
        return dry_run(args)
    if not args.out:
        raise ConfigError("--out is required (or --dry-run)")
    check_out(ws.root, args.out)
    log_to_workspace(ws, "bundle")
    out = make_bundle(ws.root, args.out, args.blend, wheels=not args.no_wheels)
    print(f"bundle: {out}\n  pip install --no-index --find-links {out}/wheels fb3stack\n"
          f"  fb3stack predict --bundle {out} --test test.csv --out submission.csv")
    return 0


def dry_run(args: argparse.Namespace) -> int:
    """The bundle's contents measured on disk (every member verified as `bundle` verifies it)."""
    from fb3stack.cli.common import text_table
    from fb3stack.status import human_bytes
    from fb3stack.submit.bundle import BACKBONE_SKIP, copied_bytes, plan_bundle
    from fb3stack.workspace import PREDICT_UNUSED

    plan = plan_bundle(args.workspace, args.blend)
    rows, total = [], 0
    for name in plan.model_members:
        folds = [copied_bytes(f, tuple(PREDICT_UNUSED)) for f in plan.fold_dirs(name)]
        total += sum(folds)
        rows.append({"member": name, "kind": plan.configs[name].kind, "folds": len(folds),
                     "per fold": human_bytes(sum(folds) / len(folds)), "member total": human_bytes(sum(folds))})
    rows += [{"member": f"backbone {spec}", "member total": human_bytes(copied_bytes(folder, BACKBONE_SKIP))}
             for spec, folder in plan.backbones.items()]
    rows += [{"member": name, "kind": "test predictions", "member total": human_bytes(path.stat().st_size)}
             for name, path in plan.external.items()]
    total += sum(path.stat().st_size for path in plan.external.values())
    total += sum(copied_bytes(folder, BACKBONE_SKIP) for folder in plan.backbones.values())
    blend = copied_bytes(plan.sources.blend_dir)
    rows.append({"member": f"blend {plan.sources.blend_dir.name}", "member total": human_bytes(blend)})
    print(text_table(rows))
    print(f"bundle total: {human_bytes(total + blend)}" + ("" if args.no_wheels else " plus the wheels (a few MB)"))
    return 0
