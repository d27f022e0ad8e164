"""First contact with checkpoints shaped like the real ones: a DeBERTa-v3 folder as the hub ships it (fp16
`pytorch_model.bin`, `spm.model`, config without dtype) or bf16 safetensors, trained and predicted through the
same `fb3stack train ... --set backbone=<folder>` path a user runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_tiny_deberta import build_hub_like_deberta_v3, tiny_config
from safetensors.torch import load_file

from fb3stack.base.runner import SavedMember
from fb3stack.base.transformer.backbone import load_backbone, load_tokenizer
from fb3stack.cli.main import main
from fb3stack.constants import FOLD_COL, ID_COL, TARGETS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["bin-fp16", "safetensors-bf16"])
def hub_folder(request, tmp_path_factory, train_df) -> Path:
    folder = tmp_path_factory.mktemp(f"deberta-v3-{request.param}")
    return build_hub_like_deberta_v3(folder, train_df["full_text"].head(400), weights=request.param)


def test_folder_is_shaped_like_the_hub(hub_folder):
    config = json.loads((hub_folder / "config.json").read_text())
    assert "dtype" not in config and "torch_dtype" not in config
    if (hub_folder / "pytorch_model.bin").exists():
        state = torch.load(hub_folder / "pytorch_model.bin", weights_only=True)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    else:
        from safetensors.torch import load_file

        state = load_file(str(hub_folder / "model.safetensors"))
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.bfloat16}
    assert (hub_folder / "spm.model").is_file() and not (hub_folder / "tokenizer.json").exists()


def test_half_precision_checkpoint_loads_as_float32(hub_folder):
    cfg = tiny_config(hub_folder)
    model = load_backbone(cfg, hub_folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.dtype == torch.float32
    # the values are the checkpoint's, widened (not re-initialised)
    emb = model.get_input_embeddings().weight
    assert emb.abs().sum() > 0 and torch.equal(emb, emb.half().float()) or torch.equal(emb, emb.bfloat16().float())
    tok = load_tokenizer(hub_folder)
    assert tok.is_fast and type(tok).__name__ == "DebertaV2Tokenizer"


def test_user_path_trains_two_folds_and_reloads(hub_folder, fb3_dir, tmp_path):
    ws = tmp_path / "ws"
    rc = main(["train", str(REPO / "configs/models/deberta-v3-base.yaml"), "--data-dir", str(fb3_dir),
               "--workspace", str(ws), "--set", f"backbone={hub_folder}", "--set", "data.limit=160",
               "--set", "folds.n_folds=2", "--set", "max_len=96", "--set", "epochs=3", "--set", "batch_size=8",
               "--set", "device=cpu", "--set", "amp=none", "--set", "evals_per_epoch=1", "--set", "lr=2e-3",
               "--set", "head_lr=5e-3", "--set", "adversarial=none", "--set", "warmup_ratio=0"])
    assert rc == 0
    model_dir = ws / "models" / "deberta-v3-base"
    for k in range(2):
        fold = model_dir / f"fold{k}"
        history = pd.read_csv(fold / "history.csv")
        assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
        saved = json.loads((fold / "backbone" / "config.json").read_text())
        assert saved["dtype"] == "float32"
        assert json.loads((fold / "preprocess.json").read_text()) == {
            "max_len": 96, "truncation": "head_tail", "head_ratio": 0.5, "newline_token": "[BR]"}
        tok = load_tokenizer(fold / "tokenizer")
        ids = tok("First paragraph.[BR]Second one.")["input_ids"]
        assert tok.convert_tokens_to_ids("[BR]") in ids
        assert tok.convert_tokens_to_ids("[BR]") not in tok("First paragraph. Second one.")["input_ids"]
        metrics = json.loads((fold / "metrics.json").read_text())
        # epoch ends from the config's eval_start (2.0) on: epochs 2 and 3 (no evaluation before eval_start)
        assert metrics["n_evals"] == 2 and metrics["best_valid_mcrmse"] <= metrics["last_valid_mcrmse"]
    # a reloaded fold predicts its own validation essays exactly as its OOF says
    member = SavedMember.load(model_dir)
    oof = pd.read_parquet(model_dir / "oof.parquet")
    prep = pd.read_csv(ws / "folds.csv").merge(pd.read_csv(fb3_dir / "train.csv"), on=ID_COL)
    valid = prep[prep[FOLD_COL] == 0].reset_index(drop=True)
    from fb3stack.base.transformer.member import TransformerMember

    # ... from its fp16 checkpoint, within 2e-3 of the OOF, which the fp32 weights in training predicted
    stored = load_file(str(model_dir / "fold0" / "model.safetensors"))
    assert {v.dtype for k, v in stored.items() if not k.startswith("fc.")} == {torch.float16}  # head: fp32
    preds = TransformerMember(member.config).predict_fold(valid, model_dir / "fold0")
    expected = oof.set_index(ID_COL).loc[valid[ID_COL], list(TARGETS)].to_numpy()
    np.testing.assert_allclose(preds, expected, atol=2e-3)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics["oof_checkpoints"]) == {"best", "last"}
    assert metrics["oof_checkpoints"]["best"] == pytest.approx(metrics["mcrmse"])
