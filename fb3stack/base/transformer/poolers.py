"""Poolers: (token states, attention mask) -> one vector per essay; all ignore padded positions.

Every pooler takes the last hidden state (B, T, D), all hidden states (a tuple of (B, T, D), embeddings
first) when `needs_hidden_states` is set, and the attention mask (B, T); it returns (B, out_dim).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

Hidden = tuple[torch.Tensor, ...] | None


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class Pooler(nn.Module):
    needs_hidden_states = False

    def __init__(self, hidden: int, **_: object) -> None:
        super().__init__()
        self.out_dim = hidden


class MeanPooler(Pooler):
    def forward(self, last: torch.Tensor, hidden_states: Hidden, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(last, mask)


class MaxPooler(Pooler):
    sign = 1.0

    def forward(self, last: torch.Tensor, hidden_states: Hidden, mask: torch.Tensor) -> torch.Tensor:
        # padded positions are pushed to the far end so they never win
        fill = torch.finfo(last.dtype).min
        out = (last * self.sign).masked_fill(~mask.bool().unsqueeze(-1), fill).amax(1)
        return out * self.sign


class MinPooler(MaxPooler):
    sign = -1.0


class CLSPooler(Pooler):
    def forward(self, last: torch.Tensor, hidden_states: Hidden, mask: torch.Tensor) -> torch.Tensor:
        return last[:, 0]


class GeMPooler(Pooler):
    """Generalised mean of the (clamped positive) states with a learnable exponent."""

    def __init__(self, hidden: int, gem_p: float = 3.0, **_: object) -> None:
        super().__init__(hidden)
        self.p = nn.Parameter(torch.tensor(float(gem_p)))

    def forward(self, last: torch.Tensor, hidden_states: Hidden, mask: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return masked_mean(last.float().clamp(min=1e-6).pow(p), mask).pow(1.0 / p).to(last.dtype)


class AttentionPooler(Pooler):
    """A small scorer gives each token a weight; softmax over real tokens only."""

    def __init__(self, hidden: int, **_: object) -> None:
        super().__init__(hidden)
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, last: torch.Tensor, hidden_states: Hidden, mask: torch.Tensor) -> torch.Tensor:
        w = self.score(last).squeeze(-1).float()
        w = w.masked_fill(~mask.bool(), torch.finfo(w.dtype).min).softmax(-1)
        return (w.unsqueeze(-1) * last.float()).sum(1).to(last.dtype)


class WeightedLayerPooler(Pooler):
    """Softmax-weighted sum of the last N layers per token (a convex combination), then a masked mean over
    real tokens."""

    needs_hidden_states = True

    def __init__(self, hidden: int, pooler_layers: int = 4, **_: object) -> None:
        super().__init__(hidden)
        self.n = pooler_layers
        self.weights = nn.Parameter(torch.zeros(pooler_layers))

    def forward(self, last: torch.Tensor, hidden_states: Hidden, mask: torch.Tensor) -> torch.Tensor:
        assert hidden_states is not None, "weighted-layer pooling needs output_hidden_states"
        stacked = torch.stack(hidden_states[-self.n:], dim=0)  # (N, B, T, D)
        w = self.weights.softmax(0).to(stacked.dtype).view(-1, 1, 1, 1)
        return masked_mean((w * stacked).sum(0), mask)


class MeanConcatPooler(Pooler):
    """Masked means of each of the last N (`pooler_layers`) layers, concatenated (N x hidden features)."""

    needs_hidden_states = True

    def __init__(self, hidden: int, pooler_layers: int = 4, **_: object) -> None:
        super().__init__(hidden)
        self.n = pooler_layers
        self.out_dim = hidden * pooler_layers

    def forward(self, last: torch.Tensor, hidden_states: Hidden, mask: torch.Tensor) -> torch.Tensor:
        assert hidden_states is not None, "mean-concat pooling needs output_hidden_states"
        return torch.cat([masked_mean(h, mask) for h in hidden_states[-self.n:]], dim=-1)


POOLERS: dict[str, Callable[..., Pooler]] = {
    "mean": MeanPooler,
    "max": MaxPooler,
    "min": MinPooler,
    "cls": CLSPooler,
    "gem": GeMPooler,
    "attention": AttentionPooler,
    "weighted-layer": WeightedLayerPooler,
    "mean-concat": MeanConcatPooler,
}
# earlier names: still read, so configs written for them keep working
RENAMED = {"mean-last4-concat": "mean-concat"}


def make_pooler(name: str, hidden: int, **kwargs: object) -> Pooler:
    if name in RENAMED:
        logger.warning("pooler %r is now called %r", name, RENAMED[name])
        name = RENAMED[name]
    if name not in POOLERS:
        raise ValueError(f"unknown pooler {name!r}; known: {sorted(POOLERS)}")
    return POOLERS[name](hidden, **kwargs)
