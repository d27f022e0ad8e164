"""Training losses, computed per trait (like the metric) and averaged with optional trait weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fb3stack.base.transformer.config import TransformerConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(cfg: TransformerConfig) -> LossFn:
    weights = torch.tensor(cfg.trait_weights or [1.0] * 6, dtype=torch.float32)
    weights = weights / weights.sum()

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        if cfg.loss == "mse":
            per_trait = F.mse_loss(pred, target, reduction="none").mean(0)
        elif cfg.loss == "rmse":
            # eps keeps the gradient finite when a trait's error is exactly zero
            per_trait = (F.mse_loss(pred, target, reduction="none").mean(0) + cfg.rmse_eps).sqrt()
        else:
            per_trait = F.smooth_l1_loss(pred, target, reduction="none", beta=cfg.smoothl1_beta).mean(0)
        return (per_trait * weights.to(per_trait.device)).sum()

    return loss
