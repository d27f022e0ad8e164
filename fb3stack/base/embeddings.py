"""Frozen-backbone sentence embeddings, computed once per text and cached on disk.

`embed_texts(texts, backbones, ...)` returns one L2-normalised row per text (several backbones concatenated).
Each (backbone identity, encoder version, `Encoding`: max_len, chunking, pooler, hidden layers, precision) has
its own store under the cache folder, holding the embeddings of every text seen so far keyed by the text's
SHA-1. Only texts not in the store are run through the model, so the five folds of a zoo run (and any later
run in a workspace sharing the cache) embed the training essays once. The identity is a hash of the backbone's
config and weight files, so swapping the weights under the same path, or changing any of those settings,
addresses another store: stale vectors are never reused.

Essays longer than the window (`max_len` tokens, 40% of FB3 at 512) are embedded as several chunks
(`chunking`: head+tail or consecutive windows) pooled over all their tokens, instead of being cut.

`layers` picks the hidden states that are pooled (default the last): for the traits scored here (syntax,
grammar, conventions) a middle layer of a sentence encoder carries more than its last one, which is trained to
forget form for meaning; measured on FB3 with MiniLM-L6, ridge OOF MCRMSE 0.5377 (layer 6) vs 0.5073 (layer 4),
docs/cpu_members.md. Layers above the deepest pooled one are not run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fb3stack.base.backbones import resolve_backbone_path
from fb3stack.hardware import cpu_has_native_bf16
from fb3stack.io import load_npz_checked, save_npz_checked, write_json

logger = logging.getLogger(__name__)

# the parameter-free poolers of fb3stack.base.transformer.poolers (a frozen backbone has nothing to train them)
PoolerName = Literal["mean", "max", "min", "cls"]
Precision = Literal["auto", "float32", "bfloat16"]
Chunking = Literal["truncate", "head_tail", "windows"]
CHUNKINGS = ("truncate", "head_tail", "windows")
POOLER_NAMES = ("mean", "max", "min", "cls")
STORE_FILE = "store.npz"
# bump when _encode computes different numbers for the same settings (v2: weights cast to bf16 instead of
# autocast, chunks pooled token-weighted; v3: pooled by transformer.poolers per chunk, hidden layers chosen),
# so older stores are never read as if current
ENCODER_VERSION = "e3"
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


def model_depth(path: str) -> int:
    """Transformer layers of the model folder (config.json's num_hidden_layers)."""
    import json

    config = json.loads((Path(path) / "config.json").read_text())
    if "num_hidden_layers" not in config:
        raise ValueError(f"{path}/config.json has no num_hidden_layers: cannot pick hidden layers from it")
    return int(config["num_hidden_layers"])


def resolve_layers(layers: list[int] | tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Hidden-state indices as absolute positions: 0 is the embedding output, k the output of layer k,
    negatives count from the last (-1 = depth), so `[-3]` and `[4]` of a 6-layer model name the same store."""
    out = []
    for layer in layers:
        absolute = layer + depth + 1 if layer < 0 else layer
        if not 0 <= absolute <= depth:
            raise ValueError(f"layer {layer} does not exist: the model has hidden states 0..{depth} "
                             f"(or -1..-{depth + 1})")
        out.append(absolute)
    if not out:
        raise ValueError("layers must name at least one hidden state")
    return tuple(out)


@functools.lru_cache(maxsize=2)
def _load(path: str, precision: str = "float32", depth: int | None = None):  # noqa: ANN202 - heavy types
    """(tokenizer, model); with `depth`, only the first `depth` layers are kept: the layers above the deepest
    pooled one would be computed for nothing (pooling layer 4 of MiniLM-L6 runs 4 of its 6 layers)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if depth is not None and isinstance(layers, torch.nn.ModuleList) and depth < len(layers):
        model.encoder.layer = layers[:depth]
        model.config.num_hidden_layers = depth
    if precision == "bfloat16":
        # weights cast once: torch.autocast re-casts every weight on every forward, which for mpnet spent a
        # third of the CPU time in the kernel allocating and zeroing fresh pages (measured, docs/cpu_members.md)
        model = model.to(torch.bfloat16)
    return tokenizer, model


def resolve_precision(precision: Precision) -> str:
    """'auto' is bfloat16 where the CPU computes bf16 natively (about 2x faster on AVX512-BF16/AMX), else float32."""
    if precision != "auto":
        return precision
    return "bfloat16" if cpu_has_native_bf16() else "float32"


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


def _encode(path: str, texts: list[str], enc: Encoding, batch_size: int, num_threads: int) -> np.ndarray:
    """Run the model over every chunk of every text, length-sorted so batches carry little padding, pool each
    chunk's hidden state of every layer in `enc.layers` with the named pooler (fb3stack.base.transformer.poolers,
    the poolers fine-tuned members use), combine a text's chunks (mean: weighted by real tokens; max/min:
    elementwise; cls: plain mean), L2-normalise each layer's vector and concatenate them."""
    import torch

    from fb3stack.base.transformer.poolers import make_pooler
    from fb3stack.progress import progress as tqdm

    torch.set_num_threads(num_threads)
    absolute, pooler, chunking = enc.layers, enc.pooler, enc.chunking
    tokenizer, model = _load(path, enc.precision, max(max(absolute), 1))
    pool = make_pooler(pooler, model.config.hidden_size)
    prefix, suffix = _special_tokens(tokenizer)
    body = enc.max_len - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"max_len {enc.max_len} leaves no room for tokens besides the special ones")
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    owner, chunks = [], []
    for i, t_ids in enumerate(ids):
        for piece in chunk_ids(t_ids, body, chunking):
            owner.append(i)
            chunks.append(prefix + list(piece) + suffix)
    owner_arr = np.asarray(owner)
    dim = model.config.hidden_size * len(absolute)
    extreme = {"max": (np.maximum, -np.inf), "min": (np.minimum, np.inf)}.get(pooler)
    acc = np.full((len(texts), dim), extreme[1] if extreme else 0.0, dtype=np.float64)
    weights = np.zeros(len(texts), dtype=np.float64)
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
            states = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            part = torch.cat([pool(states[k].float(), None, mask) for k in absolute], dim=-1).double().numpy()
            rows = owner_arr[idx]
            if extreme:
                extreme[0].at(acc, rows, part)
                continue
            w = mask.sum(1).double().numpy() if pooler == "mean" else np.ones(len(idx))
            np.add.at(acc, rows, part * w[:, None])
            np.add.at(weights, rows, w)
    pooled = acc if extreme else acc / np.maximum(weights, 1.0)[:, None]
    per_layer = torch.from_numpy(pooled).view(len(texts), len(absolute), -1)
    return torch.nn.functional.normalize(per_layer, dim=-1).reshape(len(texts), dim).float().numpy()


@dataclass(frozen=True)
class Encoding:
    """Everything an embedding depends on besides the backbone's files; `layers` absolute, precision resolved."""

    max_len: int = 512
    chunking: Chunking = "truncate"
    pooler: PoolerName = "mean"
    layers: tuple[int, ...] = (-1,)
    precision: str = "float32"

    def name(self) -> str:
        layers = ".".join(map(str, self.layers))
        return f"len{self.max_len}-{self.chunking}-{self.pooler}-L{layers}-{self.precision}"


def resolve_encoding(spec: str, max_len: int = 512, chunking: Chunking = "truncate", pooler: PoolerName = "mean",
                     layers: list[int] | tuple[int, ...] = (-1,), precision: Precision = "auto") -> Encoding:
    """The settings as one key: layers made absolute for this backbone, 'auto' precision decided here."""
    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")
    if pooler not in POOLER_NAMES:
        raise ValueError(f"a frozen backbone's pooler must be one of {POOLER_NAMES}, got {pooler!r}")
    depth = model_depth(resolve_backbone_path(spec))
    return Encoding(max_len, chunking, pooler, resolve_layers(layers, depth), resolve_precision(precision))


def store_dir(cache_dir: Path, spec: str, enc: Encoding) -> Path:
    """One store per (weights, encoder version, encoding): change any, get another."""
    return Path(cache_dir) / f"{backbone_identity(spec)[:16]}-{ENCODER_VERSION}-{enc.name()}"


def _embed_one(texts: list[str], spec: str, enc: Encoding, cache_dir: Path | None, batch_size: int,
               num_threads: int) -> np.ndarray:
    path = resolve_backbone_path(spec)
    if cache_dir is None:
        # no workspace (predicting from a bundle or a workspace's saved folds): remember the last few results
        # in memory, so members sharing a backbone and settings (SVR and ridge heads) embed a test set once
        key = (backbone_identity(spec), ENCODER_VERSION, enc,
               hashlib.sha256("\0".join(text_keys(texts)).encode()).hexdigest())
        if key not in _RECENT:
            _RECENT[key] = _encode(path, texts, enc, batch_size, num_threads)
            while len(_RECENT) > _RECENT_MAX:
                _RECENT.pop(next(iter(_RECENT)))
        return _RECENT[key].copy()
    store = store_dir(cache_dir, spec, enc)
    keys = text_keys(texts)
    saved = load_npz_checked(store / STORE_FILE)  # None when absent or damaged (checksum): recomputed
    known_keys, known = (saved["keys"], saved["values"]) if saved is not None else (np.array([], keys.dtype), None)
    index = {k: i for i, k in enumerate(known_keys)}
    missing = sorted({k for k in keys if k not in index})
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        new = _encode(path, [texts[first[k]] for k in missing], enc, batch_size, num_threads)
        known = new if known is None else np.concatenate([known, new])
        known_keys = np.concatenate([known_keys, np.array(missing)])
        index = {k: i for i, k in enumerate(known_keys)}
        # keys and vectors in one atomically replaced file: parallel fold jobs (Ray) may write the same store, the
        # last writer wins with a consistent pair, and a lost update only means recomputing later
        save_npz_checked(store / STORE_FILE, keys=known_keys, values=known)
        write_json(store / "meta.json", {"backbone": spec, "path": path, **asdict(enc),
                                         "encoder_version": ENCODER_VERSION,
                                         "n_texts": len(known_keys), "dim": int(known.shape[1])})
        logger.info("embedded %d new texts with %s (%s); %d cached", len(missing), spec, enc.name(),
                    len(keys) - len(missing))
    return known[[index[k] for k in keys]]


def embed_texts(texts: list[str], backbones: list[str], max_len: int = 512, pooler: PoolerName = "mean",
                cache_dir: str | os.PathLike | None = None, batch_size: int = 16, num_threads: int = 2,
                precision: Precision = "auto", chunking: Chunking = "truncate",
                layers: list[int] | tuple[int, ...] = (-1,)) -> np.ndarray:
    """(n, sum over backbones of hidden size x len(layers)) float32: each backbone's pooled hidden states of
    `layers`, each L2-normalised, concatenated."""
    parts = [_embed_one(list(texts), b, resolve_encoding(b, max_len, chunking, pooler, layers, precision),
                        Path(cache_dir) if cache_dir else None, batch_size, num_threads) for b in backbones]
    return np.concatenate(parts, axis=1).astype(np.float32)
