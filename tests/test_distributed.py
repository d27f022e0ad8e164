"""Data-parallel training of a tiny DeBERTa on two CPU processes (gloo) under `accelerate launch`.

accelerate's `--cpu --num_processes 2` starts several processes only through MPI (without it, one process
runs); `--multi_gpu --num_processes 2` goes through torchrun and, with no GPU, accelerate picks gloo on the
CPU. That is what runs here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers_tiny_deberta import build_tiny_deberta

from fb3stack.base.transformer.data import BucketBatchSampler
from fb3stack.base.transformer.ddp import ShardedBatchSampler

pytest.importorskip("accelerate", reason="data-parallel training needs accelerate (pip install 'fb3stack[dist]')")


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


def test_accelerate_two_processes_match_single_process(fb3_dir, train_df, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate launcher is not on PATH")
    backbone = build_tiny_deberta(tmp_path / "tiny", train_df["full_text"].iloc[:200])
    model = {"name": "tiny", "kind": "transformer", "backbone": str(backbone), "max_len": 64, "batch_size": 8,
             "eval_batch_size": 8, "epochs": 2, "lr": 2e-3, "head_lr": 5e-3, "pooler": "mean", "device": "cpu",
             "amp": "none", "warmup_ratio": 0.0}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(model))
    common = ["tiny.yaml", "--data-dir", str(fb3_dir), "--set", "data.limit=90", "--set", "folds.n_folds=2"]
    _train([*common, "--workspace", "single"], tmp_path, [sys.executable])
    _train([*common, "--workspace", "ddp"], tmp_path,
           [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port())])
    single = pd.read_parquet(tmp_path / "single/models/tiny/oof.parquet")
    ddp = pd.read_parquet(tmp_path / "ddp/models/tiny/oof.parquet")
    # the same rows, each once, with the same folds: nothing dropped or duplicated by sharding
    pd.testing.assert_frame_equal(single[["text_id", "fold"]], ddp[["text_id", "fold"]])
    import json

    s = json.loads((tmp_path / "single/models/tiny/metrics.json").read_text())
    d = json.loads((tmp_path / "ddp/models/tiny/metrics.json").read_text())
    assert d["n"] == s["n"] == 90
    assert abs(d["mcrmse"] - s["mcrmse"]) < 0.15, (s["mcrmse"], d["mcrmse"])
    # each process stepped through half the batches: the work really was split
    for fs, fd in zip(s["folds"], d["folds"]):
        assert fd["steps"] == -(-fs["steps"] // 2), (fs["steps"], fd["steps"])
    # the main process alone wrote artefacts: one folder per fold, no scratch leftovers
    entries = sorted(p.name for p in (tmp_path / "ddp/models/tiny").iterdir())
    assert [e for e in entries if e.startswith("fold")] == ["fold0", "fold1"]
    assert not [e for e in entries if e.startswith(".")]
