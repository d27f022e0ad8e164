"""TransformerMember: fine-tune a Hugging Face encoder per fold; predict from the fold folder alone.

A fold folder holds everything inference needs, so an offline bundle can copy it anywhere:

    fold<k>/model.safetensors   backbone + pooler + head weights of the best evaluation, fp16 by default
    fold<k>/frozen.json         with frozen layers: where the frozen part is stored once for all folds
                                (<member>/shared/frozen-<sha16>.safetensors) and its sha256 (checkpoint.py)
    fold<k>/backbone/           the backbone's config.json (architecture; no pretrained weights needed)
    fold<k>/tokenizer/          the tokenizer files (with the paragraph marker, if one was added)
    fold<k>/preprocess.json     how essays were turned into tokens (max_len, truncation, newline marker):
                                prediction reads it, so it always prepares text as training did
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModel

from fb3stack import dist
from fb3stack.base.member import FoldResult, Member
from fb3stack.base.registry import register_member
from fb3stack.base.transformer.adversarial import make_adversary
from fb3stack.base.transformer.backbone import (
    add_newline_token,
    architecture,
    encoder_layers,
    load_backbone,
    load_tokenizer,
    prepare_backbone,
    resolve_backbone,
)
from fb3stack.base.transformer.checkpoint import SHARED_DIR, CheckpointWriter, check_shared, load_checkpoint
from fb3stack.base.transformer.checkpoint import shared_files as checkpoint_shared_files
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.data import TokenCache, make_loader, make_token_loader
from fb3stack.base.transformer.ddp import shard_rows, shard_train_loader
from fb3stack.base.transformer.engine import Engine, pick_amp, pick_device
from fb3stack.base.transformer.losses import make_loss
from fb3stack.base.transformer.model import FB3Model
from fb3stack.base.transformer.optim import make_optimizer, make_scheduler, param_groups
from fb3stack.base.transformer.tracking import log_with
from fb3stack.base.transformer.trainer import Trainer, predict
from fb3stack.constants import TARGETS, TEXT_COL
from fb3stack.io import read_json, write_json
from fb3stack.workspace import Workspace

logger = logging.getLogger(__name__)

PREPROCESS = "preprocess.json"
PREP_KEYS = ("max_len", "truncation", "head_ratio", "newline_token")


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """The autocast dtype as the log and describe() say it."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@register_member("transformer")
class TransformerMember(Member):
    config_cls = TransformerConfig
    wants_gpu = True
    config: TransformerConfig

    def __init__(self, config: TransformerConfig, workspace: Workspace | None = None) -> None:
        super().__init__(config, workspace)
        self._caches: dict[tuple[str, int], TokenCache] = {}

    def _tokens(self, tokenizer: object, texts: list[str], prep: dict | None = None) -> list[np.ndarray]:
        """Token ids, tokenized once per tokenizer and text preparation, reused across folds (and runs, via the
        workspace). `prep`: the fold's saved preparation at predict time; the config's when training."""
        prep = prep or {k: getattr(self.config, k) for k in PREP_KEYS}
        key = (str(tokenizer.name_or_path), len(tokenizer), *(prep[k] for k in PREP_KEYS))
        if key not in self._caches:
            folder = self.workspace.cache_dir("tokens") if self.workspace else None
            self._caches[key] = TokenCache(tokenizer, cache_dir=folder, **prep)
        return self._caches[key].encode(texts)

    def _setup(self) -> None:
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)

    def fit_fold(self, train: pd.DataFrame, valid: pd.DataFrame, fold: int, fold_dir: Path) -> FoldResult:
        cfg, t0 = self.config, time.perf_counter()
        self._setup()
        seed_everything(cfg.seed + fold)
        source = resolve_backbone(cfg.backbone)
        tokenizer = load_tokenizer(source)
        backbone = load_backbone(cfg, source)
        if cfg.newline_token:
            add_newline_token(tokenizer, backbone, cfg.newline_token)
        model = FB3Model(prepare_backbone(backbone, cfg), cfg)
        y_train = train[list(TARGETS)].to_numpy(np.float32)
        if cfg.init_bias_to_mean:
            model.set_bias(torch.from_numpy(y_train.mean(0)))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        shapes = dict(pad_to_multiple_of=cfg.pad_to_multiple_of, max_len=cfg.max_len)
        train_loader = make_loader(self._tokens(tokenizer, train[TEXT_COL].tolist()), y_train, cfg.batch_size,
                                   True, pad, cfg.seed + fold, cfg.bucket_batches, **shapes)
        train_loader = shard_train_loader(train_loader)  # data parallel: this process's share of the batches
        rows = shard_rows(len(valid))
        valid_tokens = self._tokens(tokenizer, valid[TEXT_COL].tolist())
        valid_loader = make_loader([valid_tokens[i] for i in rows], None, cfg.eval_batch_size, False, pad, **shapes)
        engine = Engine(model, cfg.device, cfg.amp, cfg.grad_accum, cfg.max_grad_norm, log_with(cfg.tracking),
                        fold_dir)
        optimizer = make_optimizer(engine.model, cfg)
        total = -(-len(train_loader) // cfg.grad_accum) * cfg.epochs
        engine.prepare(optimizer, make_scheduler(optimizer, cfg, total))
        model.backbone.config.save_pretrained(fold_dir / "backbone")
        tokenizer.save_pretrained(fold_dir / "tokenizer")
        write_json(fold_dir / PREPROCESS, {k: getattr(cfg, k) for k in PREP_KEYS})
        # the frozen part goes to the member's folder, beside the fold folders (a data-parallel helper's scratch
        # fold is thrown away: it keeps everything inside)
        shared = fold_dir.parent / SHARED_DIR if dist.is_main() else None
        checkpoint = CheckpointWriter(fold_dir, cfg.checkpoint_dtype, shared)
        trainer = Trainer(cfg, engine, make_loss(cfg), make_adversary(cfg.adversarial, engine.model, cfg),
                          checkpoint, desc=f"{cfg.name} fold {fold}")
        out = trainer.fit(train_loader, valid_loader, valid[list(TARGETS)].to_numpy(np.float64),
                          rows if dist.is_distributed() else None)
        info = {"best_step": out.best_step, "steps": out.steps, "stopped_early": out.stopped_early,
                "best_valid_mcrmse": out.best_score, "last_valid_mcrmse": out.last_score, "n_evals": out.n_evals,
                "oof_checkpoint": cfg.oof_checkpoint, "skipped_steps": out.skipped_steps,
                "train_seconds": round(time.perf_counter() - t0, 1), "device": str(engine.device),
                "amp": str(engine.amp_dtype), "checkpoint_dtype": cfg.checkpoint_dtype}
        return FoldResult(out.preds, out.embeddings, out.history, info, alt_preds=out.alt_preds)

    def describe(self) -> dict:
        """The architecture built on the meta device (no weights, no memory, no network): parameter counts after
        freezing, max_len and the autocast this machine would pick (and what `auto` picks on other GPUs)."""
        cfg = self.config
        config, config_from = architecture(cfg)
        with torch.device("meta"):
            model = FB3Model(prepare_backbone(AutoModel.from_config(config, dtype=torch.float32), cfg), cfg)
        optimizer_params = sum(p.numel() for g in param_groups(model, cfg) for p in g["params"])
        n_params = sum(p.numel() for p in model.parameters())
        make_adversary(cfg.adversarial, model, cfg)  # refuses an adversary with nothing to perturb
        try:
            device = pick_device(cfg.device)
            amp = pick_amp(cfg.amp, device)
            here = f"{precision_name(amp)} on {device.type}"
        except RuntimeError as err:
            here = str(err)
        return {"name": cfg.name, "kind": cfg.kind, "backbone": cfg.backbone,
                "config_from": config_from, "n_params": n_params, "n_frozen": n_params - optimizer_params,
                "params_m": round(n_params / 1e6, 1),
                "trainable_m": round(optimizer_params / 1e6, 1), "layers": len(encoder_layers(model.backbone)),
                "max_len": cfg.max_len, "truncation": cfg.truncation, "newline_token": cfg.newline_token,
                "batch": f"{cfg.batch_size}x{cfg.grad_accum}", "checkpointing": cfg.gradient_checkpointing,
                "adversarial": cfg.adversarial, "amp": cfg.amp, "here": here}

    def load_fold(self, fold_dir: Path) -> tuple[FB3Model, object]:
        """The kept checkpoint of a fold, widened to float32, built from the fold folder (and the member's shared
        frozen part) alone, offline."""
        fold_dir = Path(fold_dir)
        backbone = load_backbone(self.config, fold_dir / "backbone", pretrained=False)
        model = FB3Model(backbone, self.config)
        load_checkpoint(model, fold_dir)
        return model, load_tokenizer(fold_dir / "tokenizer")

    def shared_files(self, fold_dir: Path) -> list[Path]:
        return checkpoint_shared_files(fold_dir)

    def check_shared(self, fold_dir: Path) -> list[str]:
        return check_shared(fold_dir)

    def fold_preprocess(self, fold_dir: Path) -> dict:
        """How the fold prepared its text; folds written before preprocess.json existed used the plain rule."""
        path = Path(fold_dir) / PREPROCESS
        saved = read_json(path) if path.is_file() else {"max_len": self.config.max_len}
        return {"truncation": "head", "head_ratio": 0.5, "newline_token": None, **saved}

    def predict_fold_with_embeddings(self, df: pd.DataFrame, fold_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        self._setup()
        model, tokenizer = self.load_fold(fold_dir)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        prep = self.fold_preprocess(fold_dir)
        tokens = self._tokens(tokenizer, df[TEXT_COL].tolist(), prep)
        engine = Engine(model, self.config.device, self.config.amp)
        budget = self.token_budget(pick_device(self.config.device), prep["max_len"])
        shapes = dict(pad_to_multiple_of=self.config.pad_to_multiple_of, max_len=prep["max_len"])
        loader = (make_token_loader(tokens, budget, pad, **shapes) if budget
                  else make_loader(tokens, None, self.config.eval_batch_size, False, pad, **shapes))
        logger.info("%s: predicting %d essays on %s, autocast %s, %s", Path(fold_dir).name, len(df), engine.device,
                    precision_name(engine.amp_dtype), f"batches of <= {budget} tokens" if budget
                    else f"batches of {self.config.eval_batch_size}")
        return predict(engine, loader)

    def token_budget(self, device: torch.device, max_len: int) -> int:
        """Tokens per prediction batch (0: fixed batches of eval_batch_size); see TransformerConfig.eval_tokens."""
        if self.config.eval_tokens is not None:
            return self.config.eval_tokens
        return self.config.eval_batch_size * max_len if device.type == "cuda" else 0

    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        return self.predict_fold_with_embeddings(df, fold_dir)[0]
