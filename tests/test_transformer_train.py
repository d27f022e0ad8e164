"""The transformer member end to end through the fold runner, on a tiny real DeBERTa-v2 and real essays."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_tiny_deberta import build_tiny_deberta, tiny_config
from safetensors.torch import load_file

from fb3stack.base.executors import run_local
from fb3stack.base.runner import SavedMember
from fb3stack.base.transformer.member import TransformerMember
from fb3stack.config import DataConfig, FoldsConfig, RunConfig
from fb3stack.constants import ID_COL, TARGETS
from fb3stack.metrics import mcrmse
from fb3stack.workspace import prepare


class FoldOneFails(RuntimeError):
    pass


def test_train_resume_oof_and_reload(fb3_dir, tmp_path, monkeypatch):
    prep = prepare(RunConfig(data=DataConfig(data_dir=str(fb3_dir), limit=64), folds=FoldsConfig(n_folds=2, seed=0)),
                   workspace=tmp_path / "ws")
    backbone = build_tiny_deberta(tmp_path / "tiny", prep.train["full_text"])
    cfg = tiny_config(backbone, epochs=2, eval_every=2, adversarial="fgm", adv_start_epoch=1, msd_samples=2,
                      tracking="tensorboard")

    # first run: fold 1 dies mid-run, as a killed job would
    real_fit, calls = TransformerMember.fit_fold, []

    def fit_fold(self, train, valid, fold, fold_dir):
        calls.append(fold)
        if fold == 1 and calls.count(1) == 1:
            raise FoldOneFails("killed")
        return real_fit(self, train, valid, fold, fold_dir)

    monkeypatch.setattr(TransformerMember, "fit_fold", fit_fold)
    with pytest.raises(FoldOneFails):
        run_local([cfg], prep)
    model_dir = prep.workspace.model_dir("tiny")
    assert (model_dir / "fold0" / "oof.parquet").is_file() and not (model_dir / "fold1").exists()

    # second run resumes at fold 1; fold 0 is not retrained
    metrics = run_local([cfg], prep)[cfg.name]
    assert calls == [0, 1, 1]

    oof = pd.read_parquet(model_dir / "oof.parquet")
    assert list(oof[ID_COL]) == list(prep.train[ID_COL])  # each id once
    assert (oof["fold"].to_numpy() == prep.train["fold"].to_numpy()).all()
    truth = prep.train[list(TARGETS)].to_numpy()
    assert metrics["mcrmse"] == pytest.approx(mcrmse(truth, oof[list(TARGETS)].to_numpy()))
    emb = np.load(model_dir / "embeddings.npy")
    assert emb.shape == (64, 32) and np.isfinite(emb).all()

    for k in range(2):
        hist = pd.read_csv(model_dir / f"fold{k}" / "history.csv")
        assert len(hist) >= 3  # every 2 steps and at each epoch end
        assert list((model_dir / f"fold{k}" / "tensorboard").glob("events.out.tfevents.*"))  # tracked in the fold
        assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0], hist  # the loss falls
        assert hist["valid_mcrmse"].min() == pytest.approx(pd.read_json(model_dir / f"fold{k}" / "metrics.json",
                                                                        typ="series")["mcrmse"])

    # checkpoints are stored in fp16 (half the size of fp32) and resumed runs write them the same way
    for k in range(2):
        stored = load_file(str(model_dir / f"fold{k}" / "model.safetensors"))
        assert {v.dtype for k, v in stored.items() if not k.startswith("fc.")} == {torch.float16}  # head: fp32

    # the best checkpoint, loaded from a copy of the fold folder alone, reproduces its OOF predictions (computed
    # from the fp32 weights in training) within fp16 rounding
    bundle = tmp_path / "bundle"
    shutil.copytree(model_dir, bundle)
    shutil.rmtree(backbone)
    saved = SavedMember.load(bundle)
    member = TransformerMember(saved.config)
    for k in range(2):
        rows = prep.train["fold"].to_numpy() == k
        valid = prep.train[rows].reset_index(drop=True)
        preds, feats = member.predict_fold_with_embeddings(valid, bundle / f"fold{k}")
        np.testing.assert_allclose(preds, oof.loc[rows, list(TARGETS)].to_numpy(), atol=2e-3)
        np.testing.assert_allclose(feats, emb[rows], atol=2e-3)
    both = saved.predict(prep.train.head(5))
    assert both.shape == (5, 6) and np.isfinite(both).all()
