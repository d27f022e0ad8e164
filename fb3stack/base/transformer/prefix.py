"""Frozen prefix computed once: with `freeze_layers: N`, the embeddings and the first N encoder layers are a fixed
function of the token ids, so their outputs are computed once per essay and replayed in every step, evaluation
and fold.

Contract:
- `PrefixPlan.build(model, cfg)`: what to keep, or None where the cache does not apply (no frozen layers, an
  architecture not verified here, data parallelism, `prefix_cache: false`). Kept are the outputs of the last
  frozen layer (the input of the first trained one), of the frozen layers whose states the pooler reads
  (weighted-layer and mean-concat read the last `pooler_layers` hidden states), and of the embeddings where the
  pooler reads them or the encoder mixes them in again later (DeBERTa-v2's conv after layer 0).
- `compute_prefix(model, plan, tokens, autocast, folder)`: one pass through the frozen part only, in length-sorted
  batches, under the training autocast; the trained layers are swapped for identities meanwhile. With a folder
  (the workspace cache) the result is stored atomically as `prefix-<key>/`, one .npy per kept output (real tokens
  only, flat, memory-mapped when read) plus `index.npz` and a `seal.json` of sha256s: a damaged or half-written
  store is recomputed, never used. The key covers the frozen weights, the architecture, N, what is kept, the
  storage and autocast dtypes and every essay's token ids, so a changed backbone, tokenization or freeze
  depth never meets an old store.
- `PrefixStore.gather(rows, width)`: the kept outputs of those essays, zero-padded to the batch width (padded
  positions are masked, as in the plain path).
- `replay(model, plan, states)`: inside it the embeddings and frozen layers return the stored outputs instead of
  computing (their `forward` is swapped on the instance), so the library's own encoder loop (attention masks,
  relative positions, the conv) runs unchanged over the trained layers.

Why replay and not "run the encoder from layer N": every architecture builds its masks and positions inside its
own encoder loop; replaying the frozen modules' outputs keeps that code the library's, for BERT, MPNet and
DeBERTa-v2/v3 alike, verified by tests against the plain frozen forward (tests/test_prefix_cache.py).

Storage is fp16 when training under autocast (the next layer's matmuls read bf16/fp16 anyway; fp16 keeps 10
mantissa bits), fp32 without; a kept output that would overflow fp16 is stored fp32. Memory: tokens x hidden x
bytes per kept output (MiniLM, 3,911 essays at head_tail 512: ~1.3 GB per output in fp16), on disk and
memory-mapped, so the page cache holds it, not the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fb3stack import dist
from fb3stack.base.transformer.backbone import embeddings_module, encoder_layers
from fb3stack.io import atomic_dir, load_npz_checked, read_json, save_npz_checked, sha256_file, sha256_json, write_json

logger = logging.getLogger(__name__)

# model_type of the architectures whose replay is verified against the plain forward (tests/test_prefix_cache.py)
SUPPORTED = frozenset({"bert", "mpnet", "deberta-v2"})
EMBEDDINGS = "embeddings"
SEAL = "seal.json"
INDEX = "index.npz"


def essay_key(ids: np.ndarray) -> str:
    """An essay as the model sees it: its token ids (tokenizer, truncation and marker included)."""
    return hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int32).tobytes()).hexdigest()


def frozen_digest(model: nn.Module) -> str:
    """sha256 of the frozen parameters' values: the prefix is a function of these and the token ids."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class PrefixPlan:
    n_frozen: int
    keep: tuple[str, ...]  # EMBEDDINGS and/or "layer<i>" (0-based), in forward order
    hidden: int

    @staticmethod
    def build(backbone: nn.Module, n_frozen: int, pooler: nn.Module, enabled: bool = True) -> PrefixPlan | None:
        if not enabled or n_frozen < 1:
            return None
        model_type = getattr(backbone.config, "model_type", "?")
        if model_type not in SUPPORTED:
            logger.info("prefix cache: %s is not one of the verified architectures (%s); the frozen layers run "
                        "forward in every step", model_type, ", ".join(sorted(SUPPORTED)))
            return None
        if dist.is_distributed():
            logger.info("prefix cache: off under data parallelism (one process computes and stores it only in "
                        "single-process runs); the frozen layers run forward in every step")
            return None
        n_layers = len(encoder_layers(backbone))
        # hidden_states: index 0 = embeddings, i = output of layer i-1; the pooler reads the last pooler_layers
        read = set(range(n_layers + 1 - getattr(pooler, "n", 1), n_layers + 1)) if pooler.needs_hidden_states \
            else set()
        keep = [f"layer{i}" for i in range(n_frozen) if i == n_frozen - 1 or i + 1 in read]
        conv = getattr(getattr(backbone, "encoder", None), "conv", None) is not None
        if 0 in read or conv:
            keep.insert(0, EMBEDDINGS)
        return PrefixPlan(n_frozen, tuple(keep), backbone.config.hidden_size)

    def modules(self, backbone: nn.Module) -> dict[str, nn.Module]:
        """The modules replay stands in for: the embeddings and every frozen layer."""
        layers = encoder_layers(backbone)
        return {EMBEDDINGS: embeddings_module(backbone), **{f"layer{i}": layers[i] for i in range(self.n_frozen)}}


class PrefixStore:
    """Kept outputs of a set of essays: flat (tokens, hidden) arrays, one per kept output, and row offsets."""

    def __init__(self, keys: list[str], offsets: np.ndarray, states: dict[str, np.ndarray],
                 structure: dict[str, int], dtypes: dict[str, str]) -> None:
        self.keys, self.offsets, self.states = keys, offsets, states
        self.structure = structure  # per replayed module: 0 = returns a tensor, n = a tuple of n (first = states)
        self.dtypes = dtypes  # the dtype each kept output had in the forward (replayed as that dtype)
        self.row = {k: i for i, k in enumerate(keys)}

    def rows(self, tokens: list[np.ndarray]) -> np.ndarray:
        return np.asarray([self.row[essay_key(t)] for t in tokens], dtype=np.int64)

    def gather(self, rows: torch.Tensor, width: int, device: torch.device) -> dict[str, torch.Tensor]:
        out = {}
        for name, flat in self.states.items():
            batch = torch.zeros((len(rows), width, flat.shape[1]), dtype=getattr(torch, self.dtypes[name]))
            for b, r in enumerate(rows.tolist()):
                a, z = int(self.offsets[r]), int(self.offsets[r + 1])
                batch[b, : z - a] = torch.from_numpy(flat[a:z].astype(np.float32))
            out[name] = batch.to(device, non_blocking=True)
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.states.values())


def _first(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _stand_in(structure: int, value: torch.Tensor):  # noqa: ANN202 - a forward replacement
    def forward(*args: object, **kwargs: object) -> object:
        return value if structure == 0 else (value, *([None] * (structure - 1)))
    return forward


@contextlib.contextmanager
def _swapped(modules: dict[str, nn.Module], forwards: dict[str, object]) -> Iterator[None]:
    """Instance-level forward replacements (nn.Module.__call__ calls self.forward, so hooks still run)."""
    for name, fwd in forwards.items():
        modules[name].forward = fwd
    try:
        yield
    finally:
        for name in forwards:
            modules[name].__dict__.pop("forward", None)


@contextlib.contextmanager
def replay(backbone: nn.Module, plan: PrefixPlan, store: PrefixStore, states: dict[str, torch.Tensor],
           shape: tuple[int, int]) -> Iterator[None]:
    """Within: the embeddings and frozen layers return `states` (kept outputs) or, where nothing was kept because
    nothing downstream reads them, zeros of the batch's shape."""
    modules = plan.modules(backbone)
    ref = next(iter(states.values()))
    zeros = torch.zeros((*shape, plan.hidden), dtype=ref.dtype, device=ref.device)
    forwards = {name: _stand_in(store.structure[name], states.get(name, zeros)) for name in modules}
    with _swapped(modules, forwards):
        yield


def _identity(structure: dict[str, int]):  # noqa: ANN202 - a forward replacement
    """A trained layer during the prefix pass: passes its input on, shaped as the frozen layers (same class)
    returned theirs (known by then: layer 0 always runs first)."""
    def forward(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:
        n = structure["layer0"]
        return hidden_states if n == 0 else (hidden_states, *([None] * (n - 1)))
    return forward


def storage_dtype(amp_dtype: torch.dtype | None) -> str:
    return "float32" if amp_dtype is None else "float16"


def prefix_key(plan: PrefixPlan, backbone: nn.Module, keys: list[str], amp_dtype: torch.dtype | None) -> str:
    return sha256_json([type(backbone).__name__, frozen_digest(backbone), plan.n_frozen, list(plan.keep),
                        storage_dtype(amp_dtype), str(amp_dtype), sorted(set(keys))])[:16]


class _Overflow(Exception):
    pass


@torch.inference_mode()
def compute_prefix(backbone: nn.Module, plan: PrefixPlan, tokens: list[np.ndarray],
                   autocast: Callable[[], contextlib.AbstractContextManager],
                   device: torch.device, amp_dtype: torch.dtype | None, folder: Path | None = None,
                   pad_id: int = 0, batch_tokens: int = 16384) -> PrefixStore | None:
    """The kept outputs for `tokens` (each distinct essay once): from `folder` when a sound store of the same key
    is there, else computed (and stored there) under `autocast()` (it makes the training autocast context). None
    when a kept output exceeds fp16's range (the caller then runs the plain frozen forward: a store never holds
    inf for a finite activation)."""
    unique = list({essay_key(t): t for t in tokens}.items())
    keys = [k for k, _ in unique]
    path = folder / f"prefix-{prefix_key(plan, backbone, keys, amp_dtype)}" if folder else None
    stored = _open(path) if path is not None else None
    if stored is not None:
        logger.info("prefix cache: %d essays read from %s", len(stored.keys), path)
        return stored
    lengths = np.asarray([len(t) for _, t in unique])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    layers, modules = encoder_layers(backbone), plan.modules(backbone)
    captured: dict[str, torch.Tensor] = {}
    structure: dict[str, int] = {}

    def hook(name: str):  # noqa: ANN202
        def fn(module: nn.Module, args: object, out: object) -> None:
            structure[name] = 0 if isinstance(out, torch.Tensor) else len(out)
            captured[name] = _first(out)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    rest = {f"layer{i}": layers[i] for i in range(plan.n_frozen, len(layers))}
    states: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    was_training = backbone.training
    backbone.eval()
    try:
        with (atomic_dir(path) if path is not None else contextlib.nullcontext(None)) as tmp, \
                _swapped(rest, {n: _identity(structure) for n in rest}):
            order, start = np.argsort(-lengths, kind="stable"), 0
            while start < len(order):  # longest first, batches of about batch_tokens tokens
                width = int(lengths[order[start]])
                rows = order[start:start + max(1, batch_tokens // max(width, 1))]
                start += len(rows)
                ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for b, r in enumerate(rows):
                    ids[b, : lengths[r]] = torch.from_numpy(unique[r][1].astype(np.int64))
                    mask[b, : lengths[r]] = 1
                with autocast():
                    backbone(input_ids=ids.to(device), attention_mask=mask.to(device))
                for name in plan.keep:
                    out = captured[name].float().cpu().numpy()
                    if name not in states:
                        dtypes[name] = str(captured[name].dtype).removeprefix("torch.")
                        states[name] = _allocate(tmp, name, (int(offsets[-1]), plan.hidden), storage_dtype(amp_dtype))
                    if states[name].dtype == np.float16 and np.abs(out).max() > np.finfo(np.float16).max:
                        raise _Overflow(name)
                    for b, r in enumerate(rows):
                        states[name][offsets[r]:offsets[r + 1]] = out[b, : lengths[r]]
            if tmp is not None:
                for arr in states.values():
                    arr.flush()
                save_npz_checked(tmp / INDEX, keys=np.asarray(keys), offsets=offsets)
                write_json(tmp / SEAL, {"structure": structure, "dtypes": dtypes,
                                        "files": {f"{n}.npy": sha256_file(tmp / f"{n}.npy") for n in states}})
    except _Overflow as err:
        logger.warning("prefix cache: %s exceeds fp16's range; the frozen layers run forward in every step", err)
        return None
    finally:
        for h in handles:
            h.remove()
        backbone.train(was_training)
    logger.info("prefix cache: %d essays computed once (%.2f GB%s)", len(keys),
                sum(a.nbytes for a in states.values()) / 1e9, f", {path}" if path else ", in memory")
    if path is None:
        return PrefixStore(keys, offsets, states, structure, dtypes)
    opened = _open(path)
    if opened is None:
        raise RuntimeError(f"{path}: the prefix store just written does not verify")
    return opened


def _allocate(folder: Path | None, name: str, shape: tuple[int, int], dtype: str) -> np.ndarray:
    if folder is None:
        return np.zeros(shape, dtype=dtype)
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def _open(path: Path) -> PrefixStore | None:
    """A stored prefix, every file checked against its seal; None (recompute) when missing or damaged."""
    if not path.is_dir():
        return None
    try:
        seal = read_json(path / SEAL)
        index = load_npz_checked(path / INDEX)
        bad = [f for f, digest in seal["files"].items() if sha256_file(path / f) != digest]
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("prefix cache %s is damaged (%s); recomputing it", path, err)
        shutil.rmtree(path, ignore_errors=True)
        return None
    if index is None or bad:
        logger.warning("prefix cache %s is damaged (%s); recomputing it", path, ", ".join(bad) or INDEX)
        shutil.rmtree(path, ignore_errors=True)
        return None
    states = {f.removesuffix(".npy"): np.load(path / f, mmap_mode="r") for f in seal["files"]}
    return PrefixStore([str(k) for k in index["keys"]], index["offsets"], states, seal["structure"],
                       seal["dtypes"])
