"""The one place that knows about hardware: device placement, autocast, backward, accumulation, clipping.

Built on `accelerate.Accelerator`: it owns autocast, the fp16 GradScaler, DistributedDataParallel (the model is
wrapped once the optimiser exists, so layer-wise LR groups keep their parameter names), loss scaling for gradient
accumulation, no_sync between accumulation steps, unscale-then-clip, and the optimiser step. What stays here is
what the project decides itself: which device and autocast dtype (`pick_device`, `pick_amp`), CPU threads, and
the end of an accumulation round (see `Engine.accumulate`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from torch import nn

from fb3stack.hardware import cpu_has_amx, cpu_has_native_bf16, physical_cores

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def limit_cpu_threads() -> None:
    """Never more torch threads than physical cores: a second thread per core only fights for the same units.

    Only lowers the count, so an explicit num_threads (or a worker's OMP_NUM_THREADS) below it is kept.
    """
    if torch.get_num_threads() > physical_cores():
        logger.info("torch threads %d -> %d (physical cores)", torch.get_num_threads(), physical_cores())
        torch.set_num_threads(physical_cores())


@cache
def _log_once(level: int, text: str) -> None:
    """One line per process and message: an engine is built per fold and per prediction."""
    logger.log(level, text)


def pick_amp(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: `auto` is bf16 where the hardware computes it natively, fp16 (+ GradScaler) on older GPUs;
    None (fp32) when switched off.

    On CPU `auto` is bf16 where the CPU has native bf16 (AVX512-BF16, AMX, arm64 BF16; hardware.cpu_has_native_bf16)
    and fp32 elsewhere, never emulated bf16: on a full-size MiniLM fold on AVX512-BF16 without AMX, bf16 autocast
    scored as fp32 (0.4902 vs 0.4904) at several times fp32's steps/s (docs/speed.md,
    benchmarks/bench_finetune_recipe.py rows fp32 and bf16). On CPUs whose oneDNN only emulates bf16 (plain
    AVX-512) it would be slower than fp32 and less precise.
    """
    if device.type == "cpu" and name == "auto":
        if cpu_has_native_bf16():
            _log_once(logging.INFO, "amp auto -> bf16: this CPU computes bf16 natively"
                      + (" (AMX)" if cpu_has_amx() else " (AVX512-BF16)"))
            return torch.bfloat16
        return None
    if device.type == "cpu" and name == "bf16":
        if cpu_has_native_bf16():
            return torch.bfloat16
        _log_once(logging.WARNING, "amp: bf16 asked for, but this CPU has no fast bf16; running fp32")
        return None
    if device.type != "cuda" or name == "none":
        return None
    # not torch.cuda.is_bf16_supported(): it also says yes where bf16 is only emulated (T4, P100, V100), several
    # times slower than fp16 there; bf16 tensor cores came with Ampere (compute capability 8.0)
    major, minor = torch.cuda.get_device_capability(device)
    native = major >= 8
    why = (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has "
           + ("native bf16" if native else "no bf16 tensor cores"))
    if name == "auto":
        _log_once(logging.INFO, f"amp auto -> {'bf16' if native else 'fp16 + GradScaler'}: {why}")
        return torch.bfloat16 if native else torch.float16
    if name == "bf16" and not native:
        _log_once(logging.WARNING, f"amp: bf16 asked for, but {why}: it is emulated and slow; fp16 is faster")
    return torch.bfloat16 if name == "bf16" else torch.float16


# the autocast dtype pick_amp chose, as accelerate's mixed_precision
MIXED_PRECISION = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


def make_accelerator(device: torch.device, amp_dtype: torch.dtype | None, grad_accum: int,
                     log_with: str | None = None, project_dir: Path | None = None) -> object:
    """An Accelerator for this device and autocast dtype.

    accelerate keeps one state per process and refuses a second Accelerator with another mixed precision (or
    cpu=True after a GPU one). One process trains members and predicts folds with different `amp`/`device`
    settings one after another, so such a change starts a fresh state; engines are used one at a time. Under
    data parallelism the process group lives in PartialState and is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import GradientAccumulationPlugin

    from fb3stack import dist

    mixed_precision, cpu = MIXED_PRECISION[amp_dtype], device.type == "cpu"
    partial, state = PartialState._shared_state, AcceleratorState._shared_state
    moved = bool(partial) and partial["device"].type != device.type and not dist.is_distributed()
    if moved or (state and state.get("_mixed_precision") != mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=moved)
    # the plugin, not gradient_accumulation_steps=: an ACCELERATE_GRADIENT_ACCUMULATION_STEPS left in the
    # environment by `accelerate launch` would otherwise override the config's grad_accum
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                       gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum),
                       log_with=log_with, project_dir=project_dir)  # experiment tracking: see tracking.py


class Engine:
    def __init__(self, model: nn.Module, device: str = "auto", amp: str = "auto", grad_accum: int = 1,
                 max_grad_norm: float = 0.0, log_with: str | None = None, project_dir: Path | None = None) -> None:
        wanted = pick_device(device)
        self.amp_dtype = pick_amp(amp, wanted)
        self.accelerator = make_accelerator(wanted, self.amp_dtype, grad_accum, log_with, project_dir)
        self.device = self.accelerator.device  # under data parallelism, this process's GPU
        # on the device before the optimiser is built (fused AdamW picks its kernels per device); DDP wraps it later
        self.model = model.to(self.device)
        self.grad_accum, self.max_grad_norm = grad_accum, max_grad_norm
        # sync_step: True inside and after the micro-batch that completes an accumulation round, until `step`
        self.micro_step, self.sync_step = 0, False
        # optimiser steps whose gradients overflowed (inf/NaN norm after unscaling: exactly when GradScaler skips),
        # counted on the device and read only when logged. Not accelerate's optimizer_step_was_skipped: with fused
        # AdamW GradScaler always calls step() and the kernel itself skips the update, so it never sees a skip.
        self.skipped_steps = torch.zeros((), dtype=torch.long, device=self.device)
        if self.device.type == "cpu":
            limit_cpu_threads()
        logger.info("engine: %s, autocast %s, grad_accum %d", self.device, self.amp_dtype or "off (fp32)", grad_accum)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """accelerate's GradScaler: only for fp16 on a GPU (bf16 has fp32's range and needs no loss scaling)."""
        return self.accelerator.scaler

    def prepare(self, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
        """Wrap the model (DDP when distributed) and the optimiser (GradScaler steps, steps only on sync rounds).

        The scheduler stays ours: accelerate's wrapper steps it once per process per optimiser step (it assumes
        the schedule was sized for the unsharded loader), ours is sized from this process's batches.
        """
        self.model = self.accelerator.prepare_model(self.model)
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)
        self.scheduler = scheduler

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        # a copy from pinned host memory is truly asynchronous: the GPU never waits on the host for it
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.accelerator.autocast()

    @contextlib.contextmanager
    def accumulate(self, last: bool = False) -> Iterator[None]:
        """Wraps one micro-batch's forward/backward passes; `last`: the epoch's final micro-batch, which ends a
        round early. Gradients stay local (no_sync) until the round's last micro-batch; the wrapped optimiser steps
        and zeroes only when `sync_gradients` is set. Not `Accelerator.accumulate`: it learns where an epoch ends
        only from a dataloader it prepared, and ours are sharded by length-bucketed batches of our own."""
        self.micro_step += 1
        self.sync_step = self.accelerator.sync_gradients = self.micro_step >= self.grad_accum or last
        with contextlib.nullcontext() if self.sync_step else self.accelerator.no_sync(self.model):
            yield

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Backward passes inside keep their gradients local; the next synced backward all-reduces them too."""
        return self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)  # divides by grad_accum; scales for fp16

    def step(self) -> torch.Tensor:
        """Clip, step the optimiser and scheduler, zero grads; returns the pre-clip grad norm (a tensor)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # unscales first under fp16: the true gradients are clipped, not the scaled ones
        norm = self.accelerator.clip_grad_norm_(params, self.max_grad_norm if self.max_grad_norm > 0 else math.inf)
        self.skipped_steps += (~torch.isfinite(norm)).long()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_step, self.sync_step = 0, False
        return norm
