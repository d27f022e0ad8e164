"""Benchmark the second layer on the 23 public FB3 OOFs (sunpnwt12): nested-CV MCRMSE and wall time per method.

    python benchmarks/bench_blend.py [--data-dir ../shared/data] [--repeats 1] [--split kfold|file]

Runs every method of configs/blends/sunpnwt12.yaml plus a LightGBM stacker with essay length and member
selection variants, prints the table (members summarised by the best single one) next to the reference figures
measured with plain scripts, each row's gain over the plain mean and the best member with its paired-bootstrap
interval, the largest leave-one-member-out entries, and saves it to benchmarks/results/blend_sunpnwt12.csv.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fb3stack.blend.config import MethodConfig, load_blend_config
from fb3stack.blend.run import run_blend

REPO = Path(__file__).resolve().parents[1]
# 5-fold nested CV with plain scripts (issue 5); methods named as in configs/blends/sunpnwt12.yaml
REFERENCE = {"mean": 0.44581, "best member": 0.45039, "slsqp": 0.44608, "caruana": 0.44603, "ridgecv": 0.44588,
             "nelder-mead": 0.44689}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="folder with fb3/ and extras/")
    p.add_argument("--split", choices=["kfold", "file"], default="kfold",
                   help="outer folds: seeded KFold, or the public 4-fold split file")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "blend_sunpnwt12.csv"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data_dir)

    cfg = load_blend_config(REPO / "configs" / "blends" / "sunpnwt12.yaml")
    cfg.members = [str(data / "extras" / "oof_sunpnwt12" / "*_oof_df.csv")]
    cfg.outer.split, cfg.outer.n_folds, cfg.outer.repeats, cfg.outer.seed = (
        args.split, args.n_folds, args.repeats, args.seed)
    cfg.outer.file = str(data / "extras" / "folds_yomura_4fold_seed42_multilabelstrat.csv")
    cfg.methods += [
        MethodConfig("ridgecv", "ridge", {"alphas": [1.0, 10.0, 100.0, 1000.0], "prior": "none"}),
        MethodConfig("lgbm-summary+len", "lgbm", {"n_estimators": 100}, meta=True),
    ]
    cfg.meta_features = ["n_words"]

    t0 = time.perf_counter()
    res = run_blend(cfg, None, data / "fb3", write=False)
    total = time.perf_counter() - t0
    sel = load_blend_config(REPO / "configs" / "blends" / "sunpnwt12.yaml")
    sel.members, sel.outer = cfg.members, cfg.outer
    sel.selection.enabled = True
    sel.methods = [MethodConfig("select+mean", "mean"), MethodConfig("select+slsqp-shrink", "scipy", {"shrink": 0.03})]
    t1 = time.perf_counter()
    res_sel = run_blend(sel, None, data / "fb3", write=False)
    total_sel = time.perf_counter() - t1

    members = res.table[res.table["kind"] == "member"]
    best = members.sort_values("nested").iloc[[0]].assign(name=lambda d: "best member: " + d["name"])
    methods = res.table[res.table["kind"] != "member"]
    table = pd.concat([best, methods, res_sel.table[res_sel.table["kind"] != "member"]], ignore_index=True)
    if "vs_mean" not in table:  # uncertainty.bootstrap: 0
        table["vs_mean"] = table["nested"] - float(methods.set_index("name").loc["mean", "nested"])
    table["reference"] = [REFERENCE.get(n.split(":")[0], np.nan) for n in table["name"]]
    cols = ["name", "kind", "in_sample", "nested", "nested_std", "vs_mean", "vs_mean_lo", "vs_mean_hi", "vs_best",
            "vs_best_lo", "vs_best_hi", "reference", "seconds"]
    print(f"{len(members)} public OOFs, outer folds: {res.outer}")
    print(table[[c for c in cols if c in table]].to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    if "loo_nested" in res.table:
        loo = members.sort_values("loo_delta", ascending=False)[["name", "nested", "loo_nested", "loo_delta"]]
        print(f"leave one member out of {res.chosen} (loo_delta > 0: the member helps), largest first:")
        print(loo.head(8).to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    print(f"whole table (members + {len(methods)} methods, in-sample + nested): {total:.2f} s; "
          f"selection variants: {total_sel:.2f} s; chosen: {res.chosen}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.assign(outer=res.outer, total_seconds=round(total, 2)).to_csv(out, index=False)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
