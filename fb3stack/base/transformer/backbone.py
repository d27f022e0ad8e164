"""Load a Hugging Face encoder and prepare it for fine-tuning: dropout, checkpointing, freezing, re-init."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.config import ConfigError

logger = logging.getLogger(__name__)

_DROPOUT_KEYS = {"hidden": ("hidden_dropout_prob", "dropout"), "attention": ("attention_probs_dropout_prob",
                                                                               "attention_dropout")}


def resolve_backbone(spec: str) -> str:
    """`pkg:<module>/<subdir>` -> the folder inside that installed package; anything else unchanged."""
    if not spec.startswith("pkg:"):
        return spec
    module, _, sub = spec[4:].partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"backbone {spec!r}: package {module!r} is not installed (pip install it)")
    path = Path(next(iter(found.submodule_search_locations))) / sub
    if not path.is_dir():
        raise ConfigError(f"backbone {spec!r}: {path} does not exist")
    return str(path)


def backbone_config(cfg: TransformerConfig, source: str | Path) -> PretrainedConfig:
    config = AutoConfig.from_pretrained(source)
    for kind, value in (("hidden", cfg.hidden_dropout), ("attention", cfg.attention_dropout)):
        if value is not None:
            keys = [k for k in _DROPOUT_KEYS[kind] if hasattr(config, k)]
            if not keys:
                logger.warning("%s has no %s dropout setting; %s_dropout ignored", source, kind, kind)
            for k in keys:
                setattr(config, k, value)
    return config


def load_tokenizer(source: str | Path):  # noqa: ANN201 - a PreTrainedTokenizer of whatever class the folder says
    return AutoTokenizer.from_pretrained(source)


def load_backbone(cfg: TransformerConfig, source: str | Path, pretrained: bool = True) -> PreTrainedModel:
    """Pretrained weights from `source` (a folder or hub name), or the bare architecture when not `pretrained`."""
    config = backbone_config(cfg, source)
    return AutoModel.from_pretrained(source, config=config) if pretrained else AutoModel.from_config(config)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks, bottom first, across the common encoder layouts."""
    for path in ("encoder.layer", "encoder.layers", "layers", "transformer.layer", "layer"):
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__}")


def embeddings_module(model: nn.Module) -> nn.Module:
    emb = getattr(model, "embeddings", None)
    if emb is None:
        raise ValueError(f"cannot find the embeddings of {type(model).__name__}")
    return emb


def freeze(model: nn.Module, embeddings: bool, n_layers: int) -> None:
    layers = encoder_layers(model)
    if n_layers > len(layers):
        raise ConfigError(f"freeze_layers={n_layers} but the backbone has {len(layers)} layers")
    modules = ([embeddings_module(model)] if embeddings else []) + list(layers[:n_layers])
    for m in modules:
        m.requires_grad_(False)


@torch.no_grad()
def reinit_top_layers(model: nn.Module, n_layers: int, std: float) -> None:
    if n_layers <= 0:
        return
    for layer in encoder_layers(model)[-n_layers:]:
        for m in layer.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()


def prepare_backbone(model: PreTrainedModel, cfg: TransformerConfig) -> PreTrainedModel:
    """Training-time changes; inference loads the plain architecture and the fine-tuned weights."""
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it; keep working on 4.x
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    freeze(model, cfg.freeze_embeddings, cfg.freeze_layers)
    reinit_top_layers(model, cfg.reinit_layers, getattr(model.config, "initializer_range", 0.02))
    return model
