"""Frozen-backbone sentence embeddings, computed once per text and cached on disk.

`embed_texts(texts, backbones, ...)` returns one L2-normalised row per text (several backbones concatenated).
Each (backbone identity, encoder version, max_len, chunking, pooler, precision) has its own store under the
cache folder, holding the embeddings of every text seen so far keyed by the text's SHA-1. Only texts not in
the store are run through the model, so the five folds of a zoo run (and any later run in a workspace sharing
the cache) embed the training essays once. The identity is a hash of the backbone's config and weight files,
so swapping the weights under the same path, or changing any of those settings, addresses another store:
stale vectors are never reused.

Essays longer than the window (`max_len` tokens, 40% of FB3 at 512) are embedded as several chunks
(`chunking`: head+tail or consecutive windows) pooled over all their tokens, instead of being cut.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from fb3stack.base.backbones import resolve_backbone_path
from fb3stack.io import load_npz_checked, save_npz_checked, write_json

logger = logging.getLogger(__name__)

Pooler = Literal["mean", "cls", "max"]
Precision = Literal["auto", "float32", "bfloat16"]
Chunking = Literal["truncate", "head_tail", "windows"]
CHUNKINGS = ("truncate", "head_tail", "windows")
STORE_FILE = "store.npz"
# bump when _encode computes different numbers for the same settings (v2: weights cast to bf16 instead of
# autocast, chunks pooled token-weighted), so older stores are never read as if current
ENCODER_VERSION = "e2"
_RECENT: dict[tuple, np.ndarray] = {}  # in-memory results when there is no cache folder, oldest first
_RECENT_MAX = 4
_IDENTITY_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt")


@functools.lru_cache(maxsize=16)
def _hash_files(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name in _IDENTITY_FILES:
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def backbone_identity(spec: str) -> str:
    """Hash of the resolved folder's config, weights and vocabulary (memoised on path, sizes and mtimes)."""
    path = resolve_backbone_path(spec)
    stamp = tuple((n, (Path(path) / n).stat().st_size, (Path(path) / n).stat().st_mtime_ns)
                  for n in _IDENTITY_FILES if (Path(path) / n).is_file())
    return _hash_files(path, stamp)


def text_keys(texts: list[str]) -> np.ndarray:
    return np.array([hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts])


@functools.lru_cache(maxsize=2)
def _load(path: str, precision: str = "float32"):  # noqa: ANN202 - (tokenizer, model); heavy types
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    if precision == "bfloat16":
        # weights cast once: torch.autocast re-casts every weight on every forward, which for mpnet spent a
        # third of the CPU time in the kernel allocating and zeroing fresh pages (measured, docs/cpu_members.md)
        model = model.to(torch.bfloat16)
    return tokenizer, model


def resolve_precision(precision: Precision) -> str:
    """'auto' is bfloat16 where the CPU has native bf16 (about 2x faster on AMX/AVX512-BF16), else float32."""
    if precision != "auto":
        return precision
    import torch

    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


def chunk_ids(ids: list[int], body: int, chunking: Chunking) -> list[list[int]]:
    """Token pieces of one text, each at most `body` tokens (special tokens are added around each piece).

    truncate: the first `body` tokens; head_tail: for longer texts also the last `body` tokens (the two may
    overlap); windows: consecutive non-overlapping pieces covering the whole text.
    """
    if len(ids) <= body or chunking == "truncate":
        return [ids[:body]]
    if chunking == "head_tail":
        return [ids[:body], ids[-body:]]
    if chunking == "windows":
        return [ids[i:i + body] for i in range(0, len(ids), body)]
    raise ValueError(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:  # noqa: ANN001 - a transformers tokenizer
    """The ids the tokenizer puts before and after a single text ([CLS] .. [SEP], <s> .. </s>), read off an
    example, since transformers 5 tokenizers no longer expose build_inputs_with_special_tokens."""
    bare = tokenizer("essay", add_special_tokens=False)["input_ids"]
    full = tokenizer("essay")["input_ids"]
    for pos in range(len(full) - len(bare) + 1):
        if full[pos:pos + len(bare)] == bare:
            return full[:pos], full[pos + len(bare):]
    raise ValueError("could not locate the text between the tokenizer's special tokens")


def _encode(path: str, texts: list[str], max_len: int, pooler: Pooler, batch_size: int, num_threads: int,
            precision: str = "float32", chunking: Chunking = "truncate") -> np.ndarray:
    """Run the model over every chunk of every text, length-sorted so batches carry little padding, then pool
    each text over the real tokens of all its chunks (mean: token-weighted; cls: mean of the chunks' first
    tokens; max: elementwise max) and L2-normalise."""
    import torch

    from fb3stack.progress import progress as tqdm

    torch.set_num_threads(num_threads)
    tokenizer, model = _load(path, precision)
    prefix, suffix = _special_tokens(tokenizer)
    body = max_len - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"max_len {max_len} leaves no room for tokens besides the special ones")
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    owner, chunks = [], []
    for i, t_ids in enumerate(ids):
        for piece in chunk_ids(t_ids, body, chunking):
            owner.append(i)
            chunks.append(prefix + list(piece) + suffix)
    owner_arr = np.asarray(owner)
    dim = model.config.hidden_size
    sums = np.zeros((len(texts), dim), dtype=np.float64)
    counts = np.zeros(len(texts), dtype=np.float64)
    maxes = np.full((len(texts), dim), -np.inf, dtype=np.float64)
    order = np.argsort([len(c) for c in chunks], kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in tqdm(range(0, len(chunks), batch_size), desc=f"embed {Path(path).name}", leave=False):
            idx = order[start:start + batch_size]
            width = max(len(chunks[j]) for j in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, j in enumerate(idx):
                input_ids[row, :len(chunks[j])] = torch.tensor(chunks[j])
                mask[row, :len(chunks[j])] = 1
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            m = mask.unsqueeze(-1).to(hidden.dtype)
            if pooler == "mean":
                part, n = (hidden * m).sum(1), m.sum(1).squeeze(-1)
            elif pooler == "max":
                part, n = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values, torch.ones(len(idx))
            else:
                part, n = hidden[:, 0], torch.ones(len(idx))
            rows = owner_arr[idx]
            if pooler == "max":
                np.maximum.at(maxes, rows, part.double().numpy())
            else:
                np.add.at(sums, rows, part.double().numpy())
            np.add.at(counts, rows, n.double().numpy())
    pooled = torch.from_numpy(maxes if pooler == "max" else sums / np.maximum(counts, 1.0)[:, None])
    return torch.nn.functional.normalize(pooled, dim=-1).float().numpy()


def _read_store(path: Path, key_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    z = load_npz_checked(path)  # None when absent or damaged (checksum): recomputed, never half-used
    if z is None:
        return np.array([], dtype=key_dtype), None
    return z["keys"], z["values"]


def _write_store(path: Path, keys: np.ndarray, values: np.ndarray) -> None:
    # keys and vectors in one atomically replaced file: parallel fold jobs (Ray) may write the same store,
    # and the last writer wins with a consistent pair; a lost update only means recomputing later
    save_npz_checked(path, keys=keys, values=values)


def store_dir(cache_dir: Path, spec: str, max_len: int, pooler: Pooler, precision: str,
              chunking: Chunking = "truncate") -> Path:
    """One store per (weights, encoder version, window, chunking, pooler, precision): change any, get another."""
    return (Path(cache_dir) / f"{backbone_identity(spec)[:16]}-{ENCODER_VERSION}-len{max_len}-{chunking}-{pooler}"
            f"-{precision}")


def _embed_one(texts: list[str], spec: str, max_len: int, pooler: Pooler, cache_dir: Path | None,
               batch_size: int, num_threads: int, precision: str, chunking: Chunking) -> np.ndarray:
    path = resolve_backbone_path(spec)
    if cache_dir is None:
        # no workspace (predicting from a bundle or a workspace's saved folds): remember the last few results
        # in memory, so members sharing a backbone and settings (SVR and ridge heads) embed a test set once
        key = (backbone_identity(spec), ENCODER_VERSION, max_len, chunking, pooler, precision,
               hashlib.sha256("\0".join(text_keys(texts)).encode()).hexdigest())
        if key not in _RECENT:
            _RECENT[key] = _encode(path, texts, max_len, pooler, batch_size, num_threads, precision, chunking)
            while len(_RECENT) > _RECENT_MAX:
                _RECENT.pop(next(iter(_RECENT)))
        return _RECENT[key].copy()
    store = store_dir(cache_dir, spec, max_len, pooler, precision, chunking)
    keys = text_keys(texts)
    known_keys, known = _read_store(store / STORE_FILE, keys.dtype)
    index = {k: i for i, k in enumerate(known_keys)}
    missing = sorted({k for k in keys if k not in index})
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        new = _encode(path, [texts[first[k]] for k in missing], max_len, pooler, batch_size, num_threads,
                      precision, chunking)
        known = new if known is None else np.concatenate([known, new])
        known_keys = np.concatenate([known_keys, np.array(missing)])
        index = {k: i for i, k in enumerate(known_keys)}
        _write_store(store / STORE_FILE, known_keys, known)
        write_json(store / "meta.json", {"backbone": spec, "path": path, "max_len": max_len, "pooler": pooler,
                                         "precision": precision, "chunking": chunking,
                                         "encoder_version": ENCODER_VERSION,
                                         "n_texts": len(known_keys), "dim": int(known.shape[1])})
        logger.info("embedded %d new texts with %s (max_len %d, %s, %s); %d cached", len(missing), spec, max_len,
                    chunking, precision, len(keys) - len(missing))
    return known[[index[k] for k in keys]]


def embed_texts(texts: list[str], backbones: list[str], max_len: int = 512, pooler: Pooler = "mean",
                cache_dir: str | os.PathLike | None = None, batch_size: int = 16, num_threads: int = 2,
                precision: Precision = "auto", chunking: Chunking = "truncate") -> np.ndarray:
    """(n, sum of hidden sizes) float32: each backbone's L2-normalised pooled embedding, concatenated."""
    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")
    prec = resolve_precision(precision)
    parts = [_embed_one(list(texts), b, max_len, pooler, Path(cache_dir) if cache_dir else None, batch_size,
                        num_threads, prec, chunking) for b in backbones]
    return np.concatenate(parts, axis=1).astype(np.float32)
