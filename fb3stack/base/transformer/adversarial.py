"""Adversarial weight perturbations for robustness: FGM (on embeddings) and AWP (on weights).

Usage per step, after the clean backward: `attack()`, a second forward/backward on the perturbed model
(its gradients add to the clean ones), then `restore()`, which copies the saved tensors back bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from fb3stack.config import ConfigError


class _Perturbation:
    def __init__(self, model: nn.Module, param_filter: str) -> None:
        self.params = [(k, p) for k, p in model.named_parameters() if p.requires_grad and param_filter in k]
        self.backup: dict[str, torch.Tensor] = {}

    def _save(self, name: str, p: nn.Parameter) -> None:
        if name not in self.backup:
            self.backup[name] = p.detach().clone()

    @torch.no_grad()
    def restore(self) -> None:
        for name, p in self.params:
            if name in self.backup:
                p.copy_(self.backup[name])
        self.backup.clear()


class FGM(_Perturbation):
    """Fast gradient method: move the embeddings eps along their normalised gradient."""

    def __init__(self, model: nn.Module, eps: float = 1.0, param_filter: str = "word_embeddings") -> None:
        super().__init__(model, param_filter)
        self.eps = eps

    @torch.no_grad()
    def attack(self) -> None:
        for name, p in self.params:
            if p.grad is None:
                continue
            norm = torch.linalg.vector_norm(p.grad.float())
            if torch.isfinite(norm) and norm > 0:
                self._save(name, p)
                p.add_((self.eps * p.grad / norm).to(p.dtype))


class AWP(_Perturbation):
    """Adversarial weight perturbation: a step along the gradient scaled by the weight norm, clipped to
    +-eps*|w| around the original weights."""

    def __init__(self, model: nn.Module, lr: float = 1.0, eps: float = 1e-3, param_filter: str = "weight") -> None:
        super().__init__(model, param_filter)
        self.lr, self.eps = lr, eps

    @torch.no_grad()
    def attack(self) -> None:
        for name, p in self.params:
            if p.grad is None:
                continue
            self._save(name, p)
            grad_norm = torch.linalg.vector_norm(p.grad.float())
            if not torch.isfinite(grad_norm) or grad_norm == 0:
                continue
            orig = self.backup[name]
            step = self.lr * p.grad / (grad_norm + 1e-6) * (torch.linalg.vector_norm(p.float()) + 1e-6)
            p.add_(step.to(p.dtype))
            bound = self.eps * orig.abs()
            p.copy_(torch.minimum(torch.maximum(p, orig - bound), orig + bound))


def make_adversary(kind: str, model: nn.Module, cfg: object) -> FGM | AWP | None:
    """The configured adversary; one whose parameter filter matches no trainable parameter is a config error
    (its second forward/backward would double every step's cost and change nothing)."""
    if kind == "fgm":
        adversary, key, pattern = FGM(model, cfg.fgm_eps, cfg.fgm_param), "fgm_param", cfg.fgm_param
    elif kind == "awp":
        adversary, key, pattern = AWP(model, cfg.awp_lr, cfg.awp_eps, cfg.awp_param), "awp_param", cfg.awp_param
    else:
        return None
    if not adversary.params:
        raise ConfigError(f"adversarial: {kind} has nothing to perturb: no trainable parameter name contains "
                          f"{key}={pattern!r} (frozen by freeze_embeddings/freeze_layers?); set adversarial: none "
                          "or another parameter")
    return adversary
