"""Data-parallel training of one fold on N processes (GPUs or CPU/gloo) through Hugging Face accelerate.

Launch the usual command under `accelerate launch` (or `torchrun`); every process runs it:

    accelerate launch --num_processes 4 -m fb3stack train configs/models/deberta-v3-large.yaml --workspace W

* training batches: every process builds the same length-bucketed batch order (same seed) and takes every
  N-th batch, the last round filled with batches from the start so all processes step together;
* gradients: DDP all-reduces them in the backward that ends an accumulation round (Engine, on accelerate);
* validation: rows are split into N disjoint shards, each process predicts its shard and the predictions are
  gathered by row index, so no row is dropped or counted twice and every process sees the same score;
* artefacts: only the main process writes them (fb3stack.base.runner).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler

from fb3stack import dist


class ShardedBatchSampler(Sampler[list[int]]):
    """Every `world`-th batch of `inner`, starting at `rank`; all ranks get the same number of batches."""

    def __init__(self, inner: Sampler[list[int]], rank: int, world: int) -> None:
        self.inner, self.rank, self.world = inner, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        batches = list(self.inner)
        total = math.ceil(len(batches) / self.world) * self.world
        batches += batches[: total - len(batches)]  # fill the last round so no rank waits on a missing batch
        return batches[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.inner) / self.world)


def shard_train_loader(loader: DataLoader) -> DataLoader:
    if not dist.is_distributed():
        return loader
    sampler = ShardedBatchSampler(loader.batch_sampler, dist.rank(), dist.world_size())
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def shard_rows(n: int) -> np.ndarray:
    """This process's disjoint share of `n` validation rows (all of them when not distributed)."""
    if not dist.is_distributed():
        return np.arange(n)
    return np.array_split(np.arange(n), dist.world_size())[dist.rank()]


def gather_rows(n: int, rows: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reassemble per-process row shards into full (n, ...) arrays on every process."""
    if not dist.is_distributed():
        return arrays
    from accelerate.utils import gather_object

    parts = gather_object([(rows, arrays)])  # every process's (rows, arrays), in rank order
    seen = np.concatenate([r for r, _ in parts])
    if len(seen) != n or len(np.unique(seen)) != n:
        raise RuntimeError(f"validation shards cover {len(np.unique(seen))} of {n} rows with {len(seen)} entries")
    order = np.argsort(seen)  # seen is a permutation of 0..n-1: row seen[i] is entry i
    return tuple(np.concatenate([a[k] for _, a in parts])[order] for k in range(len(arrays)))

