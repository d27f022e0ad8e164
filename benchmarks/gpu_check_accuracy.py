"""Parts 5-6 of the GPU check: configs/models/minilm-finetune.yaml trained by `fb3stack train` exactly as configured
(read at run time) on the shared 5 folds with two seeds, and inference tokens/s of the fine-tuned folds through the
predict path (TransformerMember.predict_fold: each fold loaded from its folder, tokenized, predicted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEMBER = "minilm-finetune"
CONFIG = REPO / "configs" / "models" / f"{MEMBER}.yaml"
N_SEEDS = 2  # the config's seed and the next one
# --quick (a CPU smoke run, never the recipe): few essays, short, one epoch; said in the row's note
QUICK_SETS = ["data.limit=32", "max_len=64", "epochs=1", "eval_batch_size=16", "freeze_embeddings=true"]
INFER_ESSAYS = 2000


def backbone_dtype(backbone: Path) -> str:
    """The parameter dtype(s) fb3stack's load_backbone gives for the fp16 checkpoint (training wants fp32)."""
    from fb3stack.base.transformer.backbone import load_backbone
    from fb3stack.base.transformer.config import TransformerConfig

    model = load_backbone(TransformerConfig(name="probe", kind="transformer", backbone=str(backbone)), backbone)
    return "/".join(sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()}))


def fold_results(fold_dirs: list[Path], train) -> tuple[list[dict], float]:  # noqa: ANN001 - DataFrame
    """Metrics of the finished folds among `fold_dirs`, and the MCRMSE over their out-of-fold rows together."""
    import pandas as pd

    from fb3stack.constants import ID_COL, TARGETS
    from fb3stack.metrics import mcrmse

    done = [d for d in fold_dirs if (d / "oof.parquet").is_file() and (d / "metrics.json").is_file()]
    if not done:
        return [], float("nan")
    metrics = [json.loads((d / "metrics.json").read_text()) for d in done]
    oof = pd.concat([pd.read_parquet(d / "oof.parquet") for d in done], ignore_index=True)
    truth = train.set_index(ID_COL).loc[oof[ID_COL], list(TARGETS)].to_numpy()
    return metrics, mcrmse(truth, oof[list(TARGETS)].to_numpy())


def run_jobs(cmds: list[list[str]], env: dict[str, str], deadline: float, logs: list[Path], parallel: int,
             on_start: Callable[[object], None]) -> list[int | None]:
    """Run `cmds` at most `parallel` at a time, each in its own process session with its output in its log;
    whatever still runs at `deadline` is stopped (its return code None)."""
    rcs: list[int | None] = [None] * len(cmds)
    running: dict[int, subprocess.Popen] = {}
    todo = list(range(len(cmds)))
    handles = []
    try:
        while (todo or running) and time.perf_counter() < deadline:
            while todo and len(running) < parallel:
                i = todo.pop(0)
                fh = open(logs[i], "w", encoding="utf-8")  # noqa: SIM115 - closed below
                handles.append(fh)
                running[i] = subprocess.Popen(cmds[i], stdout=fh, stderr=subprocess.STDOUT, text=True, env=env,
                                              cwd=REPO, start_new_session=True)
                on_start(list(running.values()))
            for i, proc in list(running.items()):
                if proc.poll() is not None:
                    rcs[i] = proc.returncode
                    del running[i]
            time.sleep(0.5)
    finally:
        for proc in running.values():  # past the deadline: the job and anything it started
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=15)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        on_start([])
        for fh in handles:
            fh.close()
    return rcs


def planned_changes(cfg, ctx, backbone: Path) -> list[str]:  # noqa: ANN001 - TransformerConfig, gpu_check.Ctx
    """The only `--set`s of part 5 besides the seed and the data: where the backbone is (the package that ships it
    is not on the GPU machine; the prepared copy is its weights stored as fp16) and, when the config names
    another device, the device (execution-only). Everything else is the config as it is on disk now."""
    sets = [f"backbone={backbone}"]
    if cfg.device not in ("auto", ctx.device):
        sets.append(f"device={ctx.device}")
    return sets


def part_finetune(ctx, deadline: float) -> None:  # noqa: ANN001 - gpu_check.Ctx
    import pandas as pd
    import torch
    from gpu_check_prepare import FOLDS, MODEL_DIR

    from fb3stack.base.registry import load_member_config
    from fb3stack.base.transformer.engine import pick_amp
    from fb3stack.constants import FOLD_COL
    from fb3stack.io import write_csv

    cfg = load_member_config(CONFIG)  # read now: the recipe is whatever the file says at run time
    train = ctx.train_df()  # unpacks train.csv into the work folder
    backbone = ctx.prep / MODEL_DIR
    dtype = backbone_dtype(backbone)
    folds_file = ctx.prep / FOLDS
    if ctx.quick:  # the shared split folded onto 2 folds: same import path, less work
        two = pd.read_csv(folds_file)
        two[FOLD_COL] = two[FOLD_COL] % 2
        folds_file = ctx.work / "folds-2.csv"
        write_csv(folds_file, two)
    n_folds = int(pd.read_csv(folds_file)[FOLD_COL].max()) + 1
    changes = planned_changes(cfg, ctx, backbone)
    extra = QUICK_SETS if ctx.quick else []
    seeds = [cfg.seed + i for i in range(N_SEEDS)]
    jobs = [(seed, fold) for seed in seeds for fold in range(n_folds)]
    cmds, logs, dirs = [], [], {}
    for seed, fold in jobs:
        ws = ctx.work / f"ws-seed{seed}-fold{fold}"
        sets = [*changes, *extra, f"folds.file={folds_file}"] + ([f"seed={seed}"] if seed != cfg.seed else [])
        cmd = [sys.executable, "-m", "fb3stack", "train", str(CONFIG), "--workspace", str(ws), "--data-dir",
               str(ctx.data_dir), "--folds", str(fold)]
        for item in sets:
            cmd += ["--set", item]
        cmds.append(cmd)
        logs.append(ctx.work / f"train-seed{seed}-fold{fold}.log")
        dirs[seed, fold] = ws / "models" / cfg.name / f"fold{fold}"
    # side by side: a MiniLM step leaves most of a big GPU idle; on a CPU, as many as there are cores
    parallel = len(jobs) if ctx.cuda else max(1, min(len(jobs), os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p))
    ctx.log(f"part 5: {CONFIG.name} as configured + {changes + extra}; seeds {seeds} x {n_folds} folds = "
            f"{len(jobs)} jobs, {parallel} at a time, {threads} CPU threads each; e.g. " + " ".join(cmds[0][1:]))
    t0 = time.perf_counter()
    rcs = run_jobs(cmds, env, deadline - 5, logs, parallel, lambda procs: setattr(ctx, "children", procs))
    wall = time.perf_counter() - t0
    for log, rc in zip(logs, rcs):
        if rc not in (0, None):
            tail = log.read_text(errors="replace").strip().splitlines()[-6:]
            ctx.log(f"part 5: {log.name} exited {rc}: " + " | ".join(tail))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(pick_amp(cfg.amp, torch.device(ctx.device)),
                                                                    "fp32")
    ctx.finetuned = []
    for seed in seeds:
        seed_dirs = [dirs[seed, f] for f in range(n_folds)]
        metrics, oof = fold_results(seed_dirs, train)
        seed_rcs = [rc for (s, _), rc in zip(jobs, rcs) if s == seed]
        if len(metrics) == n_folds:
            status = "ok"
            ctx.finetuned = ctx.finetuned or seed_dirs
        elif any(rc is None for rc in seed_rcs):
            status = f"partial: stopped at the time budget, {len(metrics)}/{n_folds} folds"
        else:
            status = f"error: {len(metrics)}/{n_folds} folds (logs: train-seed{seed}-fold*.log in the work folder)"
        folds_txt = ", ".join(f"{m['fold']}: {m['mcrmse']:.4f} ({m.get('train_seconds', 0):.0f} s, "
                              f"{m.get('steps', '?')} steps)" for m in metrics)
        ctx.add(part="5", model=f"{cfg.name} (MiniLM fp16 checkpoint)", max_len=cfg.max_len, precision=precision,
                checkpointing="on" if cfg.gradient_checkpointing else "off", attention=cfg.attention_impl,
                batch_size=cfg.batch_size, steps=sum(m.get("steps", 0) for m in metrics), oof_mcrmse=oof,
                wall_s=wall, status=status,
                note=(f"seed {seed}: fb3stack train {CONFIG.name} as on disk at run time; --set only "
                      f"{changes + extra} (backbone: the same weights stored as fp16, loaded as {dtype}; device is "
                      f"execution-only){'; QUICK: a smoke run, not the recipe' if ctx.quick else ''}; "
                      f"{len(jobs)} (seed, fold) jobs side by side, {wall:.0f} s for all; per fold: "
                      f"{folds_txt or 'none finished'}"))


def part_inference(ctx, deadline: float) -> None:  # noqa: ANN001 - gpu_check.Ctx
    import torch
    from gpu_check_prepare import MODEL_DIR

    from fb3stack.base.registry import load_member_config
    from fb3stack.base.transformer.member import TransformerMember
    from fb3stack.constants import ID_COL, TEXT_COL

    dirs = getattr(ctx, "finetuned", None)
    if not dirs:
        ctx.add(part="6", status="skipped", note="part 5 left no seed with every fold fine-tuned")
        return
    cfg = load_member_config(CONFIG, overrides=planned_changes(load_member_config(CONFIG), ctx,
                                                                ctx.prep / MODEL_DIR))
    member = TransformerMember(cfg)
    n = 16 if ctx.quick else INFER_ESSAYS
    df = ctx.train_df().iloc[:n][[ID_COL, TEXT_COL]]
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    preds = np.mean([member.predict_fold(df, d) for d in dirs], axis=0)  # load, tokenize, predict; then the mean
    if ctx.cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    from transformers import AutoTokenizer

    prep = member.fold_preprocess(dirs[0])
    tok = AutoTokenizer.from_pretrained(dirs[0] / "tokenizer")
    real = sum(len(x) for x in tok(df[TEXT_COL].tolist(), truncation=True, max_length=prep["max_len"])["input_ids"])
    ok = preds.shape == (len(df), 6) and bool(np.isfinite(preds).all())
    ctx.add(part="6", model=f"{cfg.name} fine-tuned", max_len=prep["max_len"],
            precision=cfg.amp if ctx.cuda else "fp32", checkpointing="off", attention="eager",
            batch_size=cfg.eval_batch_size, tokens_per_s=len(dirs) * real / wall, wall_s=wall,
            peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if ctx.cuda else float("nan"),
            status="ok" if ok else "error: predictions not finite or wrong shape",
            note=f"{len(dirs)} folds x {len(df)} essays ({real} real tokens each), end to end through "
                 f"TransformerMember.predict_fold: load each fold from its folder, tokenize, predict; averaged")
