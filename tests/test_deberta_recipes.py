"""DeBERTa recipe mechanics: autocast choice per GPU generation, freezing that freezes what the frozen layers
depend on, adversaries that must have something to perturb, long-essay truncation and paragraph markers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_tiny_deberta import build_tiny_deberta, tiny_config
from transformers import DebertaV2Config, DebertaV2Model

from fb3stack.base.transformer import engine as engine_mod
from fb3stack.base.transformer.adversarial import make_adversary
from fb3stack.base.transformer.backbone import freeze, load_tokenizer, shared_modules
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.data import TokenCache, cut_head_tail, mark_paragraphs
from fb3stack.base.transformer.model import FB3Model
from fb3stack.base.transformer.optim import make_optimizer
from fb3stack.cli.main import main
from fb3stack.config import ConfigError


@pytest.mark.parametrize("capability,expected", [((6, 0), torch.float16), ((7, 5), torch.float16),
                                                 ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_amp_auto_wants_native_bf16(monkeypatch, capability, expected):
    # every one of these says yes to is_bf16_supported (emulation counts); only >= 8.0 has bf16 tensor cores
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: f"GPU sm{capability[0]}{capability[1]}")
    cuda = torch.device("cuda")
    assert engine_mod.pick_amp("auto", cuda) == expected
    assert engine_mod.pick_amp("fp16", cuda) == torch.float16
    assert engine_mod.pick_amp("none", cuda) is None


def test_amp_explicit_bf16_on_old_gpu_warns(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4 (test)")
    with caplog.at_level("WARNING"):
        assert engine_mod.pick_amp("bf16", torch.device("cuda")) == torch.bfloat16
    assert "emulated" in caplog.text and "Tesla T4 (test)" in caplog.text


@pytest.mark.parametrize("capability,expected", [((7, 5), "fp16"), ((8, 0), "bf16")])
def test_engine_hands_accelerate_the_picked_precision_on_a_gpu(monkeypatch, capability, expected):
    """What the Engine asks accelerate for on a CUDA GPU (faked here). accelerate then adds a GradScaler for
    exactly fp16 on a non-CPU device (Accelerator.__init__) and autocasts to bf16/fp16 from mixed_precision."""
    import accelerate

    asked = {}

    class FakeAccelerator:
        device, scaler = torch.device("cpu"), None

        def __init__(self, **kwargs):
            asked.update(kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "GPU (test)")
    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    engine_mod.Engine(torch.nn.Linear(2, 2), "auto", "auto", grad_accum=3)
    assert asked["mixed_precision"] == expected and asked["cpu"] is False
    assert asked["gradient_accumulation_plugin"].num_steps == 3


def test_engine_cpu_bf16_then_fp32_in_one_process(monkeypatch):
    """accelerate keeps one mixed precision per process; engines with another amp follow one another anyway."""
    monkeypatch.setattr(engine_mod, "cpu_has_native_bf16", lambda: True)
    x = torch.randn(4, 8)
    bf16 = engine_mod.Engine(torch.nn.Linear(8, 2), "cpu", "bf16")
    with bf16.autocast():
        assert bf16.model(x).dtype == torch.bfloat16
    assert bf16.scaler is None  # bf16 has fp32's range: no loss scaling
    fp32 = engine_mod.Engine(torch.nn.Linear(8, 2), "cpu", "none")
    with fp32.autocast():
        assert fp32.model(x).dtype == torch.float32
    assert fp32.accelerator.mixed_precision == "no" and fp32.scaler is None


def _v2_with_conv() -> DebertaV2Model:
    """A tiny deberta-v2-xlarge-shaped backbone: relative-position embeddings + their LayerNorm, and the conv
    that v2 runs after layer 0."""
    torch.manual_seed(0)
    return DebertaV2Model(DebertaV2Config(vocab_size=300, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                          intermediate_size=64, relative_attention=True, position_buckets=16,
                                          norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
                                          position_biased_input=False, type_vocab_size=0, conv_kernel_size=3,
                                          conv_act="gelu"))


def test_freezing_layers_freezes_what_they_depend_on():
    cfg = TransformerConfig(name="t", kind="transformer", freeze_layers=2, adversarial="none", pooler="mean",
                            device="cpu", amp="none", lr=1e-2, head_lr=1e-2, weight_decay=0.1)
    backbone = _v2_with_conv()
    shared = {name for name, _ in shared_modules(backbone)}
    assert {"encoder.rel_embeddings", "encoder.LayerNorm", "encoder.conv.conv", "encoder.conv.LayerNorm"} <= shared
    frozen = freeze(backbone, embeddings=False, n_layers=2)
    assert "embeddings" in frozen and "encoder.rel_embeddings" in frozen and "encoder.conv.conv" in frozen
    model = FB3Model(backbone, cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, cfg)
    x = torch.randint(5, 300, (4, 20))
    for _ in range(2):
        model(x, torch.ones_like(x))[0].pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    must_stay = [k for k in before if k.startswith(("backbone.embeddings.", "backbone.encoder.layer.0.",
                                                    "backbone.encoder.layer.1.", "backbone.encoder.rel_embeddings",
                                                    "backbone.encoder.LayerNorm", "backbone.encoder.conv."))]
    assert must_stay and set(must_stay) <= set(unchanged)
    assert not torch.equal(before["backbone.encoder.layer.3.output.dense.weight"],
                           after["backbone.encoder.layer.3.output.dense.weight"])


def test_adversary_with_nothing_to_perturb_is_refused():
    with pytest.raises(ValueError, match="fgm"):
        TransformerConfig(name="t", kind="transformer", freeze_embeddings=True, adversarial="fgm")
    with pytest.raises(ValueError, match="fgm"):
        TransformerConfig(name="t", kind="transformer", freeze_layers=3, adversarial="fgm")
    cfg = TransformerConfig(name="t", kind="transformer", adversarial="awp", awp_param="no_such_weight",
                            pooler="mean")
    backbone = _v2_with_conv()
    with pytest.raises(ConfigError, match="nothing to perturb"):
        make_adversary("awp", FB3Model(backbone, cfg), cfg)
    assert make_adversary("fgm", FB3Model(backbone, cfg), cfg).params  # trainable embeddings: fine


def test_head_tail_keeps_start_and_end():
    ids = list(range(100))  # 0 stands for [CLS], 99 for [SEP]
    cut = cut_head_tail(ids, 10, 0.5)
    assert cut == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert cut_head_tail(ids, 10, 0.3) == [0, 1, 2, 93, 94, 95, 96, 97, 98, 99]
    assert cut_head_tail(ids[:8], 10, 0.5) == ids[:8]


def test_paragraph_marker():
    text = "  First paragraph.\n\nSecond one.\n  \n\nThird.\nStill third?  "
    assert mark_paragraphs(text, "[BR]") == "First paragraph.[BR]Second one.[BR]Third.[BR]Still third?"
    assert mark_paragraphs(text, None) == text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, train_df):
    return build_tiny_deberta(tmp_path_factory.mktemp("tiny_deberta_recipes"), train_df["full_text"].head(200))


def test_token_cache_key_follows_text_preparation(tiny, train_df, tmp_path):
    tok = load_tokenizer(tiny)
    tok.add_tokens(["[BR]"])
    texts = train_df["full_text"].head(6).tolist()
    long_text = " ".join(texts)
    head = TokenCache(tok, 40, tmp_path)
    tail = TokenCache(tok, 40, tmp_path, truncation="head_tail")
    marked = TokenCache(tok, 40, tmp_path, newline_token="[BR]")
    assert len({head.path, tail.path, marked.path}) == 3
    h, t = head.encode([long_text])[0], tail.encode([long_text])[0]
    full = tok(long_text, verbose=False)["input_ids"]
    assert len(h) == len(t) == 40 and list(t[-20:]) == full[-20:] and list(h[:20]) == list(t[:20])
    br = tok.convert_tokens_to_ids("[BR]")
    with_nl = "I think so.\n\nBut my friend does not."
    assert br in marked.encode([with_nl])[0] and br not in head.encode([with_nl])[0]
    # a new cache on the same folder and settings reads what was tokenized, and only that
    assert len(TokenCache(tok, 40, tmp_path, truncation="head_tail").ids) == 1


def test_oof_checkpoint_last_keeps_last_weights(tiny, train_df, tmp_path):
    from fb3stack.base.transformer.member import TransformerMember

    rows = train_df.head(40)
    train, valid = rows.iloc[:24].reset_index(drop=True), rows.iloc[24:].reset_index(drop=True)
    # fp32 storage keeps the last weights bit for bit, so the reloaded fold reproduces the OOF exactly
    member = TransformerMember(tiny_config(tiny, max_len=48, eval_every=1, epochs=2, oof_checkpoint="last",
                                           checkpoint_dtype="fp32"))
    result = member.fit_fold(train, valid, 0, tmp_path)
    info = result.info
    assert info["n_evals"] == len(result.history) >= 4 and info["oof_checkpoint"] == "last"
    assert info["last_valid_mcrmse"] == pytest.approx(result.history["valid_mcrmse"].iloc[-1])
    assert info["best_valid_mcrmse"] == pytest.approx(result.history["valid_mcrmse"].min())
    np.testing.assert_array_equal(result.preds, result.alt_preds["last"])
    np.testing.assert_allclose(member.predict_fold(valid, tmp_path), result.preds, atol=1e-5)


def test_dry_run_builds_gpu_zoo_on_meta_device(capsys):
    assert main(["train", "configs/zoo/gpu.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name, params in (("deberta-v3-base", "184.4"), ("deberta-v3-large", "435.1"), ("deberta-v2-xlarge", "887.0")):
        line = next(x for x in out.splitlines() if x.strip().startswith(name))
        assert params in line and "head_tail" in line
    assert main(["train", "configs/zoo/kaggle-t4.yaml", "--dry-run", "--set",
                 "members.deberta-v3-base.backbone=/nonexistent/deberta"]) == 2


def test_checkpointing_skips_backward_through_frozen_layers():
    cfg = TransformerConfig(name="t", kind="transformer", freeze_layers=2, gradient_checkpointing=True,
                            adversarial="none", pooler="mean", lr=1e-2, head_lr=1e-2)
    from fb3stack.base.transformer.backbone import prepare_backbone

    model = FB3Model(prepare_backbone(_v2_with_conv(), cfg), cfg).train()
    seen = {}
    model.backbone.encoder.layer[2].register_forward_hook(lambda m, i, o: seen.update(first_trainable=i[0]))
    x = torch.randint(5, 300, (2, 16))
    model(x, torch.ones_like(x))[0].sum().backward()
    # frozen layers' output needs no gradient: backward stops at the first trainable layer
    assert not seen["first_trainable"].requires_grad
    top = model.backbone.encoder.layer[3].output.dense.weight
    assert top.grad is not None and top.grad.abs().sum() > 0
