"""attention_impl switch (fb3stack.base.transformer.attention) on a tiny DeBERTa-v3-style backbone.

The Triton kernels need a GPU; on a CPU the same swap runs through disentangled-flash's PyTorch backend,
which checks the integration (parameter names, freezing, gradients, checkpoints) but not the kernels.
"""

from __future__ import annotations

import sys

import pytest
import torch

from fb3stack.base.transformer import attention
from fb3stack.config import ConfigError


def tiny_deberta(seed: int = 0):
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(seed)
    config = DebertaV2Config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=128, relative_attention=True,
                             pos_att_type=["p2c", "c2p"], position_biased_input=False, position_buckets=32,
                             norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return DebertaV2Model(config)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 300, (3, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0  # padding: the masked keys must not leak into real tokens
    mask[2, 33:] = 0
    return ids, mask


def loss_and_grads(model) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    # a random projection: LayerNorm makes mean(out**2) ~constant, whose gradient is only rounding noise
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    loss = (out * mask[..., None] * proj).sum()
    model.zero_grad()
    loss.backward()
    return loss.detach(), out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_eager_is_a_no_op() -> None:
    model = tiny_deberta()
    before = [type(m) for m in model.modules()]
    attention.apply_attention_impl(model, "eager")
    assert [type(m) for m in model.modules()] == before
    assert attention.current_attention_impl(model) == "eager"


def test_unknown_impl_and_wrong_backbone_are_config_errors() -> None:
    from transformers import BertConfig, BertModel

    with pytest.raises(ConfigError, match="unknown attention_impl 'flash'"):
        attention.apply_attention_impl(tiny_deberta(), "flash")
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    with pytest.raises(ConfigError, match="DeBERTa-v2/v3 backbone, got 'bert'"):
        attention.enable(bert, "disentangled-flash", backend="torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize("impl", ["flashdeberta", "disentangled-flash"])
def test_kernels_need_cuda(impl: str) -> None:
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        attention.apply_attention_impl(tiny_deberta(), impl)


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flashdeberta.model", None)  # importing it now raises ImportError
    model = tiny_deberta()
    with pytest.raises(RuntimeError, match="pip install flashdeberta einops"):
        attention.enable(model, "flashdeberta")
    assert attention.current_attention_impl(model) == "eager"


def test_disentangled_flash_matches_eager_and_keeps_checkpoints() -> None:
    pytest.importorskip("disentangled_flash")
    eager, fused = tiny_deberta(), tiny_deberta()
    for m in (eager, fused):  # freeze_layers: 1, as prepare_backbone does it
        m.encoder.layer[0].requires_grad_(False)
    keys = list(eager.state_dict())
    attention.enable(fused, "disentangled-flash", backend="torch")
    assert attention.current_attention_impl(fused) == "disentangled-flash"
    assert list(fused.state_dict()) == keys  # same names: checkpoints move between implementations
    # its attention modules are new objects: the frozen layer must stay frozen, the other trainable
    assert not any(p.requires_grad for p in fused.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in fused.encoder.layer[1].parameters())

    l_e, out_e, g_e = loss_and_grads(eager)
    l_f, out_f, g_f = loss_and_grads(fused)
    real = batch()[1].bool()
    torch.testing.assert_close(out_f[real], out_e[real], rtol=1e-4, atol=1e-5)
    assert set(g_f) == set(g_e)
    for name in g_e:
        torch.testing.assert_close(g_f[name], g_e[name], rtol=1e-3, atol=1e-5, msg=name)

    attention.enable(fused, "disentangled-flash", backend="torch")  # already on it: nothing changes
    with pytest.raises(RuntimeError, match="already uses attention_impl 'disentangled-flash'"):
        attention.enable(fused, "flashdeberta")

    # a checkpoint trained with the kernel loads into a plain eager model and gives the same outputs
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.01 * torch.randn_like(p))
    plain = tiny_deberta(seed=5)
    plain.load_state_dict(fused.state_dict())
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).last_hidden_state[real],
                                   fused(input_ids=ids, attention_mask=mask).last_hidden_state[real],
                                   rtol=1e-4, atol=1e-5)


def test_disentangled_flash_then_checkpointing_as_prepare_backbone_orders_them() -> None:
    """prepare_backbone applies attention_impl before enabling checkpointing: the new encoder must checkpoint."""
    pytest.importorskip("disentangled_flash")
    eager, fused = tiny_deberta(), tiny_deberta()
    attention.enable(fused, "disentangled-flash", backend="torch")
    (getattr(fused, "activation_checkpointing_enable", None) or fused.gradient_checkpointing_enable)()
    assert fused.encoder.gradient_checkpointing
    _, _, g_e = loss_and_grads(eager)
    _, _, g_f = loss_and_grads(fused)  # recomputed forward in backward: same gradients
    for name in g_e:
        torch.testing.assert_close(g_f[name], g_e[name], rtol=1e-3, atol=1e-5, msg=name)
