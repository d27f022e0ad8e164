"""Wall time of the whole CPU zoo on the real train.csv: cold caches vs warm caches, measured in one run.

cold: a fresh workspace, empty cache -> embeddings and text features are computed, every member trained.
warm: a second fresh workspace whose cache/ folder is a copy of the cold run's cache -> every member is
      trained again from scratch (no model is reused), only the label-free embeddings/features come from cache.
Each phase runs `fb3stack train` in a subprocess limited to the given thread count. Writes one CSV row per
phase to benchmarks/results/ with the machine (CPU model, cores, torch version), the load average at the
start (other processes sharing the cores slow everything down) and each member's OOF MCRMSE.

    python benchmarks/bench_cpu_zoo.py --data-dir ../shared/data/fb3 [--zoo configs/zoo/cpu.yaml] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import cpu_model  # benchmarks/common.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def train(zoo: Path, data_dir: Path, workspace: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "fb3stack", "train", str(zoo), "--data-dir", str(data_dir),
           "--workspace", str(workspace)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def member_scores(workspace: Path) -> dict[str, float]:
    out = {}
    for metrics in sorted((workspace / "models").glob("*/metrics.json")):
        out[metrics.parent.name] = round(json.loads(metrics.read_text())["mcrmse"], 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", type=Path, default=REPO / "configs" / "zoo" / "cpu.yaml")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "fb3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the two workspaces (printed) instead of deleting")
    args = p.parse_args()

    import torch

    root = Path(tempfile.mkdtemp(prefix="bench_cpu_zoo_"))
    cold_ws, warm_ws = root / "cold", root / "warm"
    rows = []
    try:
        for phase, ws in (("cold", cold_ws), ("warm", warm_ws)):
            if phase == "warm":
                shutil.copytree(cold_ws / "cache", warm_ws / "cache")
            load = os.getloadavg()[0]
            seconds = train(args.zoo, args.data_dir, ws, args.threads)
            rows.append({"phase": phase, "seconds": round(seconds, 1), "load_avg_1min_at_start": round(load, 2),
                         **{f"oof_{k}": v for k, v in member_scores(ws).items()}})
            print(f"{phase}: {seconds:.1f} s  {member_scores(ws)}", flush=True)
    finally:
        if args.keep:
            print(f"workspaces kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    cold, warm = rows[0]["seconds"], rows[-1]["seconds"]
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
               "torch": torch.__version__, "python": platform.python_version(), "zoo": str(args.zoo.name),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    df = pd.DataFrame([{**machine, **r, "cold_over_warm": round(cold / warm, 2)} for r in rows])
    out = REPO / "benchmarks" / "results" / f"bench_cpu_zoo_{dt.datetime.now():%Y%m%d-%H%M%S}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    print(f"cold {cold:.0f} s (budget 900), warm {warm:.0f} s (budget 120), ratio {cold / warm:.1f}x -> {out}")


if __name__ == "__main__":
    main()
