"""Parts 5-6 of the GPU check: real accuracy of the fp16 MiniLM checkpoint through `fb3stack train`, and
inference tokens/s of the fine-tuned folds through the predict path (SavedMember -> TransformerMember)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEMBER = "minilm-finetune"  # configs/models/minilm-finetune.yaml
GPU_RUN = dict(epochs=3, batch_size=16, max_len=512)
QUICK_RUN = dict(epochs=1, batch_size=8, max_len=64, limit=32, infer=16)
INFER_ESSAYS = 2000


def run_streaming(cmd: list[str], env: dict[str, str], timeout: float, log: Path, prefix: str,
                  on_start: Callable[[subprocess.Popen | None], None] = lambda proc: None) -> int | None:
    """Run `cmd`, echoing its output with `prefix` and into `log`; None when it had to be stopped at `timeout`."""
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=REPO, start_new_session=True)
        on_start(proc)

        def pump() -> None:
            for line in proc.stdout:
                fh.write(line)
                print(prefix + line.rstrip(), flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the training process and anything it started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
        reader.join(timeout=5)
        on_start(None)
    return rc


def backbone_dtype(backbone: Path) -> str:
    """The parameter dtype(s) fb3stack's load_backbone gives for the fp16 checkpoint (training wants fp32)."""
    from fb3stack.base.transformer.backbone import load_backbone
    from fb3stack.base.transformer.config import TransformerConfig

    model = load_backbone(TransformerConfig(name="probe", kind="transformer", backbone=str(backbone)), backbone)
    return "/".join(sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()}))


def fold_results(model_dir: Path, train) -> tuple[list[dict], float]:  # noqa: ANN001 - DataFrame with folds
    """Metrics of the finished folds, and the MCRMSE over their out-of-fold rows together."""
    import pandas as pd

    from fb3stack.constants import ID_COL, TARGETS
    from fb3stack.metrics import mcrmse

    done = sorted(p for p in model_dir.glob("fold[0-9]*") if (p / "oof.parquet").is_file())
    if not done:
        return [], float("nan")
    metrics = [json.loads((d / "metrics.json").read_text()) for d in done]
    oof = pd.concat([pd.read_parquet(d / "oof.parquet") for d in done], ignore_index=True)
    truth = train.set_index(ID_COL).loc[oof[ID_COL], list(TARGETS)].to_numpy()
    return metrics, mcrmse(truth, oof[list(TARGETS)].to_numpy())


def part_finetune(ctx, deadline: float) -> None:  # noqa: ANN001 - gpu_check.Ctx
    import pandas as pd
    from gpu_check_prepare import FOLDS, MODEL_DIR

    from fb3stack.constants import FOLD_COL, ID_COL, TEXT_COL
    from fb3stack.io import write_csv

    run = QUICK_RUN if ctx.quick else GPU_RUN
    train = ctx.train_df()  # unpacks train.csv into the work folder
    backbone = ctx.prep / MODEL_DIR
    dtype = backbone_dtype(backbone)
    ctx.log(f"part 5: load_backbone gives {dtype} parameters for the fp16 checkpoint")
    folds_file = ctx.prep / FOLDS
    if ctx.quick:  # the shared split folded onto 2 folds: same import path, a quarter of the work
        two = pd.read_csv(folds_file)
        two[FOLD_COL] = two[FOLD_COL] % 2
        folds_file = ctx.work / "folds-2.csv"
        write_csv(folds_file, two)
    ws = ctx.work / "ws"
    amp = "bf16" if ctx.cuda else "none"
    sets = [f"backbone={backbone}", f"device={ctx.device}", f"amp={amp}", f"epochs={run['epochs']}",
            f"batch_size={run['batch_size']}", f"max_len={run['max_len']}", f"folds.file={folds_file}"]
    if ctx.quick:
        # frozen embeddings: a third of MiniLM's parameters and most of a CPU step's optimiser work
        sets += [f"data.limit={run['limit']}", "eval_batch_size=16", "freeze_embeddings=true"]
    cmd = [sys.executable, "-m", "fb3stack", "train", str(REPO / "configs" / "models" / f"{MEMBER}.yaml"),
           "--workspace", str(ws), "--data-dir", str(ctx.data_dir)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p))
    ctx.log("part 5: " + " ".join(cmd[1:]))
    t0 = time.perf_counter()
    # leave a little of the budget for reading the results and for part 6's share
    rc = run_streaming(cmd, env, deadline - t0 - 5, ctx.work / "train.log", "    | ",
                       on_start=lambda proc: setattr(ctx, "child", proc))
    wall = time.perf_counter() - t0
    model_dir = ws / "models" / MEMBER
    metrics, oof = fold_results(model_dir, train)
    used = pd.read_csv(ws / "folds.csv") if (ws / "folds.csv").is_file() else None
    n_folds = int(used[FOLD_COL].max()) + 1 if used is not None else 0
    row = dict(part="5", model="all-MiniLM-L6-v2 (fp16 checkpoint)", max_len=run["max_len"], precision=amp
               if ctx.cuda else "fp32", checkpointing="off", attention="eager", batch_size=run["batch_size"],
               steps=sum(m.get("steps", 0) for m in metrics), oof_mcrmse=oof, wall_s=wall)
    if metrics and used is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(backbone)
        text = train.set_index(ID_COL)[TEXT_COL]
        lengths = pd.Series([len(x) for x in tok(text.loc[used[ID_COL]].tolist(), truncation=True,
                                                 max_length=run["max_len"])["input_ids"]], index=used[FOLD_COL].values)
        tokens = sum(run["epochs"] * lengths[lengths.index != m["fold"]].sum() for m in metrics)
        row["tokens_per_s"] = tokens / sum(m["train_seconds"] for m in metrics)
    folds_txt = ", ".join(f"{m['fold']}: {m['mcrmse']:.4f} ({m.get('train_seconds', 0):.0f} s)" for m in metrics)
    if rc == 0 and len(metrics) == n_folds:
        row["status"] = "ok"
    elif rc is None:
        row["status"] = f"partial: stopped at the time budget, {len(metrics)}/{n_folds} folds"
    else:
        row["status"] = f"error: fb3stack train exited {rc}, {len(metrics)}/{n_folds} folds (log: train.log)"
    row["note"] = (f"fb3stack train {MEMBER}.yaml, {run['epochs']} epochs, {n_folds} shared folds, "
                   f"{len(used) if used is not None else 0} essays; load_backbone dtype {dtype}; best checkpoint per "
                   f"fold: MCRMSE {folds_txt or 'none'}; tokens/s = training tokens / fold seconds incl. evaluation")
    ctx.add(**row)
    ctx.finetuned = model_dir if metrics else None


def part_inference(ctx, deadline: float) -> None:  # noqa: ANN001 - gpu_check.Ctx
    import torch

    from fb3stack.base.runner import SavedMember
    from fb3stack.constants import ID_COL, TEXT_COL

    model_dir = getattr(ctx, "finetuned", None)
    if model_dir is None:
        ctx.add(part="6", status="skipped", note="part 5 left no fine-tuned fold to load")
        return
    saved = SavedMember.load(model_dir)
    dirs = saved.fold_dirs
    n = QUICK_RUN["infer"] if ctx.quick else INFER_ESSAYS
    df = ctx.train_df().iloc[:n][[ID_COL, TEXT_COL]]
    cfg = saved.config
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    preds = saved.predict(df)  # every fold: load from its folder, tokenize, predict; then the mean
    if ctx.cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dirs[0] / "tokenizer")
    real = sum(len(x) for x in tok(df[TEXT_COL].tolist(), truncation=True, max_length=cfg.max_len)["input_ids"])
    ok = preds.shape == (len(df), 6) and bool(np.isfinite(preds).all())
    ctx.add(part="6", model="all-MiniLM-L6-v2 fine-tuned", max_len=cfg.max_len,
            precision=cfg.amp if ctx.cuda else "fp32", checkpointing="off", attention="eager",
            batch_size=cfg.eval_batch_size, tokens_per_s=len(dirs) * real / wall, wall_s=wall,
            peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if ctx.cuda else float("nan"),
            status="ok" if ok else "error: predictions not finite or wrong shape",
            note=f"{len(dirs)} folds x {len(df)} essays ({real} real tokens each), end to end through "
                 f"SavedMember.predict: load each fold from its folder, tokenize, predict, average")
