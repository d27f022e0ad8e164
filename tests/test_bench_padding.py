"""benchmarks/bench_padding.py counts what the loaders really build: padded tokens and distinct batch shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_padding import batch_shapes, measure  # noqa: E402

from fb3stack.base.transformer.data import make_loader  # noqa: E402


def test_counts_match_the_loader_batches() -> None:
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.integers(20, 700, 300), 512)
    ids = [np.ones(n, np.int32) for n in lengths]
    loader = make_loader(ids, np.zeros((300, 6), np.float32), 8, True, 0, seed=42, pad_to_multiple_of=64,
                         max_len=512)
    tokens, shapes = batch_shapes(lengths, 8, True, 1, 64, 512)
    batches = list(loader)
    assert tokens == sum(b["input_ids"].numel() for b in batches)
    assert shapes == {tuple(b["input_ids"].shape) for b in batches}


def test_larger_multiples_cost_tokens_and_save_shapes() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 500, 500)  # below max_len: every width is the longest essay of its batch
    folds = np.arange(500) % 5
    rows = measure(lengths, folds, [512], [8], [1, 8, 64], epochs=2, eval_batch=32)
    extra = [r["extra_tokens_pct"] for r in rows]
    shapes = [r["train_shapes"] for r in rows]
    assert extra[0] == 0 and extra[0] <= extra[1] < extra[2]
    assert shapes[0] > shapes[1] > shapes[2] and rows[2]["widths"] <= 8  # 512 / 64 widths at most
