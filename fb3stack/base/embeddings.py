"""Frozen-backbone sentence embeddings, computed once per text and cached on disk.

`embed_texts(texts, backbones, ...)` returns one L2-normalised row per text (several backbones concatenated).
Each (backbone identity, max_len, pooler) has its own store under the cache folder, holding the embeddings of
every text seen so far keyed by the text's SHA-1. Only texts not in the store are run through the model, so
the five folds of a zoo run (and any later run in a workspace sharing the cache) embed the training essays
once. The identity is a hash of the backbone's config and weight files, so swapping the weights under the
same path, or changing max_len, the pooler or the precision, addresses another store: stale vectors are never reused.
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
from fb3stack.io import load_npz_checked, read_json, save_npz_checked, write_json

logger = logging.getLogger(__name__)

Pooler = Literal["mean", "cls", "max"]
Precision = Literal["auto", "float32", "bfloat16"]
STORE_FILE = "store.npz"
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
def _load(path: str):  # noqa: ANN202 - (tokenizer, model); transformers types are heavy to import at top level
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return tokenizer, model


def resolve_precision(precision: Precision) -> str:
    """'auto' is bfloat16 where the CPU has native bf16 (about 2x faster on AMX/AVX512-BF16), else float32."""
    if precision != "auto":
        return precision
    import torch

    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


def _encode(path: str, texts: list[str], max_len: int, pooler: Pooler, batch_size: int, num_threads: int,
            precision: str = "float32") -> np.ndarray:
    """Run the model: length-sorted batches so padding stays small, pooled over real tokens, L2-normalised."""
    import torch

    from fb3stack.progress import progress as tqdm

    torch.set_num_threads(num_threads)
    tokenizer, model = _load(path)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    bf16 = precision == "bfloat16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in tqdm(range(0, len(texts), batch_size), desc=f"embed {Path(path).name}", leave=False):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if pooler == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            elif pooler == "max":
                pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
            else:
                pooled = hidden[:, 0]
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
    return out


def _read_store(path: Path, key_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    z = load_npz_checked(path)  # None when absent or damaged (checksum): recomputed, never half-used
    if z is None:
        return np.array([], dtype=key_dtype), None
    return z["keys"], z["values"]


def _write_store(path: Path, keys: np.ndarray, values: np.ndarray) -> None:
    # keys and vectors in one atomically replaced file: parallel fold jobs (Ray) may write the same store,
    # and the last writer wins with a consistent pair; a lost update only means recomputing later
    save_npz_checked(path, keys=keys, values=values)


def store_dir(cache_dir: Path, spec: str, max_len: int, pooler: Pooler, precision: str) -> Path:
    return Path(cache_dir) / f"{backbone_identity(spec)[:16]}-len{max_len}-{pooler}-{precision}"


def _embed_one(texts: list[str], spec: str, max_len: int, pooler: Pooler, cache_dir: Path | None,
               batch_size: int, num_threads: int, precision: str) -> np.ndarray:
    path = resolve_backbone_path(spec)
    if cache_dir is None:
        return _encode(path, texts, max_len, pooler, batch_size, num_threads, precision)
    store = store_dir(cache_dir, spec, max_len, pooler, precision)
    keys = text_keys(texts)
    known_keys, known = _read_store(store / STORE_FILE, keys.dtype)
    index = {k: i for i, k in enumerate(known_keys)}
    missing = sorted({k for k in keys if k not in index})
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        new = _encode(path, [texts[first[k]] for k in missing], max_len, pooler, batch_size, num_threads,
                      precision)
        known = new if known is None else np.concatenate([known, new])
        known_keys = np.concatenate([known_keys, np.array(missing)])
        index = {k: i for i, k in enumerate(known_keys)}
        _write_store(store / STORE_FILE, known_keys, known)
        write_json(store / "meta.json", {"backbone": spec, "path": path, "max_len": max_len, "pooler": pooler,
                                         "precision": precision,
                                         "n_texts": len(known_keys), "dim": int(known.shape[1])})
        logger.info("embedded %d new texts with %s (max_len %d); %d cached", len(missing), spec, max_len, len(keys)
                    - len(missing))
    return known[[index[k] for k in keys]]


def embed_texts(texts: list[str], backbones: list[str], max_len: int = 512, pooler: Pooler = "mean",
                cache_dir: str | os.PathLike | None = None, batch_size: int = 16, num_threads: int = 2,
                precision: Precision = "auto") -> np.ndarray:
    """(n, sum of hidden sizes) float32: each backbone's L2-normalised pooled embedding, concatenated."""
    prec = resolve_precision(precision)
    parts = [_embed_one(list(texts), b, max_len, pooler, Path(cache_dir) if cache_dir else None, batch_size,
                        num_threads, prec) for b in backbones]
    return np.concatenate(parts, axis=1).astype(np.float32)


def store_info(store: Path) -> dict:
    return read_json(store / "meta.json")
