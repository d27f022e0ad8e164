"""What a zoo costs before it trains: checkpoint bytes from parameter counts, training tokens per fold, and
training time where a throughput was measured on that GPU (`fb3stack train --dry-run`, `bundle --dry-run`).

Nothing here loads weights: parameter counts come from the architecture built on the meta device
(`TransformerMember.describe`), tokens from the member's own tokenizer when it is on this machine, else an
estimate from word counts (said so in the output), and times only from `MEASURED`, rows of a GPU check.
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
NATIVE_BF16 = {H100: True}  # compute capability >= 8.0, what `amp: auto` looks at


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
    if not name:
        return None
    found = sorted({t.gpu for t in MEASURED if name.lower() in t.gpu.lower() or t.gpu.lower() in name.lower()})
    return found[0] if len(found) == 1 else None


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
