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
from fb3stack.base.transformer.prefix import PrefixPlan, PrefixStore, compute_prefix, frozen_digest
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
        train_tokens = self._tokens(tokenizer, train[TEXT_COL].tolist())
        valid_tokens = self._tokens(tokenizer, valid[TEXT_COL].tolist())
        engine = Engine(model, cfg.device, cfg.amp, cfg.grad_accum, cfg.max_grad_norm, log_with(cfg.tracking),
                        fold_dir)
        # every fold's train + valid is the same set of essays: one prefix store serves all folds
        folder = self.workspace.cache_dir("prefix") if self.workspace else None
        store = self._prefix(model, engine, train_tokens + valid_tokens, pad, folder)
        train_rows, valid_rows = (None, None) if store is None else (store.rows(train_tokens), store.rows(valid_tokens))
        train_loader = make_loader(train_tokens, y_train, cfg.batch_size, True, pad, cfg.seed + fold,
                                   cfg.bucket_batches, prefix_rows=train_rows, **shapes)
        train_loader = shard_train_loader(train_loader)  # data parallel: this process's share of the batches
        rows = shard_rows(len(valid))
        valid_loader = make_loader([valid_tokens[i] for i in rows], None, cfg.eval_batch_size, False, pad,
                                   prefix_rows=None if valid_rows is None else valid_rows[rows], **shapes)
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

    def _prefix(self, model: FB3Model, engine: Engine, tokens: list[np.ndarray], pad: int,
                folder: Path | None) -> PrefixStore | None:
        """The frozen prefix of these essays computed once (prefix.py) and attached to `model`, or None where it
        does not apply: the frozen layers then run forward in every step, as before."""
        plan = PrefixPlan.build(model.backbone, self.config.freeze_layers, model.pooler, self.config.prefix_cache)
        if plan is None:
            return None
        t0 = time.perf_counter()
        store = compute_prefix(engine.unwrapped.backbone, plan, tokens, engine.autocast, engine.device,
                               engine.amp_dtype, folder, pad, batch_tokens=self.config.eval_batch_size * 512)
        if store is not None:
            model.prefix = (plan, store)
            logger.info("prefix cache: embeddings + %d frozen layers replayed from %d essays (%s; %.2f GB, %.1f s)",
                        plan.n_frozen, len(store.keys), ", ".join(plan.keep), store.nbytes / 1e9,
                        time.perf_counter() - t0)
        return store

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
        return self._predict_many(df, [fold_dir])[0]

    def _predict_many(self, df: pd.DataFrame, fold_dirs: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(predictions, pooled features) per fold. With the prefix cache, one prefix pass per essay serves every
        fold whose frozen part is the same (the folds share one stored frozen file), in memory."""
        self._setup()
        stores: dict[str, PrefixStore | None] = {}
        out = []
        for fold_dir in fold_dirs:
            model, tokenizer = self.load_fold(fold_dir)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            prep = self.fold_preprocess(fold_dir)
            tokens = self._tokens(tokenizer, df[TEXT_COL].tolist(), prep)
            engine = Engine(model, self.config.device, self.config.amp)
            rows = None
            if PrefixPlan.build(model.backbone, self.config.freeze_layers, model.pooler, self.config.prefix_cache):
                frozen = frozen_digest(model.backbone)
                if frozen not in stores:
                    stores[frozen] = self._prefix(model, engine, tokens, pad, None)
                elif stores[frozen] is not None:
                    model.prefix = (PrefixPlan.build(model.backbone, self.config.freeze_layers, model.pooler),
                                    stores[frozen])
                rows = None if stores[frozen] is None else stores[frozen].rows(tokens)
            budget = self.token_budget(pick_device(self.config.device), prep["max_len"])
            shapes = dict(pad_to_multiple_of=self.config.pad_to_multiple_of, max_len=prep["max_len"],
                          prefix_rows=rows)
            loader = (make_token_loader(tokens, budget, pad, **shapes) if budget
                      else make_loader(tokens, None, self.config.eval_batch_size, False, pad, **shapes))
            logger.info("%s: predicting %d essays on %s, autocast %s, %s", Path(fold_dir).name, len(df),
                        engine.device, precision_name(engine.amp_dtype), f"batches of <= {budget} tokens" if budget
                        else f"batches of {self.config.eval_batch_size}")
            out.append(predict(engine, loader))
        return out

    def predict_folds(self, df: pd.DataFrame, fold_dirs: list[Path]) -> np.ndarray:
        return np.mean([p for p, _ in self._predict_many(df, fold_dirs)], axis=0)

    def token_budget(self, device: torch.device, max_len: int) -> int:
        """Tokens per prediction batch (0: fixed batches of eval_batch_size); see TransformerConfig.eval_tokens."""
        if self.config.eval_tokens is not None:
            return self.config.eval_tokens
        return self.config.eval_batch_size * max_len if device.type == "cuda" else 0

    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        return self.predict_fold_with_embeddings(df, fold_dir)[0]
