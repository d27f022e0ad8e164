"""The frozen prefix computed once (fb3stack/base/transformer/prefix.py): the cached path computes what the plain
frozen path computes (BERT as MiniLM, MPNet, DeBERTa-v2 with its conv, DeBERTa-v3 as the hub ships it), a
damaged or stale store is never used, and prediction makes one prefix pass for all folds.

Tolerances: fp32 storage (no autocast) reproduces the plain path to float rounding of differently shaped
matmuls (1e-5); bf16 autocast stores fp16 and is compared at 2e-2 (bf16 itself rounds at 4e-3 per matmul).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_tiny_deberta import V3_TINY, build_tiny_deberta, tiny_config
from transformers import AutoConfig, AutoModel, BertConfig, DebertaV2Config, MPNetConfig

from fb3stack.base.transformer import prefix as prefix_mod
from fb3stack.base.transformer.backbone import prepare_backbone
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.model import FB3Model
from fb3stack.base.transformer.prefix import PrefixPlan, compute_prefix, essay_key

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=500,
             max_position_embeddings=160)
ARCHS = {
    "bert": lambda: BertConfig(**SMALL),
    "mpnet": lambda: MPNetConfig(**SMALL),
    "deberta-v2-conv": lambda: DebertaV2Config(**SMALL, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                               position_biased_input=False, position_buckets=32, type_vocab_size=0,
                                               conv_kernel_size=3, conv_act="gelu"),
    "deberta-v3-hub": lambda: AutoConfig.for_model(**{**V3_TINY, "num_hidden_layers": 4}),
}


def _no_autocast() -> torch.autocast:
    return torch.autocast("cpu", enabled=False)


def _model(arch: str, freeze: int, pooler: str, seed: int = 0) -> FB3Model:
    torch.manual_seed(seed)
    config = ARCHS[arch]()
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    cfg = TransformerConfig(name="t", kind="transformer", freeze_layers=freeze, pooler=pooler, pooler_layers=4,
                            hidden_dropout=0.0, attention_dropout=0.0)
    model = FB3Model(prepare_backbone(AutoModel.from_config(config, dtype=torch.float32), cfg), cfg)
    model.set_bias(torch.full((6,), 3.0))
    return model


def _essays(n: int = 10, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.concatenate([[1], rng.integers(5, 500, int(rng.integers(6, 40))), [2]]).astype(np.int32)
            for _ in range(n)]


def _batch(tokens: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in tokens)
    ids = torch.zeros((len(tokens), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(tokens):
        ids[i, : len(t)], mask[i, : len(t)] = torch.from_numpy(t.astype(np.int64)), 1
    return ids, mask


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize(("freeze", "pooler"), [(1, "weighted-layer"), (2, "mean"), (3, "mean-concat")])
def test_cached_path_equals_plain_frozen_path(arch, freeze, pooler):
    model = _model(arch, freeze, pooler)
    tokens = _essays()
    plan = PrefixPlan.build(model.backbone, freeze, model.pooler)
    assert plan is not None and f"layer{freeze - 1}" in plan.keep
    store = compute_prefix(model.backbone, plan, tokens, _no_autocast, torch.device("cpu"),
                           None)
    ids, mask = _batch(tokens[2:9])
    y = torch.rand(len(ids), 6) + 2.5
    rows = torch.from_numpy(store.rows(tokens[2:9]))
    results = []
    for use_cache in (False, True):
        model.prefix = (plan, store) if use_cache else None
        model.zero_grad(set_to_none=True)
        model.train()
        pred, pooled = model(ids, mask, rows)
        loss = torch.nn.functional.smooth_l1_loss(pred, y)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.eval()
        with torch.no_grad():
            eval_pred = model(ids, mask, rows)[0]
        results.append((loss.detach(), pooled.detach(), grads, eval_pred))
    (l0, f0, g0, e0), (l1, f1, g1, e1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f1, f0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e1, e0, rtol=1e-5, atol=1e-5)
    assert set(g1) == set(g0) and not any(n.startswith("backbone.embeddings") for n in g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cached_path_skips_the_frozen_layers():
    """The replayed modules do not run: their forward is never called while the cache is on."""
    model = _model("bert", 2, "mean")
    tokens = _essays()
    plan = PrefixPlan.build(model.backbone, 2, model.pooler)
    store = compute_prefix(model.backbone, plan, tokens, _no_autocast, torch.device("cpu"),
                           None)
    calls = []
    layers = model.backbone.encoder.layer
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
    real = type(layers[0]).forward
    computed = []
    type(layers[0]).forward = lambda self, *a, **k: (computed.append(id(self)), real(self, *a, **k))[1]
    try:
        model.prefix = (plan, store)
        ids, mask = _batch(tokens[:4])
        model(ids, mask, torch.from_numpy(store.rows(tokens[:4])))
    finally:
        type(layers[0]).forward = real
    assert sorted(set(calls)) == [0, 1, 2, 3]  # every module is called (hooks, hidden states) ...
    assert set(computed) == {id(layers[2]), id(layers[3])}  # ... but only the trained ones compute


def test_bf16_cached_path_within_storage_rounding():
    model = _model("bert", 1, "weighted-layer")
    tokens = _essays(8)
    plan = PrefixPlan.build(model.backbone, 1, model.pooler)
    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    store = compute_prefix(model.backbone, plan, tokens, autocast, torch.device("cpu"), torch.bfloat16)
    assert {a.dtype for a in store.states.values()} == {np.dtype("float16")}
    ids, mask = _batch(tokens)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(ids, mask)[0].float()
        model.prefix = (plan, store)
        cached = model(ids, mask, torch.from_numpy(store.rows(tokens)))[0].float()
    torch.testing.assert_close(cached, plain, rtol=2e-2, atol=2e-2)


def test_store_on_disk_is_reused_and_damage_is_recomputed(tmp_path, caplog):
    model = _model("deberta-v2-conv", 2, "mean")
    tokens = _essays()
    plan = PrefixPlan.build(model.backbone, 2, model.pooler)
    assert plan.keep[0] == "embeddings"  # the conv after layer 0 reads the embeddings again
    off = _no_autocast
    first = compute_prefix(model.backbone, plan, tokens, off, torch.device("cpu"), None, tmp_path)
    expected = {name: np.array(a) for name, a in first.states.items()}  # a copy: the store is memory-mapped
    (folder,) = tmp_path.glob("prefix-*")
    calls = []
    real = prefix_mod._allocate
    prefix_mod._allocate = lambda *a: calls.append(a) or real(*a)
    try:
        again = compute_prefix(model.backbone, plan, tokens[::-1], off, torch.device("cpu"), None, tmp_path)
        assert not calls  # same essays, same weights: read back, not computed
        for name in first.states:
            np.testing.assert_array_equal(again.states[name], expected[name])
        # a flipped byte in a stored output: refused with a warning and recomputed
        data = folder / "layer1.npy"
        raw = bytearray(data.read_bytes())
        raw[-7] ^= 0xFF
        data.write_bytes(bytes(raw))
        caplog.clear()
        fixed = compute_prefix(model.backbone, plan, tokens, off, torch.device("cpu"), None, tmp_path)
        assert calls and "damaged" in caplog.text
        np.testing.assert_array_equal(fixed.states["layer1"], expected["layer1"])
        # a half-written store (no seal) is never read either
        (folder / "seal.json").unlink()
        calls.clear()
        compute_prefix(model.backbone, plan, tokens, off, torch.device("cpu"), None, tmp_path)
        assert calls
    finally:
        prefix_mod._allocate = real


def test_store_key_changes_with_weights_essays_and_depth(tmp_path):
    off, cpu = _no_autocast, torch.device("cpu")
    tokens = _essays()
    model = _model("bert", 2, "mean")
    plan = PrefixPlan.build(model.backbone, 2, model.pooler)
    compute_prefix(model.backbone, plan, tokens, off, cpu, None, tmp_path)
    other = _model("bert", 2, "mean", seed=5)  # another backbone's frozen weights
    compute_prefix(other.backbone, plan, tokens, off, cpu, None, tmp_path)
    compute_prefix(model.backbone, plan, tokens[:-1], off, cpu, None, tmp_path)  # another set of essays
    deeper = _model("bert", 3, "mean")
    compute_prefix(deeper.backbone, PrefixPlan.build(deeper.backbone, 3, deeper.pooler), tokens, off, cpu, None,
                   tmp_path)
    assert len(list(tmp_path.glob("prefix-*"))) == 4


def test_plan_applies_only_where_verified(caplog):
    caplog.set_level("INFO")
    model = _model("bert", 0, "mean")
    assert PrefixPlan.build(model.backbone, 0, model.pooler) is None  # nothing frozen
    model = _model("bert", 2, "mean")
    assert PrefixPlan.build(model.backbone, 2, model.pooler, enabled=False) is None
    model.backbone.config.model_type = "roberta"
    assert PrefixPlan.build(model.backbone, 2, model.pooler) is None
    assert "not one of the verified architectures" in caplog.text


def test_member_trains_with_the_cache_and_prediction_shares_one_prefix_pass(tmp_path, train_df, monkeypatch):
    """A real fold fit through TransformerMember (tiny DeBERTa-v2, 2 of 3 layers frozen) equals the same fit with
    the cache off; predicting 3 folds makes one prefix pass."""
    from fb3stack.base.transformer.member import TransformerMember

    tiny = build_tiny_deberta(tmp_path / "tiny", train_df["full_text"].head(200))
    rows = train_df.head(56)
    train, valid = rows.iloc[:32].reset_index(drop=True), rows.iloc[32:].reset_index(drop=True)
    outs = {}
    for cache in (True, False):
        member = TransformerMember(tiny_config(tiny, freeze_layers=2, epochs=1, prefix_cache=cache,
                                               pooler="weighted-layer", pooler_layers=3))
        outs[cache] = member.fit_fold(train, valid, 0, tmp_path / f"fold-{cache}")
    np.testing.assert_allclose(outs[True].preds, outs[False].preds, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs[True].history["train_loss"], outs[False].history["train_loss"], rtol=1e-4)

    passes = []
    real = prefix_mod.compute_prefix
    monkeypatch.setattr("fb3stack.base.transformer.member.compute_prefix",
                        lambda *a, **k: passes.append(len(a[2])) or real(*a, **k))
    member = TransformerMember(tiny_config(tiny, freeze_layers=2, epochs=1, pooler="weighted-layer",
                                           pooler_layers=3))
    fold = tmp_path / "fold-True"
    shared = member.predict_folds(valid, [fold, fold, fold])
    assert passes == [len(valid)]  # one pass for three fold models
    monkeypatch.setattr("fb3stack.base.transformer.member.compute_prefix", real)
    plain = TransformerMember(tiny_config(tiny, freeze_layers=2, epochs=1, pooler="weighted-layer",
                                          pooler_layers=3, prefix_cache=False)).predict_fold(valid, fold)
    np.testing.assert_allclose(shared, plain, rtol=1e-4, atol=1e-5)
    assert essay_key(np.array([1, 2, 3])) != essay_key(np.array([1, 2, 4]))
