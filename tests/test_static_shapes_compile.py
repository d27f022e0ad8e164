"""Static shapes (`pad_to_multiple_of`) and `torch.compile` (`compile`) change how a fold runs, not what it learns:
same predictions and losses as dynamic padding and eager execution, within float rounding."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from helpers_tiny_deberta import build_tiny_deberta, tiny_config

from fb3stack.base.transformer import model as model_mod
from fb3stack.base.transformer.backbone import load_backbone, load_tokenizer
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.data import TokenCache, make_loader, padded_width
from fb3stack.base.transformer.engine import Engine
from fb3stack.base.transformer.member import TransformerMember
from fb3stack.base.transformer.model import FB3Model
from fb3stack.base.transformer.trainer import predict
from fb3stack.config import ConfigError, from_dict, to_dict
from fb3stack.hardware import cpu_has_native_bf16


@pytest.fixture(scope="module")
def tiny(train_df, tmp_path_factory):
    return build_tiny_deberta(tmp_path_factory.mktemp("tiny"), train_df["full_text"].iloc[:300])


def test_padded_width_rounds_up_and_stops_at_max_len() -> None:
    assert padded_width(37) == 37
    assert [padded_width(n, 16) for n in (1, 16, 17, 33)] == [16, 16, 32, 48]
    assert padded_width(500, 64, max_len=512) == 512  # 512, not past the backbone's positions
    assert padded_width(510, 64, max_len=500) == 510  # never shorter than the longest essay
    assert padded_width(100, 64, max_len=500) == 128


def test_loader_widths_are_multiples_and_bounded(train_df, tiny) -> None:
    tokenizer = load_tokenizer(tiny)
    rng = np.random.default_rng(0)
    texts = [" ".join(t.split()[:n]) for t, n in zip(train_df["full_text"].iloc[:120], rng.integers(3, 120, 120))]
    ids = TokenCache(tokenizer, 100).encode(texts)
    y = np.zeros((len(ids), 6), np.float32)
    free = {tuple(b["input_ids"].shape) for b in make_loader(ids, y, 8, True, 0, bucket_batches=2)}
    fixed = [b for b in make_loader(ids, y, 8, True, 0, bucket_batches=2, pad_to_multiple_of=32, max_len=100)]
    widths = {b["input_ids"].shape[1] for b in fixed}
    assert widths <= {32, 64, 96, 100} and len(widths) <= 4 < len({w for _, w in free})
    for b in fixed:  # padding is the pad id, masked out
        assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()
    assert sum(int(b["attention_mask"].sum()) for b in fixed) == sum(len(x) for x in ids)


def test_padded_predictions_equal_dynamic_padding(train_df, tiny) -> None:
    rng = np.random.default_rng(1)
    texts = [" ".join(t.split()[:n]) for t, n in zip(train_df["full_text"].iloc[:40], rng.integers(3, 90, 40))]
    cfg = tiny_config(tiny, max_len=128)
    torch.manual_seed(0)
    model = FB3Model(load_backbone(cfg, tiny), cfg)
    ids = TokenCache(load_tokenizer(tiny), cfg.max_len).encode(texts)
    engine = Engine(model, "cpu", "none")
    dynamic, _ = predict(engine, make_loader(ids, None, 8, False, 0))
    padded, _ = predict(engine, make_loader(ids, None, 8, False, 0, pad_to_multiple_of=64, max_len=128))
    assert np.abs(dynamic - dynamic.mean(0)).max() > 1e-3
    np.testing.assert_allclose(padded, dynamic, atol=1e-5)


def test_shape_and_compile_settings_are_checked_and_execution_only() -> None:
    base = {"name": "m", "kind": "transformer"}
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        from_dict(TransformerConfig, {**base, "pad_to_multiple_of": 0})
    with pytest.raises(ConfigError, match="compile"):
        from_dict(TransformerConfig, {**base, "compile": "graph"})
    cfg = from_dict(TransformerConfig, {**base, "pad_to_multiple_of": 64, "compile": "layers",
                                        "compile_mode": "max-autotune", "compile_dynamic": False})
    # left out of the member's config hash: a compiled run reuses (and is reused by) an eager run's folds
    assert to_dict(cfg, results_only=True) == to_dict(from_dict(TransformerConfig, base), results_only=True)


@pytest.fixture(autouse=True)
def _keep_threads():
    """The fits below run on one thread (a tiny model on 2 busy cores runs ~10x faster so); restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _fit(tiny, train_df, tmp_path, name: str, **overrides):
    df = train_df.iloc[:40]
    # dropout off: inductor draws its own dropout masks (same distribution, other numbers), so with dropout a
    # compiled run differs from eager as another seed does; regression fine-tunes run without dropout
    cfg = tiny_config(tiny, epochs=2, batch_size=8, max_len=64, eval_every=2, gradient_checkpointing=True,
                      adversarial="fgm", adv_start_epoch=0, fgm_eps=0.5, num_threads=1, hidden_dropout=0.0,
                      attention_dropout=0.0, head_dropout=0.0, **overrides)
    out = tmp_path / name
    out.mkdir()
    res = TransformerMember(cfg).fit_fold(df.iloc[:32], df.iloc[32:], 0, out)
    return res


def _assert_same_training(eager, other, rtol: float) -> None:
    np.testing.assert_allclose(other.history["train_loss"], eager.history["train_loss"], rtol=rtol)
    np.testing.assert_allclose(other.history["valid_mcrmse"], eager.history["valid_mcrmse"], rtol=rtol)
    np.testing.assert_allclose(other.preds, eager.preds, atol=10 * rtol)


@pytest.mark.parametrize("how", ["layers", "model"])
def test_compiled_model_trains_like_eager_fast(train_df, tiny, tmp_path, monkeypatch, how) -> None:
    """Dynamo's graph capture and AOT autograd (backend aot_eager: no code generation, seconds) through the whole
    fold: gradient checkpointing, FGM's second pass on perturbed embeddings, evaluations, static padded shapes,
    the kept checkpoint."""
    eager = _fit(tiny, train_df, tmp_path, "eager", pad_to_multiple_of=64)  # one width: one graph to trace
    torch._dynamo.reset()
    monkeypatch.setattr(model_mod, "compile_model", functools.partial(model_mod.compile_model, backend="aot_eager"))
    compiled = _fit(tiny, train_df, tmp_path, "compiled", pad_to_multiple_of=64, compile=how,
                    compile_dynamic=False)
    assert len(eager.history) >= 4 and eager.history["train_loss"].iloc[-1] != eager.history["train_loss"].iloc[0]
    _assert_same_training(eager, compiled, 1e-4)
    # the checkpoint has the eager parameter names: a compiled fold predicts under eager and vice versa
    cfg = tiny_config(tiny)
    m = TransformerMember(cfg).load_fold(tmp_path / "compiled")[0]
    assert set(m.state_dict()) == set(FB3Model(load_backbone(cfg, tiny), cfg).state_dict())


@pytest.mark.slow
def test_inductor_compile_trains_like_eager(train_df, tiny, tmp_path) -> None:
    """The real compiler (inductor, C++ code on CPU; ~13 min on 2 busy cores): same losses, scores and
    predictions as eager (measured: predictions within 2.4e-7, losses equal)."""
    eager = _fit(tiny, train_df, tmp_path, "eager", pad_to_multiple_of=64)
    torch._dynamo.reset()
    compiled = _fit(tiny, train_df, tmp_path, "layers", pad_to_multiple_of=64, compile="layers",
                    compile_dynamic=False)
    _assert_same_training(eager, compiled, 1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU bf16 autocast needs native bf16")
def test_inductor_compile_under_bf16_autocast(train_df, tiny, tmp_path) -> None:
    eager = _fit(tiny, train_df, tmp_path, "eager", pad_to_multiple_of=64, amp="bf16")
    torch._dynamo.reset()
    compiled = _fit(tiny, train_df, tmp_path, "compiled", pad_to_multiple_of=64, amp="bf16", compile="layers",
                    compile_dynamic=False)
    _assert_same_training(eager, compiled, 3e-2)  # bf16: the compiler fuses and rounds differently
