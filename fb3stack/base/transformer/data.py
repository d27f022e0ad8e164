"""Tokenize once, then batch by length: dynamic padding keeps short essays from paying for long ones.

Training batches come from length-sorted buckets of `bucket_batches` batches over a shuffled order, and the
batch order is shuffled again, so each batch holds similar lengths but the model still sees them at random.
Evaluation batches are simply sorted by length; `order` maps them back to the input rows.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fb3stack.io import load_npz_checked, save_npz_checked, sha256_json

logger = logging.getLogger(__name__)


_NEWLINES = re.compile(r"\s*\n\s*")


def mark_paragraphs(text: str, marker: str | None) -> str:
    """Runs of newlines (a paragraph or line break, with the spaces around it) -> one `marker`."""
    return text if marker is None else _NEWLINES.sub(marker, text.strip())


def cut_head_tail(ids: list[int], max_len: int, head_ratio: float) -> list[int]:
    """The first ~head_ratio*max_len and the last tokens of a sequence encoded with its special tokens: [CLS] at
    the start and [SEP] at the end survive because they are the first and last tokens."""
    if len(ids) <= max_len:
        return ids
    head = max(1, min(max_len - 1, round(max_len * head_ratio)))
    return ids[:head] + ids[len(ids) - (max_len - head):]


class TokenCache:
    """Token ids per essay text for one tokenizer and text preparation, in memory and (optionally) on disk.

    Everything that changes the ids is part of the key: the vocabulary (added markers included), max_len,
    the truncation rule and the newline marker.
    """

    def __init__(self, tokenizer: object, max_len: int, cache_dir: Path | None = None, truncation: str = "head",
                 head_ratio: float = 0.5, newline_token: str | None = None) -> None:
        if truncation not in ("head", "head_tail"):
            raise ValueError(f"truncation must be head or head_tail, got {truncation!r}")
        self.tokenizer, self.max_len = tokenizer, max_len
        self.truncation, self.head_ratio, self.newline_token = truncation, head_ratio, newline_token
        # the vocabulary, not the folder name, identifies the tokenizer: a re-installed package may change it
        vocab = sorted(tokenizer.get_vocab().items())
        prep = [truncation, head_ratio if truncation == "head_tail" else None, newline_token]
        key = sha256_json([type(tokenizer).__name__, vocab, tokenizer("a b")["input_ids"], max_len, prep])[:16]
        self.path = cache_dir / f"tokens-{key}.npz" if cache_dir else None
        self.ids: dict[str, np.ndarray] = {}
        stored = load_npz_checked(self.path) if self.path else None  # None when missing or damaged: re-tokenize
        if stored is not None:
            offsets = stored["offsets"]
            self.ids = {h: stored["flat"][a:b] for h, a, b in zip(stored["keys"], offsets[:-1], offsets[1:])}

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        texts = [mark_paragraphs(t, self.newline_token) for t in texts]
        if self.truncation == "head":
            return self.tokenizer(texts, truncation=True, max_length=self.max_len)["input_ids"]
        # whole essays first (no length warning: cutting follows), then keep both ends
        full = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        return [cut_head_tail(list(ids), self.max_len, self.head_ratio) for ids in full]

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        hashes = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        todo = {h: t for h, t in zip(hashes, texts) if h not in self.ids}
        if todo:
            enc = self._tokenize(list(todo.values()))
            self.ids.update({h: np.asarray(e, dtype=np.int32) for h, e in zip(todo, enc)})
            self._save()
        return [self.ids[h] for h in hashes]

    def _save(self) -> None:
        if self.path is None:
            return
        keys = list(self.ids)
        lengths = [len(self.ids[k]) for k in keys]
        # atomic and checksummed: parallel fold jobs and killed runs never leave a half-written store in use
        save_npz_checked(self.path, keys=np.asarray(keys), flat=np.concatenate([self.ids[k] for k in keys]),
                         offsets=np.concatenate([[0], np.cumsum(lengths)]))


class EssayDataset(Dataset):
    """`prefix_rows`: each essay's row in a frozen-prefix store (prefix.py), carried into the batch."""

    def __init__(self, ids: list[np.ndarray], targets: np.ndarray | None = None,
                 prefix_rows: np.ndarray | None = None) -> None:
        self.ids, self.targets, self.prefix_rows = ids, targets, prefix_rows

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple:
        item = (self.ids[i], None if self.targets is None else self.targets[i])
        return item if self.prefix_rows is None else (*item, int(self.prefix_rows[i]))


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches. Not transformers' LengthGroupedSampler: it sorts megabatches too but keeps their
    batches in order (longest first, no shuffle of the batch order) and draws from torch's RNG, so it yields other
    batches in another order (checked on 300 lengths: no batch in common) and would change every transformer
    member's numbers; it also has no deterministic, length-sorted evaluation order to map back to rows."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0,
                 bucket_batches: int = 50) -> None:
        self.lengths, self.batch_size, self.shuffle = np.asarray(lengths), batch_size, shuffle
        self.seed, self.bucket = seed, batch_size * bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i:i + bs].tolist() for i in range(0, n, bs)]
        rng = np.random.default_rng(self.seed + self.epoch)
        perm = rng.permutation(n)
        out = []
        for start in range(0, n, self.bucket):
            chunk = perm[start:start + self.bucket]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            out += [chunk[i:i + bs].tolist() for i in range(0, len(chunk), bs)]
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        if not self.shuffle:
            return -(-len(self.lengths) // self.batch_size)
        full, rest = divmod(len(self.lengths), self.bucket)
        return full * -(-self.bucket // self.batch_size) + -(-rest // self.batch_size)


def padded_width(longest: int, multiple: int = 1, max_len: int | None = None) -> int:
    """The batch width: `longest` rounded up to a multiple of `multiple`, but never past `max_len` (a backbone
    with absolute positions has no position beyond it; the loader holds nothing longer anyway)."""
    width = -(-longest // multiple) * multiple
    return max(longest, min(width, max_len)) if max_len else width


class Collator:
    """Right-pads to the batch's longest essay (rounded up to a multiple of `pad_to_multiple_of`, at most
    `max_len`: a bounded set of shapes for compiled kernels); float32 labels when there are targets.

    Not DataCollatorWithPadding: on 8 essays of 100-512 tokens it builds the same tensors but takes 2.4 ms a batch
    against 0.2 ms here (tokenizer.pad goes through Python lists), needs the tokenizer object and a pad token
    (folds fall back to id 0), and pads on the tokenizer's padding side."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 1, max_len: int | None = None) -> None:
        self.pad_id, self.multiple, self.max_len = pad_id, pad_to_multiple_of, max_len

    def __call__(self, items: list[tuple]) -> dict[str, torch.Tensor]:
        width = padded_width(max(len(item[0]) for item in items), self.multiple, self.max_len)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, item in enumerate(items):
            input_ids[i, : len(item[0])] = torch.from_numpy(item[0].astype(np.int64))
            mask[i, : len(item[0])] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if items[0][1] is not None:
            batch["labels"] = torch.tensor(np.stack([item[1] for item in items]), dtype=torch.float32)
        if len(items[0]) > 2:
            batch["prefix_rows"] = torch.tensor([item[2] for item in items], dtype=torch.long)
        return batch


def make_loader(ids: list[np.ndarray], targets: np.ndarray | None, batch_size: int, shuffle: bool, pad_id: int,
                seed: int = 0, bucket_batches: int = 50, pad_to_multiple_of: int = 1,
                max_len: int | None = None, prefix_rows: np.ndarray | None = None) -> DataLoader:
    sampler = BucketBatchSampler([len(x) for x in ids], batch_size, shuffle, seed, bucket_batches)
    return DataLoader(EssayDataset(ids, targets, prefix_rows), batch_sampler=sampler,
                      collate_fn=Collator(pad_id, pad_to_multiple_of, max_len))


def loader_order(loader: DataLoader) -> np.ndarray:
    """Row indices in the order an unshuffled loader yields them."""
    return np.concatenate(loader.batch_sampler.batches())


class TokenBudgetSampler(Sampler[list[int]]):
    """Prediction batches by a token budget: rows sorted longest first, each batch as many rows as fit in
    `max_tokens` padded tokens (rows x its padded width, `padded_width` of its longest row; at least one row).
    Short essays then fill large batches instead of leaving the GPU idle in small ones; the peak stays that of the
    budget."""

    def __init__(self, lengths: list[int], max_tokens: int, pad_to_multiple_of: int = 1,
                 max_len: int | None = None) -> None:
        self.lengths, self.max_tokens = np.asarray(lengths), max_tokens
        self.multiple, self.max_len = pad_to_multiple_of, max_len

    def batches(self) -> list[list[int]]:
        out: list[list[int]] = []
        width = 0
        for i in np.argsort(-self.lengths, kind="stable").tolist():
            # sorted longest first: a batch's first row sets its (padded) width
            if out and (len(out[-1]) + 1) * width <= self.max_tokens:
                out[-1].append(i)
            else:
                out.append([i])
                width = padded_width(int(self.lengths[i]), self.multiple, self.max_len)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def make_token_loader(ids: list[np.ndarray], max_tokens: int, pad_id: int, pad_to_multiple_of: int = 1,
                      max_len: int | None = None, prefix_rows: np.ndarray | None = None) -> DataLoader:
    """An unshuffled prediction loader batched by `max_tokens` (TokenBudgetSampler), padded as training pads
    (`pad_to_multiple_of`: the same bounded set of widths); `loader_order` maps it back."""
    lengths = [len(x) for x in ids]
    sampler = TokenBudgetSampler(lengths, max_tokens, pad_to_multiple_of, max_len)
    return DataLoader(EssayDataset(ids, None, prefix_rows), batch_sampler=sampler,
                      collate_fn=Collator(pad_id, pad_to_multiple_of, max_len))
