"""AdamW with layer-wise learning-rate decay (LLRD) and warmup + cosine/linear schedules.

The top encoder layer learns at `lr`, each layer below at `llrd` times the one above, the embeddings one
step below the bottom layer; the pooler and head learn at `head_lr`. Backbone parameters outside the layer
stack (DeBERTa's relative-position embeddings, BERT's pooler) serve every layer and get `lr`. Biases and
norm weights (every 1-D parameter) get no weight decay. Frozen parameters are left out.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from fb3stack.base.transformer.backbone import embeddings_module, encoder_layers
from fb3stack.base.transformer.config import TransformerConfig

logger = logging.getLogger(__name__)


def _no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(model: nn.Module, cfg: TransformerConfig) -> list[dict]:
    """Groups named '<block>/<decay|no_decay>' with their lr and weight decay; model is an FB3Model."""
    backbone = model.backbone
    layers = encoder_layers(backbone)
    n = len(layers)
    blocks: list[tuple[str, nn.Module, float]] = [("embeddings", embeddings_module(backbone), cfg.lr * cfg.llrd ** n)]
    blocks += [(f"layer_{i}", layer, cfg.lr * cfg.llrd ** (n - 1 - i)) for i, layer in enumerate(layers)]
    seen: set[int] = set()
    groups: list[dict] = []

    def add(block: str, named: list[tuple[str, nn.Parameter]], lr: float) -> None:
        named = [(k, p) for k, p in named if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for _, p in named)
        for decay in (True, False):
            params = [p for k, p in named if _no_decay(k, p) != decay]
            if params:
                groups.append({"name": f"{block}/{'decay' if decay else 'no_decay'}", "params": params, "lr": lr,
                               "weight_decay": cfg.weight_decay if decay else 0.0})

    for block, module, lr in blocks:
        add(block, list(module.named_parameters()), lr)
    add("backbone_other", list(backbone.named_parameters()), cfg.lr)
    add("head", [(k, p) for k, p in model.named_parameters() if not k.startswith("backbone.")], cfg.head_lr)
    return groups


def make_optimizer(model: nn.Module, cfg: TransformerConfig) -> torch.optim.AdamW:
    """LLRD AdamW; create it after the model is on its device (fused kernels are picked per device)."""
    groups = param_groups(model, cfg)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
    impl = cfg.optimizer_impl
    if impl in ("auto", "fused"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError) as e:  # an older torch, or a device without the fused kernel
            if impl == "fused":
                raise
            logger.info("fused AdamW unavailable (%s); using foreach", e)
    return torch.optim.AdamW(groups, foreach=impl != "for-loop", **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TransformerConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.scheduler == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
