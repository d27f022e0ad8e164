"""Fused attention kernels for DeBERTa-v2/v3 backbones, switched on by name (`attention_impl`).

    eager               Hugging Face's own DisentangledSelfAttention (the default; nothing changes)
    flashdeberta        FlashDeBERTa (pip install flashdeberta; needs einops): Triton flash attention with the
                        c2p/p2c position terms inside the kernel. Each layer's attention module changes class;
                        its parameters stay the same objects.
    disentangled-flash  DisentangledFlash (pip install disentangled-flash): Triton forward and fused backward.
                        The encoder is replaced by an equivalent module; the attention parameters are new
                        objects with the old names and values.

Both run Triton kernels on a CUDA GPU, compiled on first use (no network needed). Parameter names are
unchanged, so a checkpoint trained with one implementation loads under any other (or eager on a CPU).
Apply after the backbone is built and before the optimiser is made; frozen parameters stay frozen.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch
from torch import nn

from fb3stack.config import ConfigError

logger = logging.getLogger(__name__)

ATTENTION_IMPLS = ("eager", "flashdeberta", "disentangled-flash")
_PIP_NAMES = {"flashdeberta": "flashdeberta einops", "disentangled-flash": "disentangled-flash"}


def _backbone(model: nn.Module) -> nn.Module:
    """The Hugging Face DeBERTa-v2 model inside `model` (an FB3Model or the backbone itself)."""
    backbone = getattr(model, "backbone", model)
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type != "deberta-v2" or not hasattr(getattr(backbone, "encoder", None), "layer"):
        raise ConfigError(f"attention_impl other than 'eager' needs a DeBERTa-v2/v3 backbone, got {model_type!r}")
    return backbone


def current_attention_impl(model: nn.Module) -> str:
    """Which implementation the DeBERTa backbone in `model` runs now."""
    backbone = _backbone(model)
    if type(backbone.encoder).__name__ == "DebertaV2OptimizedEncoder":
        return "disentangled-flash"
    if type(backbone.encoder.layer[0].attention.self).__name__ == "FlashDisentangledSelfAttention":
        return "flashdeberta"
    return "eager"


def _import(module: str, impl: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:  # the package, or one of its own imports (triton, einops), is missing
        raise RuntimeError(f"attention_impl {impl!r}: cannot import {module} ({err}); "
                           f"pip install {_PIP_NAMES[impl]}, or set attention_impl: eager") from err


def apply_attention_impl(model: nn.Module, impl: str) -> None:
    """Switch the DeBERTa backbone in `model` to `impl` in place; a no-op for 'eager' or when already on it."""
    if impl not in ATTENTION_IMPLS:
        raise ConfigError(f"unknown attention_impl {impl!r}; known: {list(ATTENTION_IMPLS)}")
    if impl == "eager":
        return
    if not torch.cuda.is_available():
        raise RuntimeError(f"attention_impl {impl!r} runs Triton kernels on a CUDA GPU and none is available "
                           "here; use attention_impl: eager")
    enable(model, impl, backend="triton")


def enable(model: nn.Module, impl: str, backend: str = "triton") -> None:
    """apply_attention_impl without the CUDA check. backend='torch' (disentangled-flash only) selects its
    pure-PyTorch implementation of the same swap, which also runs on a CPU: the tests use it."""
    backbone = _backbone(model)
    current = current_attention_impl(backbone)
    if current == impl:
        return
    if current != "eager":
        raise RuntimeError(f"the backbone already uses attention_impl {current!r}; cannot switch to {impl!r}")
    if impl == "flashdeberta":
        flash = _import("flashdeberta.model", impl).FlashDisentangledSelfAttention
        for layer in backbone.encoder.layer:
            if not isinstance(layer.attention.self, flash.__bases__[0]):
                raise RuntimeError(f"flashdeberta: unexpected attention module {type(layer.attention.self)}")
            # the subclass adds only forward(): same parameters, no new state
            layer.attention.self.__class__ = flash
    elif impl == "disentangled-flash":
        frozen = {name for name, p in backbone.named_parameters() if not p.requires_grad}
        _import("disentangled_flash", impl).enable_deberta_training(backbone, backend=backend)
        if current_attention_impl(backbone) != impl:
            # it keeps the Hugging Face encoder when Triton is missing or the head size is not 32, 64 or 128
            head = backbone.config.hidden_size // backbone.config.num_attention_heads
            raise RuntimeError(f"disentangled-flash declined this backbone (Triton importable and head size "
                               f"32/64/128 needed; head size is {head})")
        for name, p in backbone.named_parameters():  # its new attention modules start trainable
            if name in frozen:
                p.requires_grad_(False)
    else:
        raise ConfigError(f"unknown attention_impl {impl!r}; known: {list(ATTENTION_IMPLS)}")
    logger.info("attention: %s (%d layers)", impl, len(backbone.encoder.layer))
