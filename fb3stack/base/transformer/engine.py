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
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from torch import nn

from fb3stack.hardware import cpu_has_native_bf16

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
    return cpu_has_native_bf16()  # the one test, shared with embedding precision "auto" (fb3stack.hardware)


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
        self.micro_step, self._sync = 0, False
        # optimiser steps whose gradients overflowed (inf/NaN norm after unscaling: exactly when GradScaler skips
        # the step and lowers its scale), counted on the device and read only when logged. Not accelerate's
        # optimizer_step_was_skipped: it watches whether optimizer.step() ran, but with fused AdamW GradScaler
        # always calls step() and the kernel itself skips the update (torch.amp.GradScaler.step,
        # _step_supports_amp_scaling), so it would never see a skip.
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

    @property
    def sync_step(self) -> bool:
        """True inside and after the micro-batch that completes an accumulation round, until `step`."""
        return self._sync

    @contextlib.contextmanager
    def accumulate(self, last: bool = False) -> Iterator[None]:
        """Wraps one micro-batch's forward/backward passes; `last`: the epoch's final micro-batch, which ends a
        round early.

        Not `Accelerator.accumulate`: it learns where an epoch ends only from a dataloader it prepared
        (GradientState.end_of_dataloader), and ours are sharded by length-bucketed batches of our own. The rest is
        the same: gradients stay local (no_sync) until the round's last micro-batch, and the wrapped optimiser
        steps and zeroes only when `sync_gradients` is set.
        """
        self.micro_step += 1
        self._sync = self.micro_step >= self.grad_accum or last
        self.accelerator.sync_gradients = self._sync
        with contextlib.nullcontext() if self._sync else self.accelerator.no_sync(self.model):
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
        self.micro_step, self._sync = 0, False
        return norm
