"""Fold checkpoint sizes before (fp32, every parameter in every fold) and after (fp16, frozen part once per
member), and how far predictions from the fp16 checkpoint are from the fp32 one on real essays.

- deberta-v3-base / v3-large / v2-xlarge: sizes from their configs alone (`checkpoint_bytes`, meta device, no
  weights), with the zoo's freezing (v2-xlarge: embeddings + 12 of 24 layers frozen).
- minilm-finetune (configs/models/minilm-finetune.yaml, the real all-MiniLM-L6-v2 weights of the installed
  package): one short fine-tune on a few real essays (fp32 checkpoint), the same weights saved in fp16, both
  loaded and predicted on held-out real essays: measured file sizes and the max abs prediction difference.
  Prediction runs as `fb3stack predict` runs it on this machine (CPU: fp32 compute, fixed batches).

One CSV row per member to benchmarks/results/checkpoint_size.csv (`--configs-only`: the three DeBERTas alone, in
seconds, to checkpoint_size_configs.csv).

    python benchmarks/bench_checkpoint_size.py --n-train 32 --n-predict 100 --max-len 256
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_info, save_csv  # benchmarks/common.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fb3stack.base.registry import load_member_config  # noqa: E402
from fb3stack.base.transformer.checkpoint import CHECKPOINT, CheckpointWriter, checkpoint_bytes  # noqa: E402
from fb3stack.base.transformer.member import TransformerMember  # noqa: E402
from fb3stack.data import load_train  # noqa: E402

MB = 2**20


def from_config(name: str, folds: int) -> dict:
    cfg = load_member_config(REPO / "configs" / "models" / f"{name}.yaml")
    cfg.checkpoint_dtype = "fp32"
    fold32, shared32 = checkpoint_bytes(cfg)
    cfg.checkpoint_dtype = "fp16"
    fold16, shared16 = checkpoint_bytes(cfg)
    return {"member": name, "how": "from config (parameter counts)", "folds": folds,
            "fold_mb_fp32": round((fold32 + shared32) / MB, 1), "fold_mb_fp16": round(fold16 / MB, 1),
            "shared_mb_fp16": round(shared16 / MB, 1),
            "member_mb_fp32": round(folds * (fold32 + shared32) / MB, 1),
            "member_mb_fp16": round((folds * fold16 + shared16) / MB, 1)}


def minilm(data_dir: Path, n_train: int, n_predict: int, max_len: int, folds: int) -> dict:
    cfg = load_member_config(REPO / "configs" / "models" / "minilm-finetune.yaml")
    cfg.max_len, cfg.epochs, cfg.checkpoint_dtype = max_len, 1, "fp32"
    df = load_train(data_dir / "train.csv").sample(frac=1.0, random_state=0).reset_index(drop=True)
    train, valid = df.iloc[:n_train].reset_index(drop=True), df.iloc[n_train:2 * n_train].reset_index(drop=True)
    held_out = df.iloc[2 * n_train:2 * n_train + n_predict].reset_index(drop=True)
    member = TransformerMember(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, fp16 = Path(tmp) / "m32" / "fold0", Path(tmp) / "m16" / "fold0"
        fp32.mkdir(parents=True)
        t0 = time.perf_counter()
        member.fit_fold(train, valid, 0, fp32)
        train_s = time.perf_counter() - t0
        shutil.copytree(fp32, fp16)
        model, _ = member.load_fold(fp32)
        CheckpointWriter(fp16, "fp16").save(model)  # what checkpoint_dtype: fp16 stores for these weights
        p32, p16 = member.predict_fold(held_out, fp32), member.predict_fold(held_out, fp16)
        size32, size16 = (fp32 / CHECKPOINT).stat().st_size, (fp16 / CHECKPOINT).stat().st_size
    return {"member": "minilm-finetune", "how": f"measured: {n_train} real essays x 1 epoch, max_len {max_len}",
            "folds": folds, "fold_mb_fp32": round(size32 / MB, 1), "fold_mb_fp16": round(size16 / MB, 1),
            "shared_mb_fp16": 0.0, "member_mb_fp32": round(folds * size32 / MB, 1),
            "member_mb_fp16": round(folds * size16 / MB, 1), "n_predicted": len(held_out),
            "max_abs_pred_diff_fp16_vs_fp32": float(np.abs(p16 - p32).max()),
            "mean_abs_pred_diff_fp16_vs_fp32": float(np.abs(p16 - p32).mean()), "train_seconds": round(train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "fb3")
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--n-predict", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--configs-only", action="store_true", help="only the sizes from configs (seconds)")
    args = ap.parse_args()
    info = machine_info()
    rows = [{**from_config(name, args.folds), **info}
            for name in ("deberta-v3-base", "deberta-v3-large", "deberta-v2-xlarge")]
    if not args.configs_only:
        rows.append({**minilm(args.data_dir, args.n_train, args.n_predict, args.max_len, args.folds), **info})
    path = save_csv(rows, "checkpoint_size.csv" if not args.configs_only else "checkpoint_size_configs.csv")
    for r in rows:
        print({k: v for k, v in r.items() if k not in info})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
