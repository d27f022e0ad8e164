"""AdamW with layer-wise learning-rate decay (LLRD), and transformers' warmup + cosine/linear/constant schedules.

The top encoder layer learns at `lr`, each layer below at `llrd` times the one above, the embeddings one
step below the bottom layer; the pooler and head learn at `head_lr`. Backbone parameters outside the layer
stack (DeBERTa's relative-position embeddings, BERT's pooler) serve every layer and get `lr`. Biases and
norm weights (every 1-D parameter) get no weight decay. Frozen parameters are left out.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn
from transformers import get_scheduler

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


# config names -> transformers' schedule names (ours all warm up first)
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TransformerConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' warmup + cosine/linear/constant schedule, read one step in.

    Its warmup factor is step/warmup, so its first optimiser step runs at lr 0; ours has always started at
    1/(warmup+1) and reached 1 at `warmup`. The same curve over warmup+1 and total+1 steps, started at its step 1,
    is exactly ours (bit for bit for cosine and constant; linear's decay is computed as (T-s)/(T-w), ours was
    1-(s-w)/(T-w), equal up to rounding).
    """
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(SCHEDULES[cfg.scheduler], optimizer, num_warmup_steps=warmup + 1,
                              num_training_steps=total_steps + 1)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": wanted here
        warnings.filterwarnings("ignore", "Detected call of", UserWarning)
        scheduler.step()
    return scheduler
