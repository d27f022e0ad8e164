"""The one place that knows about hardware: device placement, autocast, backward, accumulation, clipping.

The trainer only calls `to_device`, `autocast`, `accumulate`, `backward` and `step`. Data-parallel training
maps onto these one for one (accelerate's `prepare`, `autocast`, `no_sync`/`accumulate`, `backward`,
`clip_grad_norm_`), so swapping in `accelerate.Accelerator` means a new Engine, not a new trainer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


@cache
def physical_cores() -> int:
    """Distinct (socket, core) pairs in /proc/cpuinfo; hyper-threads share one core's matmul units."""
    try:
        cores, socket = set(), "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                socket = value.strip()
            elif key.strip() == "core id":
                cores.add((socket, value.strip()))
        if cores:
            return min(len(cores), os.cpu_count() or len(cores))
    except OSError:
        pass
    return os.cpu_count() or 1


def limit_cpu_threads() -> None:
    """Never more torch threads than physical cores: a second thread per core only fights for the same units.

    Only lowers the count, so an explicit num_threads (or a worker's OMP_NUM_THREADS) below it is kept.
    """
    if torch.get_num_threads() > physical_cores():
        logger.info("torch threads %d -> %d (physical cores)", torch.get_num_threads(), physical_cores())
        torch.set_num_threads(physical_cores())


def cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_logged: set[str] = set()


def _log_once(level: int, msg: str, *args: object) -> None:
    """One line per process and message: an engine is built per fold and per prediction."""
    text = msg % args
    if text not in _logged:
        _logged.add(text)
        logger.log(level, text)


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(has bf16 tensor cores, why). `torch.cuda.is_bf16_supported()` also says yes where bf16 is only
    emulated (T4, P100, V100): there bf16 runs several times slower than fp16, so ask for Ampere or newer."""
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if major >= 8:
        return True, f"{name} (compute capability {major}.{minor}) has native bf16"
    return False, f"{name} (compute capability {major}.{minor}) has no bf16 tensor cores"


def pick_amp(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: `auto` is bf16 where the GPU has it natively, fp16 (+ GradScaler) on older GPUs; None
    (fp32) on CPU or when switched off.

    On CPU only an explicit `bf16` turns autocast on (fast on AMX / AVX512-BF16 cores): it changes the
    numbers, so CPU runs stay fp32 unless asked.
    """
    if device.type == "cpu" and name == "bf16":
        if cpu_bf16_supported():
            return torch.bfloat16
        _log_once(logging.WARNING, "amp: bf16 asked for, but this CPU has no fast bf16; running fp32")
        return None
    if device.type != "cuda" or name == "none":
        return None
    native, why = native_bf16(device)
    if name == "auto":
        dtype = torch.bfloat16 if native else torch.float16
        _log_once(logging.INFO, "amp auto -> %s: %s", "bf16" if native else "fp16 + GradScaler", why)
        return dtype
    if name == "bf16" and not native:
        _log_once(logging.WARNING, "amp: bf16 asked for, but %s: it is emulated and slow; fp16 is faster", why)
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
        # optimiser steps whose gradients overflowed (inf/NaN norm): GradScaler skips them and lowers its scale;
        # counted on the device, read only when logged
        self.skipped_steps = torch.zeros((), dtype=torch.long, device=self.device)
        if self.device.type == "cpu":
            limit_cpu_threads()
        logger.info("engine: %s, autocast %s, grad_accum %d", self.device, self.amp_dtype or "off (fp32)", grad_accum)

    def prepare(self, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        # a copy from pinned host memory is truly asynchronous: the GPU never waits on the host for it
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

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
        # after unscale_ the norm is inf/NaN exactly when GradScaler finds an overflow and skips the step
        self.skipped_steps += (~torch.isfinite(norm)).long()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_step = 0
        return norm
