"""The fold loop's contract, with a small real model (ridge on length features) as the member."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from length_member import LengthRidge, LengthRidgeConfig, length_features

from fb3stack.base.executors import run_local
from fb3stack.base.runner import SavedMember, resolve_members
from fb3stack.config import DataConfig, FoldsConfig, RunConfig
from fb3stack.constants import TARGETS
from fb3stack.metrics import mcrmse
from fb3stack.workspace import prepare


@pytest.fixture()
def prep(fb3_dir, tmp_path):
    cfg = RunConfig(workspace=str(tmp_path / "ws"), data=DataConfig(data_dir=str(fb3_dir), limit=300),
                    folds=FoldsConfig(n_folds=3, seed=0))
    return prepare(cfg)


def test_oof_contract_and_prediction(prep):
    cfg = LengthRidgeConfig(name="len", kind="length-ridge")
    metrics = run_local([cfg], prep)[cfg.name]
    model_dir = prep.workspace.model_dir("len")
    oof = pd.read_parquet(model_dir / "oof.parquet")
    assert list(oof.columns) == ["text_id", "fold", *TARGETS]
    assert list(oof["text_id"]) == list(prep.train["text_id"])  # each id once, training order
    assert (oof["fold"].to_numpy() == prep.train["fold"].to_numpy()).all()
    truth = prep.train[list(TARGETS)].to_numpy()
    assert metrics["mcrmse"] == pytest.approx(mcrmse(truth, oof[list(TARGETS)].to_numpy()))
    assert metrics["mcrmse"] < mcrmse(truth, np.broadcast_to(truth.mean(0), truth.shape))
    assert len(json.loads((model_dir / "metrics.json").read_text())["folds"]) == 3
    emb = np.load(model_dir / "embeddings.npy")
    ids = pd.read_csv(model_dir / "embeddings_ids.csv")["text_id"]
    assert emb.shape == (300, 3) and list(ids) == list(oof["text_id"])
    np.testing.assert_allclose(emb, length_features(prep.train), rtol=1e-5)
    # a fold model reloaded from disk reproduces its OOF rows
    saved = SavedMember.load(model_dir)
    fold0 = prep.train[prep.train["fold"] == 0]
    member = LengthRidge(saved.config)
    np.testing.assert_allclose(member.predict_fold(fold0, model_dir / "fold0"),
                               oof.loc[fold0.index, list(TARGETS)].to_numpy())
    assert saved.predict(fold0).shape == (len(fold0), 6)


def test_resume_after_crash_never_retrains_finished_folds(prep):
    cfg = LengthRidgeConfig(name="len", kind="length-ridge")
    LengthRidge.fits, LengthRidge.crash_on = [], 1
    try:
        with pytest.raises(RuntimeError, match="killed"):
            run_local([cfg], prep)
    finally:
        LengthRidge.crash_on = -1
    model_dir = prep.workspace.model_dir("len")
    assert (model_dir / "fold0" / "oof.parquet").exists()
    assert not (model_dir / "fold1").exists()  # half a fold never appears under its real name
    assert not list(model_dir.glob(".fold1*"))
    assert not (model_dir / "oof.parquet").exists()
    LengthRidge.fits = []
    run_local([cfg], prep)
    assert LengthRidge.fits == [1, 2]
    assert (model_dir / "oof.parquet").exists()
    LengthRidge.fits = []
    run_local([cfg], prep)
    assert LengthRidge.fits == []  # up to date: nothing retrained


def test_changed_config_is_stale_and_archived(prep):
    run_local([LengthRidgeConfig(name="len", kind="length-ridge")], prep)
    LengthRidge.fits = []
    run_local([LengthRidgeConfig(name="len", kind="length-ridge", alpha=10.0)], prep)
    assert LengthRidge.fits == [0, 1, 2]
    archived = list((prep.workspace.root / "models" / ".stale").iterdir())
    assert len(archived) == 1 and (archived[0] / "oof.parquet").exists()


def test_zoo_members_resolved_with_overrides(tmp_path):
    (tmp_path / "len.yaml").write_text("name: len\nkind: length-ridge\nalpha: 2.0\n")
    cfg = RunConfig(members=["len.yaml", {"include": "len.yaml", "set": {"name": "len5", "alpha": 5.0}}],
                    source=str(tmp_path / "zoo.yaml"), member_overrides={"len5": ["alpha=7"]})
    a, b = resolve_members(cfg)
    assert (a.name, a.alpha, b.name, b.alpha) == ("len", 2.0, "len5", 7.0)
    cfg.member_overrides = {"nobody": ["alpha=1"]}
    with pytest.raises(ValueError, match="unknown member"):
        resolve_members(cfg)
