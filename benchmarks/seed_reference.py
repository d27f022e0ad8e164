"""The reference loop, written the way the FB3 seed notebook does it, for speed comparisons only.

What makes it the seed's way (and what fb3stack does instead):
- the Dataset tokenizes in __getitem__, every epoch, padding every essay to max_len (fb3stack: once, cached);
- a randomly shuffled DataLoader, no length sorting; each batch is trimmed to its longest essay by slicing to
  attention_mask.sum(1).max() (fb3stack: length-bucketed batches padded only to their own longest essay);
- `loss.item()` every step for an AverageMeter (a host sync per step), plain AdamW (for-loop implementation);
- inference in input order under torch.no_grad(), trimmed the same way (fb3stack: length-sorted, inference_mode).
The model is the caller's (an FB3Model), so both loops run the same network with the same config.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.base.transformer.losses import make_loss
from fb3stack.base.transformer.optim import make_scheduler, param_groups


class SeedDataset(Dataset):
    def __init__(self, tokenizer: object, texts: list[str], labels: np.ndarray | None, max_len: int) -> None:
        self.tokenizer, self.texts, self.labels, self.max_len = tokenizer, texts, labels, max_len

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        enc = self.tokenizer(self.texts[i], add_special_tokens=True, max_length=self.max_len, padding="max_length",
                             truncation=True, return_tensors=None)
        inputs = {k: torch.tensor(enc[k], dtype=torch.long) for k in ("input_ids", "attention_mask")}
        label = torch.zeros(6) if self.labels is None else torch.tensor(self.labels[i], dtype=torch.float)
        return inputs, label


def collate(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seed's trim: cut every tensor of the batch to the longest essay in it."""
    mask_len = int(inputs["attention_mask"].sum(axis=1).max())
    return {k: v[:, :mask_len] for k, v in inputs.items()}


class AverageMeter:
    def __init__(self) -> None:
        self.sum, self.count, self.avg = 0.0, 0, 0.0

    def update(self, val: float, n: int = 1) -> None:
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def seed_train(model: torch.nn.Module, tokenizer: object, texts: list[str], labels: np.ndarray,
               cfg: TransformerConfig, seed: int = 0) -> float:
    """One epoch over `texts` the seed's way; returns the mean training loss."""
    torch.manual_seed(seed)
    loader = DataLoader(SeedDataset(tokenizer, texts, labels, cfg.max_len), batch_size=cfg.batch_size,
                        shuffle=True, num_workers=0, drop_last=False)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
    scheduler = make_scheduler(optimizer, cfg, len(loader))
    criterion, losses = make_loss(cfg), AverageMeter()
    model.train()
    for inputs, y in loader:
        inputs = collate(inputs)
        preds, _ = model(inputs["input_ids"], inputs["attention_mask"])
        loss = criterion(preds, y)
        losses.update(loss.item(), len(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return losses.avg


def seed_predict(model: torch.nn.Module, tokenizer: object, texts: list[str], cfg: TransformerConfig) -> np.ndarray:
    """Predictions in input order, the seed's valid_fn way."""
    loader = DataLoader(SeedDataset(tokenizer, texts, None, cfg.max_len), batch_size=cfg.eval_batch_size,
                        shuffle=False, num_workers=0)
    model.eval()
    preds = []
    for inputs, _ in loader:
        inputs = collate(inputs)
        with torch.no_grad():
            p, _ = model(inputs["input_ids"], inputs["attention_mask"])
        preds.append(p.to("cpu").numpy())
    return np.concatenate(preds)
