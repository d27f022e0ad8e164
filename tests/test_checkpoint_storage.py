"""Fold checkpoints on disk: half precision, frozen parameters stored once per member and checked by hash, and
prediction batched by a token budget. Tiny real DeBERTa-v2 backbones (tests/helpers_tiny_deberta.py), real essays."""

from __future__ import annotations

import contextlib
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers_tiny_deberta import TINY, build_tiny_deberta, tiny_config
from safetensors.torch import load_file, save_file
from transformers import DebertaV2Config, DebertaV2Model

from fb3stack.base.runner import SavedMember
from fb3stack.base.transformer.checkpoint import (
    FROZEN_REF,
    CheckpointWriter,
    bytes_per_param,
    checkpoint_bytes,
    frozen_names,
    load_checkpoint,
)
from fb3stack.base.transformer.data import TokenBudgetSampler, padded_width
from fb3stack.base.transformer.member import TransformerMember
from fb3stack.cli.main import main
from fb3stack.constants import ID_COL, TARGETS
from fb3stack.io import read_json
from fb3stack.workspace import CorruptArtefactError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, train_df):
    return build_tiny_deberta(tmp_path_factory.mktemp("tiny_ckpt"), train_df["full_text"].head(200))


def _split(train_df, n_train=32, n_valid=24):
    rows = train_df.head(n_train + n_valid)
    return rows.iloc[:n_train].reset_index(drop=True), rows.iloc[n_train:].reset_index(drop=True)


def _float_dtypes(path) -> set[torch.dtype]:
    """Of everything but the 6-output head, which stays fp32 (checkpoint.KEEP_FP32)."""
    stored = load_file(str(path))
    assert {stored["fc.weight"].dtype, stored["fc.bias"].dtype} == {torch.float32}
    return {v.dtype for k, v in stored.items() if v.is_floating_point() and not k.startswith("fc.")}


def test_fp16_checkpoint_is_half_the_size_and_predicts_within_2e3(tiny, train_df, tmp_path):
    train, valid = _split(train_df)
    preds, sizes = {}, {}
    for storage in ("fp32", "fp16"):
        fold = tmp_path / storage / "fold0"
        fold.mkdir(parents=True)
        member = TransformerMember(tiny_config(tiny, epochs=2, checkpoint_dtype=storage))
        result = member.fit_fold(train, valid, 0, fold)
        assert _float_dtypes(fold / "model.safetensors") == {torch.float16 if storage == "fp16" else torch.float32}
        sizes[storage] = (fold / "model.safetensors").stat().st_size
        preds[storage] = member.predict_fold(valid, fold)
        model, _ = member.load_fold(fold)
        assert {p.dtype for p in model.parameters()} == {torch.float32}  # loaded into the dtype the run needs
    np.testing.assert_allclose(preds["fp32"], result.preds, atol=1e-5)  # same training: fp32 is exact
    diff = np.abs(preds["fp16"] - preds["fp32"]).max()
    assert 0 < diff < 2e-3, diff
    assert 0.45 < sizes["fp16"] / sizes["fp32"] < 0.55


def test_value_that_overflows_fp16_is_stored_in_fp32(tmp_path, caplog):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight[0, 0] = 1e6  # beyond fp16's 65504: would be stored as inf
    with caplog.at_level(logging.WARNING):
        CheckpointWriter(tmp_path, "fp16").save(model)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert stored["1.weight"].dtype == torch.float32 and stored["0.weight"].dtype == torch.float16
    assert "1.weight" in caplog.text and "overflows" in caplog.text
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    load_checkpoint(fresh, tmp_path)
    assert fresh[1].weight[0, 0].item() == 1e6 and torch.isfinite(fresh[0].weight).all()


def test_checkpoint_bytes_from_the_config_alone(tiny):
    full_fold, full_shared = checkpoint_bytes(tiny_config(tiny, checkpoint_dtype="fp32"))
    half_fold, half_shared = checkpoint_bytes(tiny_config(tiny))
    head = 32 * 6 + 6  # the 6-output head stays fp32 (KEEP_FP32): 4 bytes a parameter in both
    assert full_shared == half_shared == 0 and full_fold == 2 * half_fold - 4 * head
    fold, shared = checkpoint_bytes(tiny_config(tiny, freeze_layers=2))
    assert fold + shared == half_fold and 0 < fold < shared
    assert bytes_per_param("fp16") == bytes_per_param("bf16") == 2 and bytes_per_param("fp32") == 4


def _write_frozen_zoo(root, backbone) -> None:
    member = {**vars(tiny_config(backbone, name="tiny-frozen", freeze_layers=2, epochs=1, checkpoint_dtype="fp32"))}
    member["betas"] = list(member["betas"])
    zoo = {"name": "frozen", "data": {"limit": 64, "limit_seed": 1}, "folds": {"n_folds": 2, "seed": 0},
           "members": [member],
           "blend": {"name": "b", "members": ["tiny-frozen"], "methods": [{"name": "mean", "kind": "mean"}]}}
    (root / "zoo.yaml").write_text(yaml.safe_dump(zoo))


@pytest.fixture(scope="module")
def frozen_run(tiny, fb3_dir, tmp_path_factory):
    """A workspace with a tiny DeBERTa-v2 member whose embeddings and first 2 of 3 layers are frozen, 2 folds,
    blended and predicted (fp32 storage: the split into fold part + frozen part must reproduce exactly)."""
    root = tmp_path_factory.mktemp("frozen_run")
    _write_frozen_zoo(root, tiny)
    assert main(["run", str(root / "zoo.yaml"), "--workspace", str(root / "ws"), "--data-dir", str(fb3_dir)]) == 0
    return root


def test_frozen_part_is_stored_once_per_member(frozen_run, tiny):
    model_dir = frozen_run / "ws" / "models" / "tiny-frozen"
    shared = list((model_dir / "shared").iterdir())
    assert len(shared) == 1  # one file for both folds
    frozen = load_file(str(shared[0]))
    pretrained = load_file(str(tiny / "model.safetensors"))
    assert any(k.endswith("encoder.layer.1.output.dense.weight") for k in frozen)
    for key, tensor in frozen.items():  # the backbone's own weights, untouched by training
        torch.testing.assert_close(tensor, pretrained[key.removeprefix("backbone.")], rtol=0, atol=0)
    for k in range(2):
        fold = model_dir / f"fold{k}"
        ref = read_json(fold / FROZEN_REF)
        assert (fold / ref["file"]).resolve() == shared[0].resolve()
        assert FROZEN_REF in read_json(fold / "files.json")["files"]  # sealed: the fold's digest covers its hash
        stored = load_file(str(fold / "model.safetensors"))
        assert not set(stored) & set(frozen)  # a fold stores only what training changed
        assert any(k.endswith("encoder.layer.2.output.dense.weight") for k in stored) and "fc.weight" in stored
        assert (fold / "model.safetensors").stat().st_size < shared[0].stat().st_size


def test_fold_with_shared_frozen_part_predicts_as_one_that_stored_everything(frozen_run, fb3_dir):
    ws = frozen_run / "ws"
    model_dir = ws / "models" / "tiny-frozen"
    member = TransformerMember(SavedMember.load(model_dir).config)
    oof = pd.read_parquet(model_dir / "oof.parquet")
    folds = pd.read_csv(ws / "folds.csv").merge(pd.read_csv(fb3_dir / "train.csv"), on=ID_COL)
    valid = folds[folds["fold"] == 0].reset_index(drop=True)
    expected = oof.set_index(ID_COL).loc[valid[ID_COL], list(TARGETS)].to_numpy()  # the full weights in training
    np.testing.assert_allclose(member.predict_fold(valid, model_dir / "fold0"), expected, atol=1e-5)
    # and a copy of the fold holding every parameter itself predicts the same
    model, _ = member.load_fold(model_dir / "fold0")
    whole = ws.parent / "whole" / "fold0"
    shutil.copytree(model_dir / "fold0", whole)
    (whole / FROZEN_REF).unlink()
    CheckpointWriter(whole, "fp32").save(model)
    assert not frozen_names(model) and set(load_file(str(whole / "model.safetensors"))) >= set(
        load_file(str(next((model_dir / "shared").iterdir()))))
    np.testing.assert_allclose(member.predict_fold(valid, whole), expected, atol=1e-5)


def test_bundle_carries_the_frozen_part_once(frozen_run, fb3_dir, tmp_path):
    ws = frozen_run / "ws"
    bundle = tmp_path / "bundle"
    assert main(["bundle", "--workspace", str(ws), "--out", str(bundle), "--no-wheels"]) == 0
    assert len(list((bundle / "models" / "tiny-frozen" / "shared").iterdir())) == 1
    out = tmp_path / "sub.csv"
    assert main(["predict", "--bundle", str(bundle), "--test", str(fb3_dir / "test.csv"), "--out", str(out),
                 "--cache", str(tmp_path / "cache")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(ws / "submission.csv"))


def test_mismatched_frozen_part_is_refused(frozen_run, fb3_dir, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(frozen_run, root)
    model_dir = root / "ws" / "models" / "tiny-frozen"
    shared = next((model_dir / "shared").iterdir())
    # another backbone of the same architecture: same tensor names and shapes, other weights
    torch.manual_seed(123)
    other = DebertaV2Model(DebertaV2Config(vocab_size=load_file(str(shared))[
        "backbone.embeddings.word_embeddings.weight"].shape[0], pad_token_id=0, **TINY))
    state = other.state_dict()
    save_file({k: state[k.removeprefix("backbone.")].contiguous() for k in load_file(str(shared))}, str(shared),
              metadata={"format": "pt"})
    member = TransformerMember(SavedMember.load(model_dir).config)
    with pytest.raises(CorruptArtefactError, match="not the one this fold was trained with"):
        member.load_fold(model_dir / "fold0")
    with pytest.raises(CorruptArtefactError, match="frozen part"):
        SavedMember.load(model_dir).verify()
    capsys.readouterr()
    assert main(["predict", "--workspace", str(root / "ws"), "--test", str(fb3_dir / "test.csv"), "--out",
                 str(tmp_path / "sub.csv"), "--cache", str(tmp_path / "cache")]) == 2
    assert "frozen part" in capsys.readouterr().err
    # `run` sets the folds aside and trains them again, which writes the right frozen part back
    assert main(["run", str(root / "zoo.yaml"), "--workspace", str(root / "ws"), "--data-dir", str(fb3_dir)]) == 0
    assert len(list((root / "ws" / "models" / ".corrupt").iterdir())) == 2
    SavedMember.load(model_dir).verify()
    shared.unlink()
    with pytest.raises(CorruptArtefactError, match="missing"):
        member.load_fold(model_dir / "fold1")


def test_token_budget_batches_cover_rows_and_fit_the_budget():
    lengths = [5, 40, 12, 40, 7, 3, 33, 20, 64, 1]
    batches = TokenBudgetSampler(lengths, max_tokens=80).batches()
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    order = [i for b in batches for i in b]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 80
    assert [len(b) for b in batches] == [1, 2, 2, 5]  # 64 | 40 40 | 33 20 | 12 7 5 3 1: short essays share
    # padded as training pads (pad_to_multiple_of): the budget counts the padded width, and every batch's width is
    # one of a bounded set
    padded = TokenBudgetSampler(lengths, max_tokens=80, pad_to_multiple_of=16, max_len=64).batches()
    assert [len(b) for b in padded] == [1, 1, 1, 1, 2, 4]  # widths 64 | 48 | 48 | 48 | 32: 20 12 | 16: 7 5 3 1
    for b in padded:
        assert len(b) == 1 or len(b) * padded_width(max(lengths[i] for i in b), 16, 64) <= 80


def test_token_batched_prediction_matches_fixed_batches_on_cpu(tiny, train_df, tmp_path, caplog):
    train, valid = _split(train_df, n_valid=30)
    member = TransformerMember(tiny_config(tiny, epochs=1, checkpoint_dtype="fp32"))
    member.fit_fold(train, valid, 0, tmp_path)
    with caplog.at_level(logging.INFO, logger="fb3stack.base.transformer.member"):
        fixed = member.predict_fold(valid, tmp_path)  # CPU default: batches of eval_batch_size, as before
    assert "autocast fp32, batches of 16" in caplog.text
    member.config.eval_tokens = 200
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fb3stack.base.transformer.member"):
        by_tokens = member.predict_fold(valid, tmp_path)
    assert "batches of <= 200 tokens" in caplog.text
    np.testing.assert_allclose(by_tokens, fixed, atol=1e-5)


class FakeGpuAccelerator:
    """accelerate's Accelerator on a CUDA GPU as the Engine sees it, computing on the CPU (as in the engine tests):
    what prediction asks for is recorded."""

    device, scaler, asked = torch.device("cpu"), None, {}

    def __init__(self, **kwargs):
        FakeGpuAccelerator.asked = kwargs

    def autocast(self):
        return contextlib.nullcontext()

    def unwrap_model(self, model):
        return model


def test_gpu_prediction_autocasts_and_batches_by_tokens(tiny, train_df, tmp_path, monkeypatch, caplog):
    """On a T4 (no native bf16) prediction autocasts fp16, on an A100 bf16, both batched by tokens; the device is
    faked as the engine tests fake it, the numbers are computed on the CPU."""
    import accelerate

    train, valid = _split(train_df, n_valid=30)
    # the CPU reference in fp32 (amp auto is bf16 on CPUs with native bf16): the faked GPU computes in fp32 too
    monkeypatch.setattr("fb3stack.base.transformer.engine.cpu_has_native_bf16", lambda: False)
    member = TransformerMember(tiny_config(tiny, epochs=1, checkpoint_dtype="fp32", device="auto", amp="auto"))
    member.fit_fold(train, valid, 0, tmp_path)
    on_cpu = member.predict_fold(valid, tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "GPU (test)")
    monkeypatch.setattr(accelerate, "Accelerator", FakeGpuAccelerator)
    for capability, precision in (((7, 5), "fp16"), ((8, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability, **k: c)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fb3stack.base.transformer.member"):
            preds = member.predict_fold(valid, tmp_path)
        assert FakeGpuAccelerator.asked["mixed_precision"] == precision and FakeGpuAccelerator.asked["cpu"] is False
        assert f"autocast {precision}, batches of <= {16 * 64} tokens" in caplog.text  # eval_batch_size x max_len
        np.testing.assert_allclose(preds, on_cpu, atol=1e-5)
    member.config.eval_tokens = 0  # off everywhere
    assert member.token_budget(torch.device("cuda"), 64) == 0
