"""Load a Hugging Face encoder and prepare it for fine-tuning: dropout, checkpointing, freezing, re-init."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

from fb3stack.base.backbones import is_backbone_spec, resolve_backbone_path
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.known import KNOWN_CONFIGS
from fb3stack.config import ConfigError

logger = logging.getLogger(__name__)

_DROPOUT_KEYS = {"hidden": ("hidden_dropout_prob", "dropout"), "attention": ("attention_probs_dropout_prob",
                                                                               "attention_dropout")}


def resolve_backbone(spec: str) -> str:
    """`pkg:` / `pkgparts:` specs -> the model folder (fb3stack.base.backbones, the one resolver of package
    specs); a local folder or hub name is returned unchanged for `from_pretrained`."""
    if not is_backbone_spec(spec):
        return spec
    try:
        return resolve_backbone_path(spec)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


def backbone_config(cfg: TransformerConfig, source: str | Path) -> PretrainedConfig:
    config = AutoConfig.from_pretrained(source)
    # the fold's saved config.json must say float32 too: prediction rebuilds the architecture from it
    config.dtype = torch.float32
    for kind, value in (("hidden", cfg.hidden_dropout), ("attention", cfg.attention_dropout)):
        if value is not None:
            keys = [k for k in _DROPOUT_KEYS[kind] if hasattr(config, k)]
            if not keys:
                logger.warning("%s has no %s dropout setting; %s_dropout ignored", source, kind, kind)
            for k in keys:
                setattr(config, k, value)
    return config


def architecture(cfg: TransformerConfig) -> tuple[PretrainedConfig, str]:
    """The backbone's config without its weights and without network, and where it came from: a local folder's
    config.json, the local Hugging Face cache, or (neither) the published config of a known hub backbone."""
    source = resolve_backbone(cfg.backbone)
    if Path(source).expanduser().is_dir():
        return backbone_config(cfg, Path(source).expanduser()), "local folder"
    try:
        config, where = AutoConfig.from_pretrained(source, local_files_only=True), "Hugging Face cache"
    except OSError as err:
        if cfg.backbone not in KNOWN_CONFIGS:
            raise ConfigError(f"backbone {cfg.backbone!r}: not a local folder, not in the Hugging Face cache and not "
                              f"a known hub backbone ({sorted(KNOWN_CONFIGS)})") from err
        known = dict(KNOWN_CONFIGS[cfg.backbone])
        config, where = AutoConfig.for_model(known.pop("model_type"), **known), "known.py (not here)"
    config.dtype = torch.float32
    return config, where


def architecture_config(cfg: TransformerConfig) -> PretrainedConfig:
    return architecture(cfg)[0]


def load_tokenizer(source: str | Path, **kwargs: object):  # noqa: ANN201 - a PreTrainedTokenizer of the folder's class
    return AutoTokenizer.from_pretrained(source, **kwargs)


def load_backbone(cfg: TransformerConfig, source: str | Path, pretrained: bool = True) -> PreTrainedModel:
    """Pretrained weights from `source` (a folder or hub name), or the bare architecture when not `pretrained`.

    Always float32 parameters, whatever the checkpoint stores: DeBERTa-v3's hub weights are fp16
    (`pytorch_model.bin`, no dtype in config.json) and transformers 5 loads `dtype="auto"` by default, which
    would train fp16 master weights (AdamW updates round away; GradScaler refuses fp16 gradients). Autocast
    gives the mixed-precision speed.
    """
    config = backbone_config(cfg, source)
    if not pretrained:
        return AutoModel.from_config(config, dtype=torch.float32)
    model = AutoModel.from_pretrained(source, config=config, dtype=torch.float32)
    logger.info("backbone %s loaded with float32 parameters", source)
    return model


def add_newline_token(tokenizer: object, model: PreTrainedModel | None, token: str) -> None:
    """Make `token` one vocabulary entry (never split) and give it an embedding row.

    DeBERTa-v3 declares more embedding rows (128100) than its tokenizer uses (128001), so the marker often fits
    without resizing; otherwise the embeddings grow (new rows start at the mean of the old ones).
    """
    tokenizer.add_tokens([token])
    if model is None:
        return
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))


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


def shared_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Backbone children outside the embeddings and the layer stack that the layers use: DeBERTa's
    `encoder.rel_embeddings` and `encoder.LayerNorm` (relative positions, read by every layer), v2's
    `encoder.conv` (after layer 0). Returned as (dotted name, module)."""
    layers, emb = encoder_layers(model), embeddings_module(model)
    inside = {id(p) for p in layers.parameters()} | {id(p) for p in emb.parameters()}
    out = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own and not any(id(p) in inside for p in own):
            out.append((name, module))
    return out


def freeze(model: nn.Module, embeddings: bool, n_layers: int) -> list[str]:
    """Freeze the embeddings and/or the first `n_layers`; returns the names of what was frozen.

    Freezing layers freezes what they depend on as well: their input (the embeddings) and the shared
    modules, or the frozen layers would compute something new at every step.
    """
    layers = encoder_layers(model)
    if n_layers > len(layers):
        raise ConfigError(f"freeze_layers={n_layers} but the backbone has {len(layers)} layers")
    frozen: list[tuple[str, nn.Module]] = [(f"layer {i}", layers[i]) for i in range(n_layers)]
    if embeddings or n_layers:
        frozen.append(("embeddings", embeddings_module(model)))
    if n_layers:
        frozen += shared_modules(model)
    for _, m in frozen:
        m.requires_grad_(False)
    names = [n for n, _ in frozen]
    if names:
        logger.info("frozen: %s", ", ".join(names) if len(names) < 8 else f"{len(names)} modules")
    return names


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
    if cfg.attention_impl != "eager":
        from fb3stack.base.transformer.attention import apply_attention_impl

        apply_attention_impl(model, cfg.attention_impl)
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it; keep working on 4.x
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    frozen = freeze(model, cfg.freeze_embeddings, cfg.freeze_layers)
    if cfg.gradient_checkpointing and frozen and hasattr(model, "disable_input_require_grads"):
        # transformers makes the embedding output require grad when checkpointing (for reentrant checkpoints and
        # adapters); its non-reentrant default needs no such thing, and with frozen embeddings the hook would only
        # make backward run through the frozen layers, for gradients nothing uses
        model.disable_input_require_grads()
    reinit_top_layers(model, cfg.reinit_layers, getattr(model.config, "initializer_range", 0.02))
    return model
