"""Backbone + pooler + linear head to the six traits, with optional multi-sample dropout; torch.compile of it."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from fb3stack.base.transformer.backbone import encoder_layers
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.poolers import make_pooler
from fb3stack.base.transformer.prefix import replay
from fb3stack.constants import TARGETS

logger = logging.getLogger(__name__)


class FB3Model(nn.Module):
    def __init__(self, backbone: nn.Module, cfg: TransformerConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooler = make_pooler(cfg.pooler, backbone.config.hidden_size, pooler_layers=cfg.pooler_layers,
                                  gem_p=cfg.gem_p)
        self.dropouts = nn.ModuleList(nn.Dropout(cfg.head_dropout) for _ in range(cfg.msd_samples))
        self.fc = nn.Linear(self.pooler.out_dim, len(TARGETS))
        nn.init.normal_(self.fc.weight, std=getattr(backbone.config, "initializer_range", 0.02))
        nn.init.zeros_(self.fc.bias)
        # (PrefixPlan, PrefixStore) when the frozen prefix is computed once (prefix.py); batches then carry
        # `prefix_rows`, the essays' rows in the store. A plain attribute: not a module, not in the state dict
        self.prefix: tuple | None = None
        compile_model(self, cfg.compile, cfg.compile_mode, cfg.compile_dynamic, shapes=expected_shapes(cfg))

    def set_bias(self, mean: torch.Tensor) -> None:
        with torch.no_grad():
            self.fc.bias.copy_(mean)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             prefix_rows: torch.Tensor | None = None) -> torch.Tensor:
        need_all = self.pooler.needs_hidden_states
        with self._replay(input_ids, prefix_rows):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all)
        return self.pooler(out.last_hidden_state, out.hidden_states if need_all else None, attention_mask)

    def _replay(self, input_ids: torch.Tensor, prefix_rows: torch.Tensor | None) -> contextlib.AbstractContextManager:
        """The frozen prefix from the store instead of computed (prefix.replay), when there is one."""
        if self.prefix is None or prefix_rows is None:
            return contextlib.nullcontext()
        plan, store = self.prefix
        states = store.gather(prefix_rows, input_ids.shape[1], input_ids.device)
        return replay(self.backbone, plan, store, states, tuple(input_ids.shape))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.fc(pooled)
        # multi-sample dropout: same features, several dropout masks, averaged predictions
        return torch.stack([self.fc(d(pooled)) for d in self.dropouts]).mean(0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prefix_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions (B, 6), pooled features (B, out_dim))."""
        pooled = self.pool(input_ids, attention_mask, prefix_rows)
        return self.head(pooled), pooled


def expected_shapes(cfg: TransformerConfig) -> int:
    """About how many (batch, width) shapes a fold's loaders give: widths bounded by pad_to_multiple_of, each at
    the full and the last, smaller batch size, in training and in evaluation (with and without gradients)."""
    widths = -(-cfg.max_len // cfg.pad_to_multiple_of) if cfg.pad_to_multiple_of > 1 else cfg.max_len
    return 4 * widths


def compile_model(model: FB3Model, how: str, mode: str = "default", dynamic: bool | None = None,
                  backend: str = "inductor", shapes: int = 0) -> None:
    """torch.compile `model` in place: `layers` compiles each encoder block (identical blocks share one compiled
    graph, so it compiles about as fast as one layer), `model` the whole forward. In place (nn.Module.compile):
    parameter names, state dict and checkpoints stay the same, the adversaries perturb the same tensors, and
    evaluation and training call the same module. Lazy: nothing compiles before the first forward."""
    if how == "none":
        return
    if how not in ("layers", "model"):
        raise ValueError(f"compile must be none, layers or model, got {how!r}")
    import torch._dynamo.config as dynamo

    # one graph per shape and grad/train mode: a limit below the shapes the loaders give would silently run the
    # rest eager (dynamo's default limit is 8)
    if dynamic is False and shapes:
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), shapes + 8))
    kwargs = dict(mode=None if mode == "default" else mode, dynamic=dynamic, backend=backend)
    if how == "model":
        model.compile(**kwargs)
    else:
        for layer in encoder_layers(model.backbone):
            layer.compile(**kwargs)
    logger.info("torch.compile: %s, mode %s, dynamic %s, backend %s", how, mode, dynamic, backend)
