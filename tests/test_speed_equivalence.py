"""Speed-ups change no result: bucketed dynamic padding predicts what full max_len padding predicts, the fused
AdamW trains to the same OOF as the for-loop one, and CPU threads/autocast are only touched where harmless."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_tiny_deberta import build_tiny_deberta, tiny_config
from torch import nn

from fb3stack.base.transformer.backbone import load_backbone, load_tokenizer
from fb3stack.base.transformer.data import TokenCache, make_loader
from fb3stack.base.transformer.engine import Engine, physical_cores, pick_amp
from fb3stack.base.transformer.member import TransformerMember
from fb3stack.base.transformer.model import FB3Model
from fb3stack.base.transformer.optim import make_optimizer
from fb3stack.base.transformer.trainer import predict


@pytest.fixture(scope="module")
def tiny(train_df, tmp_path_factory):
    return build_tiny_deberta(tmp_path_factory.mktemp("tiny"), train_df["full_text"].iloc[:300])


def test_bucketed_predictions_equal_full_padding_in_input_order(train_df, tiny):
    # real essays cut to varied lengths, so batches really differ in padding between the two ways
    rng = np.random.default_rng(0)
    texts = [" ".join(t.split()[:n]) for t, n in zip(train_df["full_text"].iloc[:40], rng.integers(3, 90, 40))]
    cfg = tiny_config(tiny, max_len=128)
    tokenizer = load_tokenizer(tiny)
    torch.manual_seed(0)
    model = FB3Model(load_backbone(cfg, tiny), cfg)
    ids = TokenCache(tokenizer, cfg.max_len).encode(texts)
    lengths = [len(x) for x in ids]
    assert min(lengths) < 20 and max(lengths) > 80
    fast, _ = predict(Engine(model, "cpu", "none"), make_loader(ids, None, 8, False, tokenizer.pad_token_id))

    # the seed notebook's way: every essay padded to max_len, input order, one batch, no_grad
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=cfg.max_len, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        slow = model(enc["input_ids"], enc["attention_mask"])[0].numpy()
    assert np.abs(slow - slow.mean(0)).max() > 1e-3  # the essays get different predictions
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_fused_adamw_trains_to_the_same_oof_as_the_for_loop(train_df, tiny, tmp_path):
    df = train_df.iloc[:48]
    preds = {}
    for impl, seed in (("for-loop", 0), ("auto", 0), ("auto", 1)):
        cfg = tiny_config(tiny, epochs=2, optimizer_impl=impl, seed=seed)
        out = tmp_path / f"{impl}-{seed}"
        out.mkdir()
        preds[impl, seed] = TransformerMember(cfg).fit_fold(df.iloc[:32], df.iloc[32:], 0, out).preds
    cfg = tiny_config(tiny)
    assert make_optimizer(FB3Model(load_backbone(cfg, tiny), cfg), cfg).defaults["fused"]  # auto is fused here
    np.testing.assert_allclose(preds["auto", 0], preds["for-loop", 0], atol=1e-4)
    # the tolerance is far tighter than what a real change (another seed) moves
    assert np.abs(preds["auto", 1] - preds["auto", 0]).max() > 1e-2


def test_cpu_threads_are_capped_at_physical_cores_never_raised():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(physical_cores() + 2)
        Engine(nn.Linear(2, 2), "cpu", "none")
        assert torch.get_num_threads() == physical_cores()
        torch.set_num_threads(1)
        Engine(nn.Linear(2, 2), "cpu", "none")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("fast_bf16", "amx"), [(True, True), (True, False), (False, False)])
def test_cpu_auto_is_bf16_only_where_native(monkeypatch, fast_bf16, amx):
    from fb3stack.base.transformer import engine

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: fast_bf16)
    monkeypatch.setattr(engine, "cpu_has_amx", lambda: amx)
    cpu = torch.device("cpu")
    assert pick_amp("fp16", cpu) is None and pick_amp("none", cpu) is None
    # auto: bf16 wherever the CPU computes it natively (AVX512-BF16 or AMX), never emulated bf16
    assert pick_amp("auto", cpu) == (torch.bfloat16 if fast_bf16 else None)
    # bf16 only when asked for and the CPU has it natively; otherwise fp32 with a warning
    assert pick_amp("bf16", cpu) == (torch.bfloat16 if fast_bf16 else None)
