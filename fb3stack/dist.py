"""Data-parallel helpers: who is the main process, and waiting for it.

Under `accelerate launch` or `torchrun` every process runs the same command; WORLD_SIZE and RANK say which
one this is. Only the main process writes artefacts; the others train alongside it and wait at barriers.
Without those variables everything here is a no-op, so single-process code pays nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Start the process group (gloo on CPU, nccl on CUDA) through accelerate, once."""
    if is_distributed():
        import torch
        from accelerate import PartialState

        # without cpu=True on a machine with no GPU accelerate starts a process group but calls the run
        # DistributedType.NO, and then never wraps the model in DDP: each process trained on its own gradients
        PartialState(cpu=not torch.cuda.is_available())


def _group_ready() -> bool:
    import torch.distributed as td

    return is_distributed() and td.is_available() and td.is_initialized()


def barrier() -> None:
    if _group_ready():
        import torch.distributed as td

        td.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (writing files); the others run it after, reading them."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (a one-element list when not distributed)."""
    if not _group_ready():
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * world_size()
    td.all_gather_object(out, obj)
    return out
