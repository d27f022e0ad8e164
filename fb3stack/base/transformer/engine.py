"""The one place that knows about hardware: device placement, autocast, backward, accumulation, clipping.

The trainer only calls `to_device`, `autocast`, `accumulate`, `backward` and `step`. Data-parallel training
maps onto these one for one (accelerate's `prepare`, `autocast`, `no_sync`/`accumulate`, `backward`,
`clip_grad_norm_`), so swapping in `accelerate.Accelerator` means a new Engine, not a new trainer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def pick_amp(name: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 otherwise; None (fp32) on CPU or when switched off."""
    if device.type != "cuda" or name == "none":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if name == "bf16" else torch.float16


class Engine:
    def __init__(self, model: nn.Module, device: str = "auto", amp: str = "auto", grad_accum: int = 1,
                 max_grad_norm: float = 0.0) -> None:
        self.device = pick_device(device)
        self.amp_dtype = pick_amp(amp, self.device)
        self.model = model.to(self.device)
        self.grad_accum, self.max_grad_norm = grad_accum, max_grad_norm
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.micro_step = 0
        logger.info("engine: %s, autocast %s, grad_accum %d", self.device, self.amp_dtype or "off (fp32)", grad_accum)

    def prepare(self, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def sync_step(self) -> bool:
        """True on the micro-batch that completes an accumulation round (the optimiser steps after it)."""
        return self.micro_step >= self.grad_accum

    @contextlib.contextmanager
    def accumulate(self) -> Iterator[None]:
        """Wraps one micro-batch's forward/backward passes; under DDP this is where no_sync would go."""
        yield
        self.micro_step += 1

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.grad_accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> torch.Tensor:
        """Clip, step the optimiser and scheduler, zero grads; returns the pre-clip grad norm (a tensor)."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf"))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_step = 0
        return norm
