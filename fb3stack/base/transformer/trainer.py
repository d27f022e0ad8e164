"""The epoch loop: train, evaluate at each epoch end and on the config's cadence, keep the best checkpoint, stop
early."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from fb3stack.base.transformer import tracking
from fb3stack.base.transformer.adversarial import AWP, FGM
from fb3stack.base.transformer.checkpoint import CheckpointWriter
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.data import loader_order
from fb3stack.base.transformer.ddp import gather_rows
from fb3stack.base.transformer.engine import Engine
from fb3stack.base.transformer.losses import LossFn
from fb3stack.metrics import mcrmse
from fb3stack.progress import progress as tqdm

logger = logging.getLogger(__name__)


def predict(engine: Engine, loader: DataLoader, rows: np.ndarray | None = None, n_rows: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, pooled features) in the loader's row order (not its length-sorted batch order).

    Under data parallelism the loader holds this process's `rows` of `n_rows`; the result is gathered whole.
    """
    preds, feats = _predict_local(engine, loader)
    if rows is None:
        return preds, feats
    return gather_rows(n_rows, rows, preds, feats)


@torch.inference_mode()
def _predict_local(engine: Engine, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    model = engine.unwrapped
    was_training = model.training
    model.eval()
    preds, feats = [], []
    for batch in tqdm(loader, desc="predict", leave=False, mininterval=2):
        batch = engine.to_device(batch)
        with engine.autocast():
            p, f = model(batch["input_ids"], batch["attention_mask"], batch.get("prefix_rows"))
        preds.append(p.float())  # stays on the device: one host copy at the end, not a sync per batch
        feats.append(f.float())
    model.train(was_training)
    if not preds:
        return np.empty((0, 6)), np.empty((0, model.pooler.out_dim), np.float32)
    order = loader_order(loader)
    out_p, out_f = np.empty((len(order), preds[0].shape[1])), np.empty((len(order), feats[0].shape[1]), np.float32)
    out_p[order], out_f[order] = torch.cat(preds).cpu().numpy(), torch.cat(feats).cpu().numpy()
    return out_p, out_f


@dataclass
class FitOutcome:
    best_score: float
    best_step: int
    preds: np.ndarray  # validation predictions of the kept checkpoint (cfg.oof_checkpoint: best or last)
    embeddings: np.ndarray  # pooled validation features of the kept checkpoint
    history: pd.DataFrame
    steps: int
    stopped_early: bool
    last_score: float = math.nan
    n_evals: int = 0
    skipped_steps: int = 0  # fp16 overflows: optimiser steps GradScaler skipped
    alt_preds: dict[str, np.ndarray] | None = None  # validation predictions of both checkpoints, by name


def eval_steps(cfg: TransformerConfig, steps_per_epoch: int) -> set[int]:
    """Optimiser steps after which to evaluate: the end of training, every epoch end from epoch position
    eval_start on, and the config's in-epoch cadence (evals_per_epoch evenly spaced, or every eval_every steps)
    from there on. Evaluations before eval_start would only cost a pass over the fold's validation essays: the
    kept checkpoint is one from the low-rate end of the schedule."""
    total = steps_per_epoch * cfg.epochs
    ends = {steps_per_epoch * (e + 1) for e in range(cfg.epochs)}
    if cfg.eval_every:
        extra = set(range(cfg.eval_every, total + 1, cfg.eval_every))
    else:
        extra = {e * steps_per_epoch + round(k * steps_per_epoch / cfg.evals_per_epoch)
                 for e in range(cfg.epochs) for k in range(1, cfg.evals_per_epoch)}
    late = {s for s in ends | extra if 0 < s <= total and s / steps_per_epoch >= cfg.eval_start - 1e-9}
    return late | {total}


class Trainer:
    def __init__(self, cfg: TransformerConfig, engine: Engine, loss_fn: LossFn, adversary: FGM | AWP | None,
                 checkpoint: CheckpointWriter, desc: str = "") -> None:
        self.cfg, self.engine, self.loss_fn, self.adversary = cfg, engine, loss_fn, adversary
        self.checkpoint, self.desc = checkpoint, desc

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.engine.autocast():
            preds, _ = self.engine.model(batch["input_ids"], batch["attention_mask"], batch.get("prefix_rows"))
            return self.loss_fn(preds, batch["labels"])

    def fit(self, train_loader: DataLoader, valid_loader: DataLoader, y_valid: np.ndarray,
            valid_rows: np.ndarray | None = None) -> FitOutcome:
        """`valid_rows`: under data parallelism, the rows of `y_valid` that this process's valid_loader holds."""
        cfg, engine = self.cfg, self.engine
        self.valid_rows = valid_rows
        steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
        self.total_steps = steps_per_epoch * cfg.epochs
        evals = eval_steps(cfg, steps_per_epoch)
        self.best, self.best_step, self.bad_evals = math.inf, -1, 0
        self.best_preds = self.best_emb = None
        self.rows: list[dict] = []
        tracking.start(engine.accelerator, cfg, self.desc)
        self.t0, step, stop = time.perf_counter(), 0, False
        run_loss, run_n = torch.zeros((), device=engine.device), 0  # summed on device: no host sync per step
        for epoch in range(cfg.epochs):
            train_loader.batch_sampler.set_epoch(epoch)
            engine.model.train()
            attack = self.adversary is not None and epoch >= cfg.adv_start_epoch
            bar = tqdm(train_loader, desc=f"{self.desc} epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2)
            for i, batch in enumerate(bar):
                batch = engine.to_device(batch)
                with engine.accumulate(last=i + 1 == len(train_loader)):
                    # with an adversary the clean gradients stay local: its backward all-reduces both at once
                    # (so each process perturbs along its own batch's gradient)
                    with engine.no_sync() if attack else contextlib.nullcontext():
                        loss = self._loss(batch)
                        engine.backward(loss)
                    if attack:
                        self.adversary.attack()
                        engine.backward(self._loss(batch))
                        self.adversary.restore()
                run_loss += loss.detach().float()
                run_n += 1
                if not engine.sync_step:
                    continue
                grad_norm = engine.step()
                step += 1
                if step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{run_loss.item() / run_n:.4f}", lr=f"{self.lr():.2e}",
                                    grad_norm=f"{float(grad_norm):.3f}")
                if step in evals and step % steps_per_epoch:
                    stop = self.evaluate(valid_loader, y_valid, step, epoch + (i + 1) / len(train_loader),
                                         run_loss, run_n, grad_norm)
                    run_loss, run_n = torch.zeros_like(run_loss), 0
                    if stop:
                        break
            bar.close()
            if stop:
                break
            if step in evals:
                stop = self.evaluate(valid_loader, y_valid, step, epoch + 1.0, run_loss, run_n, grad_norm)
                run_loss, run_n = torch.zeros_like(run_loss), 0
            if stop:
                break
        tracking.finish(engine.accelerator)
        if cfg.oof_checkpoint == "last":
            # the fold keeps what training ended with: its OOF was not chosen by looking at the fold's labels
            self.checkpoint.save(engine.unwrapped)
            preds, emb = self.last_preds, self.last_emb
        else:
            preds, emb = self.best_preds, self.best_emb
        return FitOutcome(self.best, self.best_step, preds, emb, pd.DataFrame(self.rows), step, stop,
                          last_score=self.rows[-1]["valid_mcrmse"], n_evals=len(self.rows),
                          skipped_steps=int(engine.skipped_steps), alt_preds={"best": self.best_preds,
                                                                             "last": self.last_preds})

    def lr(self) -> float:
        """The backbone's largest current learning rate: the top encoder layer's under LLRD."""
        groups = self.engine.optimizer.param_groups
        return max((g["lr"] for g in groups if not g.get("name", "").startswith("head")), default=0.0)

    def evaluate(self, loader: DataLoader, y: np.ndarray, step: int, epoch: float, run_loss: torch.Tensor,
                 run_n: int, grad_norm: torch.Tensor) -> bool:
        """Score the current weights, keep them if best; True when early stopping says stop."""
        preds, emb = predict(self.engine, loader, self.valid_rows, len(y))
        score = mcrmse(y, preds)
        improved = score < self.best
        self.last_preds, self.last_emb = preds, emb
        if improved:
            self.best, self.best_step, self.best_preds, self.best_emb, self.bad_evals = score, step, preds, emb, 0
            if self.cfg.oof_checkpoint == "best":
                self.checkpoint.save(self.engine.unwrapped)
        else:
            self.bad_evals += 1
        self.rows.append({"step": step, "epoch": round(epoch, 3), "train_loss": run_loss.item() / max(run_n, 1),
                          "valid_mcrmse": score, "lr": self.lr(), "grad_norm": float(grad_norm),
                          "best": improved, "skipped_steps": int(self.engine.skipped_steps),
                          "seconds": round(time.perf_counter() - self.t0, 1)})
        tracking.log_eval(self.engine.accelerator, self.rows[-1], y, preds)
        logger.info("%s step %d/%d epoch %.2f: train loss %.4f, valid MCRMSE %.4f%s", self.desc, step,
                    self.total_steps, epoch, self.rows[-1]["train_loss"], score, " (best)" if improved else "")
        return bool(self.cfg.patience) and self.bad_evals >= self.cfg.patience
