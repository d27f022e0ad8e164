"""Shared by the benchmarks: the machine, the measured matmul peak, encoder model FLOPs, atomic CSV saving."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float:
    """1-minute load average: other processes on the same cores slow every number down."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_info() -> dict[str, object]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "gpu": gpu, "load_1min_start": round(load_average(), 2),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def matmul_peak(device: str = "cpu", n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 5,
                inner: int = 3) -> float:
    """Best-of-`repeats` FLOP/s of an n x n torch.mm on this device: the practical ceiling for dense layers."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool and kernel selection
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2 * n**3 / best


def encoder_flops(model: torch.nn.Module, lengths: list[int], layers: int, hidden: int, training: bool) -> float:
    """Model FLOPs for essays of the given lengths (real tokens only, no padding).

    Per token forward: 2 x non-embedding parameters (every weight does one multiply-add) plus attention's
    QK^T and AV, 4 x layers x seq x hidden. Training is about 3x forward (backward = 2x forward). DeBERTa's
    relative-position terms (c2p, p2c) are left out, so its utilisation is understated, not overstated.
    """
    emb = sum(p.numel() for name, p in model.named_parameters() if "embeddings" in name)
    dense = 2 * (sum(p.numel() for p in model.parameters()) - emb)
    fwd = sum(length * (dense + 4 * layers * length * hidden) for length in lengths)
    return float(fwd * (3 if training else 1))


def save_csv(rows: list[dict], name: str) -> Path:
    """Write to benchmarks/results/<name> via a temp file, so a killed run never leaves half a CSV."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)
    return path
