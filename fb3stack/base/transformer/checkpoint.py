"""Fold checkpoints: half precision on disk, frozen parameters stored once per member.

    fold<k>/model.safetensors          the parameters training changed (+ buffers), in `checkpoint_dtype`
    fold<k>/frozen.json                where the frozen part lives (relative to the fold) and its sha256
    <member>/shared/frozen-<sha16>.safetensors
                                       the frozen parameters (freeze_layers / freeze_embeddings), written once:
                                       content-addressed, so every fold with the same frozen weights names the
                                       same file

Storage is fp16 by default: 10 mantissa bits (relative rounding 2^-11 = 0.05%) against bf16's 7 (0.4%), and
transformer weights sit far inside fp16's range (|w| < 65504); the hub's DeBERTa-v3 weights and the FB3
community's shared checkpoints are fp16 too. A tensor that would overflow fp16 (a finite value turning inf) is
kept in fp32, with a warning, never stored as inf; so is the 6-output head (KEEP_FP32, a few kB). Loading
widens everything to the model's float32 parameters (autocast gives the GPU its half-precision speed), so a
fold predicts from the rounded weights in fp32.

Only saving changes: training keeps fp32 master weights in memory, and a killed run resumes at the first
unfinished fold (runner.train_fold), so nothing ever reads a half checkpoint back mid-fold.

The frozen part's sha256 is in frozen.json, which the fold's seal (files.json) covers: a fold's digest, hence
the member's content hash, changes with it; loading refuses a frozen file whose hash differs (replaced by
another backbone's, truncated, altered).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import _remove_duplicate_names, load_file, save, save_file
from torch import nn

from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.io import atomic_path, read_json, sha256_bytes, sha256_file_cached, write_json
from fb3stack.workspace import CorruptArtefactError

logger = logging.getLogger(__name__)

CHECKPOINT = "model.safetensors"
FROZEN_REF = "frozen.json"
SHARED_DIR = "shared"
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def bytes_per_param(storage: str) -> int:
    """Bytes one floating-point parameter takes in a checkpoint stored as `storage` (fp16, bf16, fp32)."""
    return STORAGE_DTYPES[storage].itemsize


def frozen_names(model: nn.Module) -> set[str]:
    """state_dict names of the parameters training leaves alone (requires_grad off after freezing)."""
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with tied tensors once (safetensors refuses shared storage)."""
    state = model.state_dict()
    for names in _remove_duplicate_names(state).values():
        for name in names:
            del state[name]
    return state


# the output head (FB3Model.fc: 6 x width + 6) stays fp32: its bias sits near the trait means (~3), where fp16's
# step is 2^-9 ~ 0.002, so rounding it alone would shift every prediction by up to 1e-3; it is a few kB
KEEP_FP32 = ("fc.",)


def _stored(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.is_floating_point() and t.dtype != dtype and not name.startswith(KEEP_FP32):
            half = t.to(dtype)
            if not torch.isfinite(half).all() and torch.isfinite(t).all():
                logger.warning("%s: |max| %.3g overflows %s; stored in float32", name, t.abs().max().item(), dtype)
            else:
                t = half
        out[name] = t.contiguous().cpu()
    return out


class CheckpointWriter:
    """Saves a fold's kept weights (called at every new best); the frozen part is written once per fold, into
    `shared_dir` when given (the member's folder), else inside the fold."""

    def __init__(self, fold_dir: Path, storage: str = "fp16", shared_dir: Path | None = None) -> None:
        self.fold_dir, self.dtype, self.shared_dir = Path(fold_dir), STORAGE_DTYPES[storage], shared_dir
        self._frozen: set[str] | None = None

    @property
    def path(self) -> Path:
        return self.fold_dir / CHECKPOINT

    def save(self, model: nn.Module) -> None:
        state = _state(model)
        if self._frozen is None:
            self._frozen = frozen_names(model) & set(state) if self.shared_dir is not None else set()
            if self._frozen:
                self._write_frozen({k: state[k] for k in sorted(self._frozen)})
        save_file(_stored({k: v for k, v in state.items() if k not in self._frozen}, self.dtype), str(self.path),
                  metadata={"format": "pt"})

    def _write_frozen(self, tensors: dict[str, torch.Tensor]) -> None:
        data = save(_stored(tensors, self.dtype), metadata={"format": "pt"})  # deterministic bytes: same weights,
        sha = sha256_bytes(data)                                              # same file name
        path = self.shared_dir / f"frozen-{sha[:16]}.safetensors"
        if not (path.is_file() and sha256_file_cached(path) == sha):
            with atomic_path(path) as tmp:  # parallel fold jobs may write it at once: each rename is whole
                tmp.write_bytes(data)
        write_json(self.fold_dir / FROZEN_REF, {"file": Path(os.path.relpath(path, self.fold_dir)).as_posix(),
                                                "sha256": sha, "size": len(data), "tensors": len(tensors)})
        logger.info("frozen part (%d tensors, %.1f MB) stored once in %s", len(tensors), len(data) / 2**20, path)


def shared_files(fold_dir: Path) -> list[Path]:
    """Files outside the fold folder that loading it needs: its frozen part, if it has one."""
    ref = Path(fold_dir) / FROZEN_REF
    return [Path(fold_dir) / read_json(ref)["file"]] if ref.is_file() else []


def check_shared(fold_dir: Path) -> list[str]:
    """Empty when the fold's frozen part is there with the sha256 the fold recorded; else the problems."""
    ref = Path(fold_dir) / FROZEN_REF
    if not ref.is_file():
        return []
    rec = read_json(ref)
    path = Path(fold_dir) / rec["file"]
    if not path.is_file():
        return [f"{fold_dir}: its frozen part {path} is missing (copy the member folder whole, shared/ included)"]
    if path.stat().st_size != rec["size"] or sha256_file_cached(path) != rec["sha256"]:
        return [f"{fold_dir}: the frozen part {path} is not the one this fold was trained with (sha256 "
                f"{sha256_file_cached(path)[:12]}, the fold expects {rec['sha256'][:12]}): another backbone's, "
                "truncated or altered"]
    return []


def load_checkpoint(model: nn.Module, fold_dir: Path) -> None:
    """The fold's weights into `model` (whose parameters keep their dtype, float32), frozen part included.
    Refuses (CorruptArtefactError) a frozen part whose hash differs or weights that do not fit the model."""
    fold_dir = Path(fold_dir)
    problems = check_shared(fold_dir)
    if problems:
        raise CorruptArtefactError(problems[0])
    state = load_file(str(fold_dir / CHECKPOINT))
    for path in shared_files(fold_dir):
        state.update(load_file(str(path)))
    expected = model.state_dict()
    tied = {n for names in _remove_duplicate_names(expected, preferred_names=list(state)).values() for n in names}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)  # copy_ widens fp16/bf16 to float32
    except RuntimeError as err:
        raise CorruptArtefactError(f"{fold_dir}: its weights do not fit the fold's architecture: {err}") from err
    missing = sorted(set(missing) - tied)
    if missing or unexpected:
        raise CorruptArtefactError(f"{fold_dir}: its weights do not fit the fold's architecture (missing "
                                   f"{missing[:5]}, unexpected {sorted(unexpected)[:5]})")


def checkpoint_bytes(cfg: TransformerConfig) -> tuple[int, int]:
    """(bytes per fold, bytes stored once per member) of this config's checkpoints, from the architecture alone
    (meta device: no weights, no network), for sizes before training. Headers (a few kB) not counted."""
    from transformers import AutoModel

    from fb3stack.base.transformer.backbone import architecture_config, prepare_backbone
    from fb3stack.base.transformer.model import FB3Model

    with torch.device("meta"):
        model = FB3Model(prepare_backbone(AutoModel.from_config(architecture_config(cfg), dtype=torch.float32), cfg),
                         cfg)
    frozen = frozen_names(model)
    per_fold = shared = 0
    for name, t in _state(model).items():
        half = t.is_floating_point() and not name.startswith(KEEP_FP32)
        size = t.numel() * (bytes_per_param(cfg.checkpoint_dtype) if half else t.element_size())
        if name in frozen:
            shared += size
        else:
            per_fold += size
    return per_fold, shared
