"""The frozen prefix computed once vs the frozen layers run in every step, side by side in one run.

The shipped CPU fine-tune (configs/models/minilm-finetune.yaml: real all-MiniLM-L6-v2, bf16 where native, the first
`freeze_layers` layers frozen) trains one fold on the same essays twice, with `prefix_cache` on and off (same
seed, same batches), then predicts new essays with the fold model used as 5 folds, both ways. Reported per
variant: training steps/s (the fit's wall time, prefix pass and evaluation included, and the steps alone), the
per-evaluation losses and the predictions' largest difference (the cached path must agree to storage rounding),
and prediction seconds for the 5 folds (one prefix pass for all of them with the cache).

    python benchmarks/bench_prefix_cache.py                       # 320 train / 160 valid / 200 new essays, 1 epoch
    python benchmarks/bench_prefix_cache.py --freeze-layers 1 --train 640

Results: benchmarks/results/prefix_cache.csv (with the machine and its load); docs/speed.md summarises them.
Measure with the cores quiet.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info, save_csv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs/models/minilm-finetune.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/data/fb3"))
    ap.add_argument("--train", type=int, default=320, help="training essays")
    ap.add_argument("--valid", type=int, default=160, help="validation essays (evaluated at the end)")
    ap.add_argument("--new", type=int, default=200, help="new essays predicted by 5 folds")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--freeze-layers", type=int, help="default: the shipped config's")
    args = ap.parse_args(argv)

    from fb3stack.base.transformer.config import TransformerConfig
    from fb3stack.base.transformer.member import TransformerMember
    from fb3stack.config import from_dict, load_yaml
    from fb3stack.data import load_train

    data = load_train(Path(args.data_dir) / "train.csv").sample(frac=1.0, random_state=0).reset_index(drop=True)
    train = data.iloc[: args.train].reset_index(drop=True)
    valid = data.iloc[args.train: args.train + args.valid].reset_index(drop=True)
    new = data.iloc[args.train + args.valid: args.train + args.valid + args.new].reset_index(drop=True)
    shipped = load_yaml(CONFIG)
    over = {"epochs": args.epochs, "eval_start": float(args.epochs), "evals_per_epoch": 1}
    if args.freeze_layers is not None:
        over["freeze_layers"] = args.freeze_layers
    rows, outcomes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for cache in (False, True):
            cfg = from_dict(TransformerConfig, {**shipped, **over, "prefix_cache": cache}, str(CONFIG))
            member = TransformerMember(cfg)
            fold = Path(tmp) / f"cache-{cache}" / "fold0"
            t0 = time.perf_counter()
            out = member.fit_fold(train, valid, 0, fold)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            preds = member.predict_folds(new, [fold] * 5)
            predict_s = time.perf_counter() - t0
            outcomes[cache] = (out, preds)
            rows.append({"variant": "prefix cache" if cache else "frozen layers every step",
                         "freeze_layers": cfg.freeze_layers, "amp": out.info["amp"], "train_essays": len(train),
                         "epochs": cfg.epochs, "steps": out.steps, "fit_s": round(fit_s, 1),
                         "steps_per_s_fit": round(out.steps / fit_s, 3),
                         "valid_mcrmse": round(out.best_score, 5),
                         "train_loss_last": round(float(out.history["train_loss"].iloc[-1]), 5),
                         "predict_5_folds_s": round(predict_s, 1), "new_essays": len(new),
                         "load_1min": load_average(), **machine_info()})
            print(rows[-1], flush=True)
    (plain, p_plain), (cached, p_cached) = outcomes[False], outcomes[True]
    for row in rows:
        row["max_abs_valid_pred_diff"] = float(np.abs(cached.preds - plain.preds).max())
        row["max_abs_new_pred_diff"] = float(np.abs(p_cached - p_plain).max())
        row["speedup_fit"] = round(rows[0]["fit_s"] / rows[1]["fit_s"], 3)
        row["speedup_predict"] = round(rows[0]["predict_5_folds_s"] / rows[1]["predict_5_folds_s"], 3)
    path = save_csv(rows, "prefix_cache.csv")
    print(pd.DataFrame(rows)[["variant", "fit_s", "steps_per_s_fit", "valid_mcrmse", "predict_5_folds_s",
                              "speedup_fit", "speedup_predict", "max_abs_valid_pred_diff"]].to_string(index=False))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
