"""Parts 2 and 4 of the GPU check: DeBERTa-v3 architectures training on real essays through fb3stack's own parts.

The model is fb3stack's FB3Model around a DeBERTa-v3 backbone built from a config (random weights: no hub
here), configured by configs/models/deberta-v3-{base,large}.yaml; the optimiser, schedule, loss and the
Engine (device, autocast, GradScaler, clipping) are fb3stack's. The loop is the Trainer's inner step without
its evaluation, and without the configs' FGM attack (from epoch 1 on, FGM adds a second forward/backward).
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fb3stack.base.member import MemberConfig

REPO = Path(__file__).resolve().parents[1]
N_TRAIN_ESSAYS = 3911  # FB3 train.csv; a 5-fold epoch trains on 4/5 of them five times = 4 x 3911 essays
# --quick: same code, toy widths (head size 16 and 32) and MiniLM's vocabulary size (its ids are what the
# essays are tokenized into), so a CPU step is not spent on a 128100-row embedding
TINY = {"deberta-v3-base": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                vocab_size=30522),
        "deberta-v3-large": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                 vocab_size=30522)}
LOSS_PARITY_STEPS = 10
LOSS_TOL = 2e-2  # relative, per step, bf16: two attention kernels round differently, errors grow with steps


@dataclass
class Essays:
    """Real essays with their scores and MiniLM-tokenizer ids (the longest max_len needed; shorter by truncation)."""

    texts: list[str]
    y: np.ndarray
    ids: list[np.ndarray]
    sep_id: int

    def at(self, max_len: int) -> list[np.ndarray]:
        """Exactly what the tokenizer gives with truncation at max_len: the head of the essay, then [SEP]."""
        return [x if len(x) <= max_len else np.append(x[: max_len - 1], self.sep_id).astype(x.dtype)
                for x in self.ids]

    def mean_len(self, max_len: int) -> float:
        return float(np.mean([min(len(x), max_len) for x in self.ids]))


def tokenize(texts: list[str], y: np.ndarray, tokenizer_dir: Path, max_len: int) -> Essays:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(texts, truncation=True, max_length=max_len)["input_ids"]
    return Essays(texts, y, [np.asarray(x, dtype=np.int32) for x in ids], tok.sep_token_id)


@dataclass
class Spec:
    model: str  # deberta-v3-base | deberta-v3-large
    max_len: int
    checkpointing: bool
    amp: str = "bf16"
    attention: str = "eager"
    batch_size: int | None = None  # None: the model config's
    compile: str = "none"  # the config's compile: none | layers | model
    pad: int = 1  # pad_to_multiple_of
    compile_dynamic: bool | None = None

    @property
    def label(self) -> str:
        batch = f" batch {self.batch_size}" if self.batch_size else ""
        comp = f" compile={self.compile}" if self.compile != "none" else ""
        return (f"{self.model} {self.max_len} ckpt={'on' if self.checkpointing else 'off'} {self.amp} "
                f"{self.attention}{comp}{batch}")


@dataclass
class RunResult:
    steps: int = 0
    timed_steps: int = 0
    seconds: float = float("nan")
    tokens: int = 0
    flops: float = 0.0
    losses: list[float] = field(default_factory=list)
    skipped: int = 0
    peak_gb: float = float("nan")
    batch_size: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.timed_steps and self.seconds > 0 else float("nan")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    """Give a finished model's GPU memory back before the next one; on a CPU-only machine nothing to do (and a
    full gc.collect costs ~0.4 s with transformers imported)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def member_config(spec: Spec, backbone: Path, device: str, quick: bool) -> MemberConfig:
    """configs/models/<model>.yaml with this run's backbone folder, length, checkpointing, precision and attention.

    The configs' essay preprocessing (head_tail truncation, a [BR] paragraph token) is not used here: the
    batches come from Essays (head truncation), which changes the lengths a little, not the speed per token.
    """
    from fb3stack.base.registry import load_member_config

    overrides = [f"backbone={backbone}", f"max_len={spec.max_len}", f"device={device}", f"amp={spec.amp}",
                 f"gradient_checkpointing={str(spec.checkpointing).lower()}", "grad_accum=1",
                 f"attention_impl={spec.attention}", f"compile={spec.compile}", f"pad_to_multiple_of={spec.pad}"]
    if spec.compile_dynamic is not None:
        overrides.append(f"compile_dynamic={str(spec.compile_dynamic).lower()}")
    if quick:
        overrides.append("batch_size=4")
    elif spec.batch_size:
        overrides.append(f"batch_size={spec.batch_size}")
    return load_member_config(REPO / "configs" / "models" / f"{spec.model}.yaml", overrides=overrides)


def build(spec: Spec, folder: Path, device: str, quick: bool, y_mean: np.ndarray | None):
    """(FB3Model on `device`, its TransformerConfig), built the way `fb3stack train` builds it (attention_impl
    included), weights from a fixed seed: same spec, same weights."""
    from transformers import DebertaV2Config

    from fb3stack.base.transformer import attention
    from fb3stack.base.transformer import model as model_mod
    from fb3stack.base.transformer.backbone import load_backbone, prepare_backbone
    from fb3stack.base.transformer.known import KNOWN_CONFIGS
    from fb3stack.base.transformer.model import FB3Model

    source = folder / f"{spec.model}{'-tiny' if quick else ''}"
    if not (source / "config.json").is_file():
        hub = {k: v for k, v in KNOWN_CONFIGS[f"microsoft/{spec.model}"].items() if k != "model_type"}
        DebertaV2Config(**{**hub, **(TINY[spec.model] if quick else {}), "pad_token_id": 0}).save_pretrained(source)
    cfg = member_config(spec, source, device, quick)
    torch.manual_seed(cfg.seed)
    # on a CPU the kernels cannot run; disentangled-flash's PyTorch backend makes the same swap at the same point
    # of prepare_backbone (before checkpointing and freezing)
    swap = device != "cuda" and spec.attention == "disentangled-flash"
    public, compiler = attention.apply_attention_impl, model_mod.compile_model
    if swap:
        attention.apply_attention_impl = functools.partial(attention.enable, backend="torch")
    if device != "cuda":
        # a CPU smoke run checks the compile path (graph capture, AOT autograd), not inductor's C++ code (minutes)
        model_mod.compile_model = functools.partial(compiler, backend="aot_eager")
    try:
        with torch.device(device):  # random init straight on the GPU: seconds instead of a minute for large
            model = FB3Model(prepare_backbone(load_backbone(cfg, source, pretrained=False), cfg), cfg)
    finally:
        attention.apply_attention_impl, model_mod.compile_model = public, compiler
    if y_mean is not None:
        model.set_bias(torch.from_numpy(y_mean))
    return model, cfg


def attention_label(impl: str, device: str) -> str:
    if device != "cuda" and impl == "disentangled-flash":
        return f"{impl} (its PyTorch backend: a CPU smoke run of the swap, not the kernel)"
    return impl


def batch_stream(essays: Essays, max_len: int, batch_size: int, seed: int, pad: int = 1
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """fb3stack's length-bucketed training batches, epoch after epoch; the same seed gives the same batches."""
    from fb3stack.base.transformer.data import make_loader

    loader = make_loader(essays.at(max_len), essays.y, batch_size, True, 0, seed, pad_to_multiple_of=pad,
                         max_len=max_len)
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_steps(model: torch.nn.Module, cfg: MemberConfig, batches: Iterator[dict], steps: int, total: int,
                deadline: float, warmup: int, track_scale: bool = False, min_timed: int = 5) -> RunResult:
    """Up to `steps` optimiser steps (schedule sized for `total`); the clock runs after `warmup` steps and the
    loop stops early once `deadline` has passed (after at least `min_timed` timed steps)."""
    from common import encoder_flops  # benchmarks/common.py (gpu_check puts benchmarks/ on sys.path)

    from fb3stack.base.transformer.engine import Engine
    from fb3stack.base.transformer.losses import make_loss
    from fb3stack.base.transformer.optim import make_optimizer, make_scheduler

    device = cfg.device
    engine = Engine(model, device, cfg.amp, cfg.grad_accum, cfg.max_grad_norm)
    optimizer = make_optimizer(engine.model, cfg)
    engine.prepare(optimizer, make_scheduler(optimizer, cfg, total))
    loss_fn = make_loss(cfg)
    model.train()
    res = RunResult(batch_size=cfg.batch_size)
    losses, lengths = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        batch = next(batches)
        if step >= warmup:
            lengths += batch["attention_mask"].sum(1).tolist()  # real tokens, counted on the host copy
        batch = engine.to_device(batch)
        with engine.accumulate():
            with engine.autocast():
                preds, _ = engine.model(batch["input_ids"], batch["attention_mask"])
                loss = loss_fn(preds, batch["labels"])
            engine.backward(loss)
        scale = engine.scaler.get_scale() if track_scale and engine.scaler else None
        engine.step()
        if scale is not None and engine.scaler.get_scale() < scale:  # inf/nan gradients: the step was skipped
            res.skipped += 1
        losses.append(loss.detach().float())
        res.steps = step + 1
        # no sync needed: the host runs at most a step or so ahead of the GPU (each step fills the launch queue)
        if step + 1 >= warmup + min_timed and time.perf_counter() > deadline:
            break
    sync(device)
    res.timed_steps = max(0, res.steps - warmup)
    res.seconds = time.perf_counter() - t0
    res.tokens = int(sum(lengths))
    res.losses = torch.stack(losses).cpu().tolist() if losses else []
    bb = model.backbone.config
    res.flops = encoder_flops(model, lengths, bb.num_hidden_layers, bb.hidden_size, training=True)
    if device == "cuda":
        res.peak_gb = torch.cuda.max_memory_allocated() / 1e9
    del engine, optimizer
    return res


def warm_up_exact(model: torch.nn.Module, cfg: MemberConfig, batches: list[dict]) -> tuple[int, float]:
    """One forward/backward (no optimiser step, gradients dropped) on one batch of every (rows, width) shape among
    `batches`, so compiles and autotuning happen before the clock runs. (shapes, seconds)."""
    from fb3stack.base.transformer.engine import Engine
    from fb3stack.base.transformer.losses import make_loss

    seen: dict[tuple, dict] = {}
    for batch in batches:
        seen.setdefault(tuple(batch["input_ids"].shape), batch)
    engine, loss_fn = Engine(model, cfg.device, cfg.amp), make_loss(cfg)
    model.train()
    sync(cfg.device)
    t0 = time.perf_counter()
    for batch in seen.values():
        b = engine.to_device(batch)
        with engine.autocast():
            preds, _ = model(b["input_ids"], b["attention_mask"])
            loss = loss_fn(preds, b["labels"])
        loss.backward()
    model.zero_grad(set_to_none=True)
    sync(cfg.device)
    return len(seen), time.perf_counter() - t0


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
