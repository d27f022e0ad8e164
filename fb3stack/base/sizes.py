"""What a zoo costs before it trains: checkpoint bytes from parameter counts, training tokens per fold, the work
(layer passes) by the rule training follows, and time from a throughput measured on a GPU, or a labelled estimate
from it (`fb3stack train --dry-run`, `bundle --dry-run`).

Nothing here loads weights: parameter counts come from the architecture built on the meta device
(`TransformerMember.describe`), tokens from the member's own tokenizer when it is on this machine, else an
estimate from word counts (said so in the output), and rates from `MEASURED`, rows of a GPU check.

Work (`member_work`) is counted in layer passes: one token through one encoder layer forward is 1, its backward 2,
gradient checkpointing's recompute 1 more (embeddings, pooler and head are left out: a lookup and a few small
matrices). It follows training's rule: trained layers forward + backward in every step; frozen layers forward only
(no backward reaches them), in every step, evaluation and prediction, unless the prefix cache applies
(`freeze_layers` with `prefix_cache` on an architecture prefix.py verifies): then the embeddings and frozen layers
run once per essay for the member (one store serves every epoch, evaluation and fold) and once per test essay
for all folds at prediction, and each step computes only the trained layers. The adversary (fgm/awp, from
`adv_start_epoch`) repeats the step's forward/backward; each evaluation is a forward over the fold's
validation essays (`trainer.eval_steps`, early stopping not foreseen).

Time = layer passes / rate. A rate is a measured training row converted to passes per second (its tokens/s x
layers x 3, or 4 with checkpointing); evaluation and prediction forwards are charged at the same rate per pass.
`measured` only for the exact shape on the GPU it was measured on; otherwise an estimate, labelled as one: the
nearest H100 row of the same architecture and max_len, scaled by the two GPUs' datasheet peaks (`GPUS`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fb3stack.base.member import MemberConfig

logger = logging.getLogger(__name__)

# tokens per whitespace word of the FB3 essays with MiniLM's WordPiece tokenizer, measured on train.csv
# (docs/gpu.md, "Tokens"): the estimate when the member's own tokenizer is not on this machine
TOKENS_PER_WORD = 1.14


@dataclass(frozen=True)
class CheckpointSize:
    """Bytes of a member's fold checkpoints: `per_fold` in every fold, `shared` once per member (frozen part)."""

    per_fold: int
    shared: int
    n_folds: int

    @property
    def total(self) -> int:
        return self.per_fold * self.n_folds + self.shared


def transformer_size(cfg, n_folds: int) -> CheckpointSize:  # cfg: a TransformerConfig
    """What a transformer member's checkpoints will take: the storage rule itself
    (fb3stack.base.transformer.checkpoint: `checkpoint_dtype`, frozen parameters once per member, the head in fp32)
    applied to the architecture on the meta device."""
    from fb3stack.base.transformer.checkpoint import checkpoint_bytes

    per_fold, once = checkpoint_bytes(cfg)
    return CheckpointSize(per_fold, once, n_folds)


# ----------------------------------------------------------------------------------------------------------------
# Training throughput measured on a GPU: benchmarks/results/gpu_check_h100_20261126_full.csv, parts 2 and 4
# (tests/test_sizes.py checks these rows against that file). Real (non-pad) tokens per second of training steps:
# eager attention, no evaluation, no adversarial second pass.


@dataclass(frozen=True)
class Throughput:
    gpu: str
    arch: str  # a key of fb3stack.base.transformer.known.KNOWN_CONFIGS without "microsoft/"
    max_len: int
    precision: str  # bf16 / fp16
    checkpointing: bool
    batch_size: int
    tokens_per_s: float


H100 = "NVIDIA H100 80GB HBM3"
MEASURED = (
    Throughput(H100, "deberta-v3-base", 512, "bf16", False, 8, 45967),
    Throughput(H100, "deberta-v3-base", 1024, "bf16", False, 8, 53870),
    Throughput(H100, "deberta-v3-large", 512, "bf16", False, 4, 11784),
    Throughput(H100, "deberta-v3-large", 1024, "bf16", True, 4, 7759),
    Throughput(H100, "deberta-v3-large", 1024, "bf16", False, 4, 13419),
    Throughput(H100, "deberta-v3-base", 1024, "fp16", False, 8, 39478),
    Throughput(H100, "deberta-v3-large", 1024, "fp16", True, 2, 3736),
)


@dataclass(frozen=True)
class GpuPeak:
    """A GPU's datasheet tensor-core peak (dense, no sparsity) per autocast precision, TFLOP/s; a precision
    missing from `tflops` has no tensor-core path there (bf16 on a T4 is emulated) and gets no estimate."""

    name: str  # as torch.cuda.get_device_name reports it
    native_bf16: bool  # compute capability >= 8.0, what `amp: auto` looks at
    tflops: dict[str, float]


# Peaks for the peak-ratio estimate, from NVIDIA's datasheets:
# - H100 SXM5 80 GB (the "H100 80GB HBM3" of MEASURED): BF16 and FP16 tensor core 1,979 TFLOP/s with sparsity,
#   989.4 dense. The GPU check measured 746 (bf16) and 669 (fp16) with torch.mm 8192^3 (docs/gpu.md); the
#   datasheet figure is used so both GPUs are counted alike.
# - T4 (Turing, 16 GB): "mixed precision (FP16/FP32)" tensor core 65 TFLOP/s (no sparsity on Turing); FP32 8.1
#   without tensor cores. No bf16 tensor cores: bf16 is emulated there, so `amp: auto` picks fp16.
# The H100 rows ran at 2-4% of peak (eager DeBERTa is bound by kernel launches and gathers, not by matrix
# units), so a T4 may well do better than the ratio says: an order of magnitude, not a measurement.
T4 = "Tesla T4"
GPUS = (
    GpuPeak(H100, True, {"bf16": 989.4, "fp16": 989.4}),
    GpuPeak(T4, False, {"fp16": 65.0}),
)
NATIVE_BF16 = {g.name: g.native_bf16 for g in GPUS}
REFERENCE_GPU = H100  # the GPU whose measured rows estimates scale from


def member_arch(cfg: MemberConfig) -> str | None:
    """The known hub architecture (width, depth, vocabulary) of a transformer member's backbone, whether named
    by hub name or a local copy; None when it is none of them or cannot be read here."""
    from fb3stack.base.transformer.backbone import architecture_config
    from fb3stack.base.transformer.known import KNOWN_CONFIGS

    try:
        config = architecture_config(cfg)
    except (ValueError, OSError):
        return None
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    for name, known in KNOWN_CONFIGS.items():
        if all(getattr(config, k, None) == known.get(k) for k in keys):
            return name.split("/")[-1]
    return None


def match_gpu(name: str | None) -> str | None:
    """The measured GPU `name` means ("H100" matches "NVIDIA H100 80GB HBM3"), or None."""
    return _matching(name, {t.gpu for t in MEASURED})


def measured_throughput(gpu: str | None, cfg: MemberConfig, arch: str | None) -> Throughput | None:
    """The measured row for exactly this member's shape on `gpu` (architecture, max_len, precision the member's
    amp picks there, checkpointing, batch size, eager attention), or None: nothing is extrapolated."""
    measured = match_gpu(gpu)
    if measured is None or arch is None or getattr(cfg, "attention_impl", "eager") != "eager":
        return None
    amp = getattr(cfg, "amp", "auto")
    precision = ("bf16" if NATIVE_BF16.get(measured) else "fp16") if amp == "auto" else amp
    for t in MEASURED:
        if (t.gpu, t.arch, t.max_len, t.precision, t.checkpointing, t.batch_size) == (
                measured, arch, cfg.max_len, precision, cfg.gradient_checkpointing, cfg.batch_size):
            return t
    return None


def token_lengths(cfg: MemberConfig, texts: list[str], available: bool) -> tuple[np.ndarray, str]:
    """Tokens per essay as training feeds them (max_len, truncation, paragraph marker), and how they were
    counted: with the member's tokenizer when its backbone is `available` on this machine (a local folder,
    package or the Hugging Face cache; never downloaded), else estimated as words x TOKENS_PER_WORD + 2 special
    tokens, capped at max_len."""
    from fb3stack.base.transformer.backbone import add_newline_token, load_tokenizer, resolve_backbone
    from fb3stack.base.transformer.data import TokenCache

    tokenizer = None
    if available:
        try:
            tokenizer = load_tokenizer(resolve_backbone(cfg.backbone), local_files_only=True)
        except (OSError, ValueError) as err:  # e.g. a cache holding the config but not the tokenizer files
            logger.info("%s: tokenizer not loadable here (%s); estimating tokens", cfg.name, err)
    if tokenizer is None:
        words = np.array([len(t.split()) for t in texts], dtype=np.float64)
        return np.minimum(np.ceil(words * TOKENS_PER_WORD) + 2, cfg.max_len), "estimated"
    if cfg.newline_token:
        add_newline_token(tokenizer, None, cfg.newline_token)
    ids = TokenCache(tokenizer, cfg.max_len, truncation=cfg.truncation, head_ratio=cfg.head_ratio,
                     newline_token=cfg.newline_token).encode(texts)
    return np.array([len(x) for x in ids], dtype=np.float64), "tokenised"


def _matching(name: str | None, names: set[str]) -> str | None:
    if not name:
        return None
    found = sorted({n for n in names if name.lower() in n.lower() or n.lower() in name.lower()})
    return found[0] if len(found) == 1 else None


def known_gpu(name: str | None) -> GpuPeak | None:
    """The GPU of `GPUS` that `name` means ("T4" matches "Tesla T4"), or None."""
    found = _matching(name, {g.name for g in GPUS})
    return next((g for g in GPUS if g.name == found), None)


def precision_on(gpu: GpuPeak, amp: str) -> str:
    """The autocast precision a member's `amp` gives on `gpu` (engine.pick_amp's rule for CUDA)."""
    if amp == "auto":
        return "bf16" if gpu.native_bf16 else "fp16"
    return "fp32" if amp == "none" else amp


def passes_per_token(layers: int, checkpointing: bool) -> int:
    """Layer passes of one token in a training step of a fully trained network: forward 1 + backward 2 per layer,
    + 1 for checkpointing's recompute."""
    return layers * (4 if checkpointing else 3)


@dataclass(frozen=True)
class Rate:
    """Layer passes per second of training on `gpu`, from `row` (a MEASURED row of the reference GPU)."""

    gpu: str
    passes_per_s: float
    row: Throughput
    measured: bool  # the exact shape, measured on this GPU
    label: str


def training_rate(gpu: str | None, cfg: MemberConfig, arch: str | None, layers: int) -> Rate | str:
    """The rate for this member on `gpu`: `measured` when MEASURED has its exact shape on that GPU; else an
    estimate from the reference GPU's row of the same architecture and max_len nearest in precision,
    checkpointing and batch size (the differences are named in the label), times the peak ratio of the
    precision the member gets on `gpu` to the row's. Where nothing can be said, why (a string)."""
    target = known_gpu(gpu)
    if target is None:
        return f"not measured ({gpu}: no peak FLOP/s known)" if gpu else "not measured (no GPU named: --gpu)"
    if arch is None:
        return "not measured (architecture not one of known.py's)"
    if getattr(cfg, "attention_impl", "eager") != "eager":
        return f"not measured ({cfg.attention_impl} attention)"
    exact = measured_throughput(target.name, cfg, arch)
    if exact is not None:
        return Rate(target.name, exact.tokens_per_s * passes_per_token(layers, exact.checkpointing), exact, True,
                    f"measured ({_short(target.name)}, this shape)")
    precision = precision_on(target, getattr(cfg, "amp", "auto"))
    rows = [t for t in MEASURED if t.gpu == REFERENCE_GPU and t.arch == arch and t.max_len == cfg.max_len]
    if not rows:
        return f"not measured (no {_short(REFERENCE_GPU)} row of {arch} at max_len {cfg.max_len})"
    if precision not in target.tflops:
        return f"not measured ({precision} has no tensor-core peak on {_short(target.name)})"
    reference = next(g for g in GPUS if g.name == REFERENCE_GPU)
    row = min(rows, key=lambda t: (t.precision != precision, t.checkpointing != cfg.gradient_checkpointing,
                                   abs(np.log(t.batch_size / cfg.batch_size))))
    ratio = target.tflops[precision] / reference.tflops[row.precision]
    differs = [row.precision] if row.precision != precision else []
    if row.checkpointing != cfg.gradient_checkpointing:
        differs.append("checkpointing" if row.checkpointing else "no checkpointing")
    if row.batch_size != cfg.batch_size:
        differs.append(f"batch {row.batch_size}")
    label = (f"est. from {_short(REFERENCE_GPU)} x peak ratio ({target.tflops[precision]:g}/"
             f"{reference.tflops[row.precision]:g} TFLOP/s {precision})" if target.name != REFERENCE_GPU
             else f"est. from another {_short(REFERENCE_GPU)} shape")
    if differs:
        label += f"; {_short(REFERENCE_GPU)} row at {', '.join(differs)}"
    return Rate(target.name, row.tokens_per_s * passes_per_token(layers, row.checkpointing) * ratio, row, False,
                label)


def _short(gpu: str) -> str:
    return "H100" if gpu == H100 else "T4" if gpu == T4 else gpu


# ----------------------------------------------------------------------------------------------------------------
# Work: layer passes by training's rule (module docstring)

HIDDEN_TEST_ESSAYS = 2700  # FB3's hidden test set: about 2,700 essays, scored by every fold of every member
KAGGLE_LIMIT_S = 9 * 3600  # Kaggle's notebook run-time limit for FB3 submissions (CPU or GPU): 9 hours


@dataclass(frozen=True)
class MemberWork:
    """Layer passes of one transformer member over all its folds (see the module docstring)."""

    layers: int
    frozen: int  # encoder layers without gradient
    cached: bool  # the prefix cache applies: frozen part once per essay
    n_folds: int
    prefix: float  # embeddings + frozen layers over every essay, once for the member (cached only)
    steps: float  # training steps, clean pass
    adversary: float  # the adversary's second forward/backward
    evaluation: float  # forwards over the validation essays, every evaluation of every fold
    predict: float  # the test essays through every fold (one prefix pass per essay with the cache)

    @property
    def training(self) -> float:
        return self.prefix + self.steps + self.adversary + self.evaluation


def prefix_applies(cfg: MemberConfig, model_type: str | None) -> bool:
    """Whether training replays the frozen prefix (prefix.PrefixPlan.build's rule, as far as a config tells:
    data parallelism and an fp16 overflow, which also turn it off, are only known when training)."""
    from fb3stack.base.transformer.prefix import SUPPORTED

    return getattr(cfg, "freeze_layers", 0) > 0 and getattr(cfg, "prefix_cache", True) and model_type in SUPPORTED


def member_work(cfg: MemberConfig, layers: int, model_type: str | None, lengths: np.ndarray, fold_of: np.ndarray,
                test_tokens: float) -> MemberWork:
    """Layer passes of a transformer member trained on every fold of `fold_of` (tokens per essay: `lengths`) and
    predicting `test_tokens` tokens of test essays with all folds."""
    from fb3stack.base.transformer.data import BucketBatchSampler
    from fb3stack.base.transformer.trainer import eval_steps

    frozen = min(cfg.freeze_layers, layers)
    trained, cached = layers - frozen, prefix_applies(cfg, model_type)
    n_folds = int(fold_of.max()) + 1
    # a step: trained layers forward + backward (+ recompute); frozen layers forward, unless replayed
    step = trained * (4 if cfg.gradient_checkpointing else 3) + (0 if cached else frozen)
    forward = trained + (0 if cached else frozen)
    attacked = max(0, cfg.epochs - cfg.adv_start_epoch) if cfg.adversarial != "none" else 0
    steps = adversary = evaluation = 0.0
    for k in range(n_folds):
        train_tokens, valid_tokens = lengths[fold_of != k].sum(), lengths[fold_of == k].sum()
        n_batches = len(BucketBatchSampler(np.zeros(int((fold_of != k).sum())), cfg.batch_size, True,
                                           bucket_batches=cfg.bucket_batches))
        n_evals = len(eval_steps(cfg, -(-n_batches // cfg.grad_accum)))
        steps += cfg.epochs * train_tokens * step
        adversary += attacked * train_tokens * step
        evaluation += n_evals * valid_tokens * forward
    prefix = float(lengths.sum()) * frozen if cached else 0.0
    predict = test_tokens * (frozen + trained * n_folds) if cached else test_tokens * layers * n_folds
    return MemberWork(layers, frozen, cached, n_folds, prefix, float(steps), float(adversary), float(evaluation),
                      float(predict))


def member_model_type(cfg: MemberConfig) -> str | None:
    """The backbone's model_type ("bert", "deberta-v2", ...), or None when it cannot be read here."""
    from fb3stack.base.transformer.backbone import architecture_config

    try:
        return architecture_config(cfg).model_type
    except (ValueError, OSError):
        return None
