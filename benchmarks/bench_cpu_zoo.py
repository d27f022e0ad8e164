"""The CPU zoo end to end on the real train.csv, every number side by side from one run.

Phases, in this order (the CSV is rewritten after each, so a run cut short keeps what it measured):
cold:    `fb3stack run ZOO` in a fresh workspace with empty caches (embeddings, text features computed,
         every member trained, blended by nested CV, test.csv predicted).
rerun:   the same command again in the same workspace (everything up to date: what `make run` costs twice).
predict: `fb3stack predict` of a 2,500-essay test file (essays drawn from train.csv, new ids) with the cold
         workspace's models; member predictions are not cached for it and the test essays are embedded anew.
bundle:  `fb3stack bundle --no-wheels` of the cold workspace: its size, and the bytes held by files whose
         content another file of the bundle already has (0 = nothing stored twice).
warm:    a fresh workspace whose cache/ is a copy of the cold one: every member and the blend are fitted again
         from scratch, only the label-free embeddings/features come from the cache.

Each phase is a subprocess limited to `--threads` threads. One CSV row per phase goes to benchmarks/results/
with the machine, the 1-minute load average at the start and end of the phase (other processes sharing the
cores slow everything down), each member's OOF MCRMSE, the chosen blend and its nested MCRMSE.

    python benchmarks/bench_cpu_zoo.py [--zoo configs/zoo/cpu.yaml] [--data-dir ../shared/data/fb3] [--threads 2]
    python benchmarks/bench_cpu_zoo.py --trained WORKSPACE    # predict + bundle only, with trained models
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
from common import cpu_model, load_average, save_csv  # benchmarks/common.py, beside this script

from fb3stack.hardware import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
N_PREDICT = 2500


def fb3stack(args: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fb3stack", *args], check=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def member_scores(workspace: Path) -> dict[str, float]:
    return {m.parent.name: round(json.loads(m.read_text())["mcrmse"], 4)
            for m in sorted((workspace / "models").glob("*/metrics.json"))}


def blend_score(workspace: Path) -> dict[str, object]:
    specs = sorted((workspace / "blends").glob("*/spec.json"))
    if not specs:
        return {}
    spec = json.loads(specs[0].read_text())
    table = pd.read_csv(specs[0].parent / "table.csv").set_index("name")
    out: dict[str, object] = {"blend_method": spec["method"], "blend_nested": round(spec["nested_mcrmse"], 4)}
    for name in table.index:
        if table.loc[name, "kind"] == "lgbm":
            out[f"nested_{name}"] = round(float(table.loc[name, "nested"]), 4)
    return out


def duplicate_bytes(folder: Path) -> tuple[int, int]:
    """(total bytes, bytes in files whose exact content an earlier file already holds)."""
    seen: dict[str, Path] = {}
    total = dup = 0
    by_size: dict[int, list[Path]] = defaultdict(list)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            by_size[p.stat().st_size].append(p)
            total += p.stat().st_size
    for size, paths in by_size.items():
        if len(paths) < 2 or size == 0:
            continue
        for p in paths:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest in seen:
                dup += size
            else:
                seen[digest] = p
    return total, dup


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return (REPO / "COMMIT").read_text().strip() if (REPO / "COMMIT").is_file() else "unknown"


def make_test_file(data_dir: Path, out: Path, n: int, seed: int = 0) -> Path:
    train = pd.read_csv(data_dir / "train.csv")
    sample = train.sample(n=n, replace=n > len(train), random_state=seed).reset_index(drop=True)
    sample = pd.DataFrame({"text_id": [f"bench{i:05d}" for i in range(n)], "full_text": sample["full_text"]})
    sample.to_csv(out, index=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", type=Path, default=REPO / "configs" / "zoo" / "cpu.yaml")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "fb3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-predict", type=int, default=N_PREDICT)
    p.add_argument("--keep", action="store_true", help="keep the workspaces (printed) instead of deleting")
    p.add_argument("--trained", type=Path, default=None,
                   help="an already trained workspace: measure only predict and bundle with it (after a code change "
                        "that touches only prediction)")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_cpu_zoo_"))
    cold, warm = root / "cold", root / "warm"
    data = ["--data-dir", str(args.data_dir.resolve())]
    rows: list[dict] = []

    def phase(name: str, cmd: list[str], ws: Path | None = None, **extra: object) -> None:
        load0 = load_average()
        seconds = fb3stack(cmd, args.threads)
        row = {"phase": name, "seconds": round(seconds, 1), "load_1min_start": round(load0, 2),
               "load_1min_end": round(load_average(), 2), **extra}
        if ws is not None:
            row.update({f"oof_{k}": v for k, v in member_scores(ws).items()}, **blend_score(ws))
        rows.append(row)
        print(f"{name}: {seconds:.1f} s (load {load0:.2f}) {json.dumps({k: v for k, v in row.items() if k not in ('phase', 'seconds')})}", flush=True)  # noqa: E501

    import torch

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "bf16_native": cpu_has_native_bf16(),
               "python": platform.python_version(), "zoo": args.zoo.name, "commit": git_commit(),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    csv_name = f"bench_cpu_zoo_{dt.datetime.now():%Y%m%d-%H%M%S}.csv"

    def save() -> Path:  # after every phase, so a run cut short still leaves what it measured
        return save_csv([{**machine, **r} for r in rows], csv_name)

    try:
        if args.trained is not None:
            cold = args.trained.resolve()
            rows.append({"phase": "trained", "seconds": float("nan"), "workspace": str(cold),
                         **{f"oof_{k}": v for k, v in member_scores(cold).items()}, **blend_score(cold)})
        else:
            phase("cold", ["run", str(args.zoo), *data, "--workspace", str(cold)], cold)
            save()
            phase("rerun", ["run", str(args.zoo), *data, "--workspace", str(cold)], cold)
            save()
        test = make_test_file(args.data_dir, root / "test2500.csv", args.n_predict)
        phase("predict", ["predict", "--workspace", str(cold), "--test", str(test), "--out",
                          str(root / "sub2500.csv"), "--cache", str(root / "predcache")], n_essays=args.n_predict)
        save()
        load0 = load_average()
        t_bundle = fb3stack(["bundle", "--workspace", str(cold), "--out", str(root / "bundle"), "--no-wheels"],
                            args.threads)
        total, dup = duplicate_bytes(root / "bundle")
        rows.append({"phase": "bundle", "seconds": round(t_bundle, 1), "load_1min_start": round(load0, 2),
                     "load_1min_end": round(load_average(), 2), "bundle_mb": round(total / 2**20, 1),
                     "bundle_duplicate_mb": round(dup / 2**20, 2)})
        print(f"bundle: {total / 2**20:.1f} MB, duplicated {dup / 2**20:.2f} MB", flush=True)
        out = save()
        if args.trained is None:
            shutil.copytree(cold / "cache", warm / "cache")
            phase("warm", ["run", str(args.zoo), *data, "--workspace", str(warm)], warm)
            out = save()
    finally:
        if args.keep:
            print(f"workspaces kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    cols = ["phase", "seconds", "load_1min_start", "load_1min_end"]
    df = pd.DataFrame(rows)
    print(df[[c for c in cols if c in df.columns]].to_string(index=False))
    by = {r["phase"]: r for r in rows}
    if args.trained is not None:
        print(f"predict {args.n_predict} essays {by['predict']['seconds']:.0f} s (target 120); bundle "
              f"{by['bundle']['bundle_mb']} MB, {by['bundle']['bundle_duplicate_mb']} MB stored twice -> {out}")
        return
    print("members:", {k[4:]: v for k, v in by["cold"].items() if k.startswith("oof_")})
    print(f"blend {by['cold'].get('blend_method')} nested {by['cold'].get('blend_nested')} (target 0.490); "
          f"cold {by['cold']['seconds']:.0f} s (target 720); rerun {by['rerun']['seconds']:.0f} s (target 60), "
          f"refit from warm caches {by['warm']['seconds']:.0f} s; predict {args.n_predict} essays "
          f"{by['predict']['seconds']:.0f} s (target 120); bundle {by['bundle']['bundle_mb']} MB, "
          f"{by['bundle']['bundle_duplicate_mb']} MB stored twice -> {out}")


if __name__ == "__main__":
    main()
