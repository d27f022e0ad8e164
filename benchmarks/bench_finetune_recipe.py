"""Fine-tuning recipe study on fold 0 of the shared split, at reduced cost, through the real CLI.

Each row is one `fb3stack train STUDY.yaml --only NAME --folds 0`: all-MiniLM-L6-v2 (configs/models/
minilm-finetune.yaml) with the study's BASELINE recipe plus one change. The cost is cut the same way for every
row (a fixed random subset of fold 0's training essays, a fixed subset of its validation essays, a shorter
max_len), and the frozen-embedding ridge (configs/models/embed-ridge-minilm.yaml) is scored on exactly the same
essays and truncation: it is a row of the same table, so "beats frozen features" is read off like with like.

Each row reports the best evaluation (chosen on the scored rows: optimistic) and the last one (the weights
training ended with: not chosen by looking at labels); compare `last` first when rows differ by little.

    python benchmarks/bench_finetune_recipe.py --rows ridge,baseline,lr-1e-4,dropout-0.1
    python benchmarks/bench_finetune_recipe.py --rows baseline --seeds 43        # a second seed

Rows are appended to benchmarks/results/finetune_recipe.csv (a rerun of the same row, seed and cost replaces
its line); docs/transformer.md summarises them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_average, machine_info, save_csv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FINETUNE = REPO / "configs/models/minilm-finetune.yaml"
RIDGE = REPO / "configs/models/embed-ridge-minilm.yaml"
CSV = "finetune_recipe.csv"

# every studied setting stated, so a row does not depend on what minilm-finetune.yaml says today
BASELINE: dict[str, object] = {
    "lr": 5e-5, "head_lr": 5e-4, "llrd": 0.9, "batch_size": 8, "scheduler": "cosine", "warmup_ratio": 0.1,
    "hidden_dropout": 0.0, "attention_dropout": 0.0, "head_dropout": 0.0,
    "pooler": "weighted-layer", "pooler_layers": 6, "truncation": "head_tail", "newline_token": None,
    "loss": "smoothl1", "freeze_layers": 0, "evals_per_epoch": 2, "eval_start": 1.0, "amp": "none",
}
# one change from BASELINE each (ridge rows are the frozen reference)
ROWS: dict[str, dict[str, object]] = {
    "baseline": {},
    "lr-1e-4": {"lr": 1e-4, "head_lr": 1e-3},
    "lr-2e-4": {"lr": 2e-4, "head_lr": 2e-3},
    "head-lr-5e-5": {"head_lr": 5e-5},
    "dropout-0.1": {"hidden_dropout": 0.1, "attention_dropout": 0.1, "head_dropout": 0.1},
    "pooler-mean": {"pooler": "mean"},
    "pooler-mean-concat": {"pooler": "mean-concat", "pooler_layers": 4},
    "freeze-2": {"freeze_layers": 2},
    "trunc-head": {"truncation": "head"},
    "newline-br": {"newline_token": "[BR]"},
    "loss-mse": {"loss": "mse"},
    "llrd-1": {"llrd": 1.0},
    "batch-16": {"batch_size": 16},
    "epochs+1": {"epochs": "+1"},
    # CPU budget levers (issue 26), meant at full size: --train-essays 0 --valid-essays 0 --max-len 512
    "bf16": {"amp": "bf16"},
    "bf16-late-evals": {"amp": "bf16", "evals_per_epoch": 4, "eval_start": 2.5},
    "bf16-freeze-1": {"amp": "bf16", "freeze_layers": 1},
    "bf16-freeze-2-lr-1.5e-4": {"amp": "bf16", "freeze_layers": 2, "lr": 1.5e-4, "head_lr": 1e-3},
    "bf16-epochs-2": {"amp": "bf16", "epochs": "-1"},
    # configs/models/minilm-finetune.yaml exactly as shipped (only name, seed and threads set)
    "shipped": None,
}
RIDGE_ROWS = {"ridge": {"chunking": "truncate"}, "ridge-head-tail": {"chunking": "head_tail"}}


def fb3stack(*args: str) -> None:
    exe = Path(sys.executable).with_name("fb3stack")
    subprocess.run([str(exe), *args], check=True)


def prepare(ws: Path, data: Path, n_train: int, n_valid: int, seed: int) -> Path:
    """The shared 5-fold split of the full data, then fold 0's subsets: a data folder and its folds file."""
    full = ws / "full"
    if not (full / "folds.csv").is_file():
        fb3stack("folds", str(REPO / "configs/zoo/cpu.yaml"), "--workspace", str(full), "--data-dir", str(data))
    folds = pd.read_csv(full / "folds.csv")
    rng = np.random.default_rng(seed)
    valid = folds[folds.fold == 0]
    train = folds[folds.fold != 0]
    valid = valid.iloc[np.sort(rng.permutation(len(valid))[:n_valid])] if n_valid else valid
    train = train.iloc[np.sort(rng.permutation(len(train))[:n_train])] if n_train else train
    keep = pd.concat([valid, train])
    sub = ws / f"data-t{len(train)}-v{len(valid)}"
    if not (sub / "folds.csv").is_file():
        sub.mkdir(parents=True, exist_ok=True)
        rows = pd.read_csv(data / "train.csv")
        rows[rows.text_id.isin(keep.text_id)].to_csv(sub / "train.csv", index=False)
        for name in ("test.csv", "sample_submission.csv"):
            (sub / name).write_bytes((data / name).read_bytes())
        keep.to_csv(sub / "folds.csv", index=False)
    return sub


def member(row: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    if row in RIDGE_ROWS:
        return {"include": str(RIDGE), "set": {"name": row, "max_len": args.max_len, **RIDGE_ROWS[row]}}
    if ROWS[row] is None:
        return {"include": str(FINETUNE), "set": {"name": f"{row}-s{seed}", "seed": seed, "num_threads": args.threads}}
    change = dict(ROWS[row])
    epochs = args.epochs + {"+1": 1, "-1": -1}.get(change.pop("epochs", None), 0)
    settings = {**BASELINE, **change, "name": f"{row}-s{seed}", "seed": seed, "max_len": args.max_len,
                "epochs": epochs, "num_threads": args.threads}
    return {"include": str(FINETUNE), "set": settings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="ridge,baseline", help=f"comma-separated: {', '.join([*RIDGE_ROWS, *ROWS])}")
    ap.add_argument("--seeds", default="42", help="comma-separated training seeds")
    ap.add_argument("--train-essays", type=int, default=800, help="fold 0 training essays (0: all 3,128)")
    ap.add_argument("--valid-essays", type=int, default=400, help="fold 0 validation essays (0: all 783)")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workspace", default=str(REPO / "runs/recipe"))
    ap.add_argument("--data-dir", default=os.environ.get("FB3STACK_DATA", str(REPO.parent / "shared/data/fb3")))
    args = ap.parse_args()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS and r not in RIDGE_ROWS]
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; known: {[*RIDGE_ROWS, *ROWS]}")
    ws = Path(args.workspace).resolve()
    sub = prepare(ws, Path(args.data_dir), args.train_essays, args.valid_essays, seed=0)
    seeds = [int(s) for s in args.seeds.split(",")]
    members = [member(r, s, args) for r in rows for s in (seeds if r in ROWS else [0])]
    study = ws / f"study-{sub.name}-L{args.max_len}-e{args.epochs}.yaml"
    study.write_text(yaml.safe_dump({"name": "recipe-study", "workspace": str(ws / f"ws-{sub.name}"),
                                     "data": {"data_dir": str(sub)}, "folds": {"file": str(sub / "folds.csv")},
                                     "members": members}, sort_keys=False))
    out = RESULTS / CSV
    old = pd.read_csv(out, dtype=str, keep_default_na=False) if out.is_file() else pd.DataFrame()
    for m in members:
        name = m["set"]["name"]
        load0, t0 = load_average(), time.perf_counter()
        fb3stack("train", str(study), "--only", name, "--folds", "0", "--data-dir", str(sub))
        wall = time.perf_counter() - t0
        fold = ws / f"ws-{sub.name}" / "models" / name / "fold0"
        hist = pd.read_csv(fold / "history.csv") if (fold / "history.csv").is_file() else None
        metrics = json.loads((fold / "metrics.json").read_text())
        row = name.rsplit("-s", 1)[0] if hist is not None else name
        rec = {"row": row, "seed": m["set"].get("seed", ""), "change": json.dumps(ROWS.get(row, RIDGE_ROWS.get(row))),
               "train_essays": args.train_essays, "valid_essays": args.valid_essays, "max_len": args.max_len,
               "epochs": m["set"].get("epochs", "shipped"),
               "best": round(float(hist.valid_mcrmse.min()), 4) if hist is not None else round(metrics["mcrmse"], 4),
               "last": round(float(hist.valid_mcrmse.iloc[-1]), 4) if hist is not None else round(metrics["mcrmse"], 4),
               "best_epoch": float(hist.epoch[hist.valid_mcrmse.idxmin()]) if hist is not None else "",
               "curve": " ".join(f"{e:g}:{v:.4f}" for e, v in zip(hist.epoch, hist.valid_mcrmse)) if hist is not None
               else "", "wall_s": round(wall, 1), "load_1min_start": round(load0, 2),
               "load_1min_end": round(load_average(), 2)}
        rec.update({k: v for k, v in machine_info().items() if k not in ("load_1min_start",)})
        print(f"{row:22s} seed {rec['seed']}: best {rec['best']:.4f} last {rec['last']:.4f} ({wall:.0f} s)", flush=True)
        key = ["row", "seed", "train_essays", "valid_essays", "max_len", "epochs"]
        new = pd.DataFrame([rec])
        if len(old):
            same = (old[key].astype(str) == new[key].astype(str).iloc[0]).all(axis=1)
            old = old[~same]
        old = pd.concat([old, new], ignore_index=True)
        save_csv(old.to_dict("records"), CSV)


if __name__ == "__main__":
    main()
