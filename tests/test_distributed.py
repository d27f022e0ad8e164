"""Data-parallel training of a tiny DeBERTa on two CPU processes (gloo) under `accelerate launch`.

accelerate's `--cpu --num_processes 2` starts several processes only through MPI (without it, one process
runs); `--multi_gpu --num_processes 2` goes through torchrun and, with no GPU, accelerate picks gloo on the
CPU. That is what runs here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers_tiny_deberta import build_tiny_deberta
from safetensors.torch import load_file

from fb3stack.base.transformer.data import BucketBatchSampler
from fb3stack.base.transformer.ddp import ShardedBatchSampler


def test_sharded_batches_cover_every_batch_and_stay_in_step():
    inner = BucketBatchSampler(list(np.random.default_rng(0).integers(5, 60, size=37)), 4, True, seed=1)
    shards = [ShardedBatchSampler(inner, r, 3).batches() for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # every rank steps the same number of times
    seen = sorted(i for s in shards for b in s for i in b)
    assert set(seen) == set(range(37))  # nothing dropped; only the fill-up of the last round repeats
    assert len(seen) - 37 < 3 * 4


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(args: list[str], cwd: Path, launcher: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*launcher, "-m", "fb3stack", "train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_two_processes_train_the_same_weights_as_one_with_their_global_batch(fb3_dir, train_df, tmp_path):
    """2 processes x batch 4 x grad_accum 2 see, per optimiser step, the 4 batches that 1 process x batch 4 x
    grad_accum 4 sees (process r takes batches r, r+2, ...): with dropout off and fp32 the averaged gradients, and
    so the weights after every step, must agree to float rounding. Without the all-reduce each process would
    follow its own batches and the weights would part within a step."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate launcher is not on PATH")
    backbone = build_tiny_deberta(tmp_path / "tiny", train_df["full_text"].iloc[:200])
    model = {"name": "tiny", "kind": "transformer", "backbone": str(backbone), "max_len": 64, "batch_size": 4,
             "eval_batch_size": 8, "epochs": 2, "lr": 2e-3, "head_lr": 5e-3, "pooler": "mean", "device": "cpu",
             "amp": "none", "warmup_ratio": 0.1, "loss": "mse", "hidden_dropout": 0.0, "attention_dropout": 0.0,
             "head_dropout": 0.0, "max_grad_norm": 1.0, "oof_checkpoint": "last",
             "checkpoint_dtype": "fp32"}  # fp16 rounding could turn a 1e-7 difference into one fp16 step
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(model))
    # 45 training essays per fold: 12 batches of 4, so both ways group them into the same 3 steps per epoch
    common = ["tiny.yaml", "--data-dir", str(fb3_dir), "--set", "data.limit=90", "--set", "folds.n_folds=2"]
    _train([*common, "--workspace", "single", "--set", "grad_accum=4"], tmp_path, [sys.executable])
    _train([*common, "--workspace", "ddp", "--set", "grad_accum=2"], tmp_path,
           [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port())])
    single, ddp = tmp_path / "single/models/tiny", tmp_path / "ddp/models/tiny"
    s, d = (json.loads((m / "metrics.json").read_text()) for m in (single, ddp))
    assert d["n"] == s["n"] == 90
    assert [f["steps"] for f in d["folds"]] == [f["steps"] for f in s["folds"]] == [6, 6]
    for fold in ("fold0", "fold1"):
        a, b = load_file(single / fold / "model.safetensors"), load_file(ddp / fold / "model.safetensors")
        assert a.keys() == b.keys()
        start = load_file(backbone / "model.safetensors")
        moved = max((a[f"backbone.{k}"] - w).abs().max().item() for k, w in start.items() if f"backbone.{k}" in a)
        assert moved > 1e-3  # training really moved the weights the comparison is about
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # the same rows, each once, with the same folds (nothing dropped or duplicated by sharding) and predictions
    so, do = pd.read_parquet(single / "oof.parquet"), pd.read_parquet(ddp / "oof.parquet")
    pd.testing.assert_frame_equal(so[["text_id", "fold"]], do[["text_id", "fold"]])
    pd.testing.assert_frame_equal(so, do, check_exact=False, rtol=1e-5, atol=1e-5)
    # the main process alone wrote artefacts: one folder per fold, no scratch leftovers
    entries = sorted(p.name for p in ddp.iterdir())
    assert [e for e in entries if e.startswith("fold")] == ["fold0", "fold1"]
    assert not [e for e in entries if e.startswith(".")]
