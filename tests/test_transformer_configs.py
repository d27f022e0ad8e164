"""The GPU model YAMLs are complete and build: their real architectures (from config, on the meta device, so
no weights and no memory) and one training step of a shrunken variant on CPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, DebertaV2Config

from fb3stack.base.registry import load_member_config
from fb3stack.base.transformer.adversarial import make_adversary
from fb3stack.base.transformer.backbone import prepare_backbone
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.known import KNOWN_CONFIGS
from fb3stack.base.transformer.losses import make_loss
from fb3stack.base.transformer.model import FB3Model
from fb3stack.base.transformer.optim import param_groups

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"

# the published config.json of each backbone, with its parameter count from the model card
ARCH = {name: ({k: v for k, v in KNOWN_CONFIGS[f"microsoft/{name}"].items() if k != "model_type"}, n)
        for name, n in (("deberta-v3-base", 184e6), ("deberta-v3-large", 435e6), ("deberta-v2-xlarge", 900e6))}


@pytest.mark.parametrize("name", sorted(ARCH))
def test_gpu_config_builds_real_architecture(name):
    cfg = load_member_config(MODELS / f"{name}.yaml")
    assert isinstance(cfg, TransformerConfig) and cfg.name == name and cfg.kind == "transformer"
    arch, n_params = ARCH[name]
    with torch.device("meta"):
        model = FB3Model(prepare_backbone(AutoModel.from_config(DebertaV2Config(**arch)), cfg), cfg)
    total = sum(p.numel() for p in model.backbone.parameters())
    assert total == pytest.approx(n_params, rel=0.03)
    groups = param_groups(model, cfg)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    names = {g["name"].split("/")[0] for g in groups}
    frozen = {f"layer_{i}" for i in range(cfg.freeze_layers)}
    if cfg.freeze_embeddings or cfg.freeze_layers:
        frozen |= {"embeddings", "backbone_other"}  # frozen layers freeze what they depend on
    assert not names & frozen and f"layer_{arch['num_hidden_layers'] - 1}" in names
    if name == "deberta-v2-xlarge":
        assert cfg.freeze_layers == 12 and cfg.adversarial == "none"


@pytest.mark.parametrize("name", sorted(ARCH))
def test_shrunken_variant_trains_one_step(name):
    cfg = load_member_config(MODELS / f"{name}.yaml")
    arch = dict(ARCH[name][0], vocab_size=500, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=96, position_buckets=16)
    cfg = replace(cfg, freeze_layers=min(cfg.freeze_layers, 1), device="cpu")
    torch.manual_seed(0)
    model = FB3Model(prepare_backbone(AutoModel.from_config(DebertaV2Config(**arch)), cfg), cfg).train()
    x = torch.randint(5, 500, (2, 24))
    mask = torch.ones_like(x)
    mask[1, 15:] = 0
    y = torch.full((2, 6), 3.0)
    loss_fn, adv = make_loss(cfg), make_adversary(cfg.adversarial, model, cfg)
    opt = torch.optim.AdamW(param_groups(model, cfg))
    loss = loss_fn(model(x, mask)[0], y)
    loss.backward()
    if adv:
        adv.attack()
        loss_fn(model(x, mask)[0], y).backward()
        adv.restore()
    before = model.fc.weight.detach().clone()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.fc.weight)
