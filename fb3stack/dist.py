"""Data-parallel helpers: who is the main process, and waiting for it.

Under `accelerate launch` or `torchrun` every process runs the same command; WORLD_SIZE and RANK say which
one this is. Only the main process writes artefacts; the others train alongside it and wait at accelerate's
barriers. Without those variables everything here is a no-op that never imports accelerate.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import PartialState


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def init() -> PartialState | None:
    """accelerate's process state under data parallelism (None otherwise); the first call starts the process
    group (gloo on CPU, nccl on CUDA)."""
    if not is_distributed():
        return None
    import torch
    from accelerate import PartialState

    # without cpu=True on a machine with no GPU accelerate starts a process group but calls the run
    # DistributedType.NO, and then never wraps the model in DDP: each process trained on its own gradients
    return PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    if is_distributed():
        init().wait_for_everyone()


def main_first() -> contextlib.AbstractContextManager:
    """The main process runs the block first (writing files); the others run it after, reading them."""
    return init().main_process_first() if is_distributed() else contextlib.nullcontext()
