"""Backbone + pooler + linear head to the six traits, with optional multi-sample dropout."""

from __future__ import annotations

import torch
from torch import nn

from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.poolers import make_pooler
from fb3stack.constants import TARGETS


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

    def set_bias(self, mean: torch.Tensor) -> None:
        with torch.no_grad():
            self.fc.bias.copy_(mean)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        need_all = self.pooler.needs_hidden_states
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all)
        return self.pooler(out.last_hidden_state, out.hidden_states if need_all else None, attention_mask)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.fc(pooled)
        # multi-sample dropout: same features, several dropout masks, averaged predictions
        return torch.stack([self.fc(d(pooled)) for d in self.dropouts]).mean(0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions (B, 6), pooled features (B, out_dim))."""
        pooled = self.pool(input_ids, attention_mask)
        return self.head(pooled), pooled
