"""Kill `fb3stack run` with SIGKILL at moments spread over training, embedding, blending and prediction; rerun it
each time and check that the final OOFs, blend and submission are identical to an uninterrupted run.

    .venv/bin/python benchmarks/fault_injection.py                 # 8 kill moments + the damage/lock checks
    .venv/bin/python benchmarks/fault_injection.py --limit 120 --moments train-fold1,blend

The zoo is the CPU zoo made small (TF-IDF ridge, text features + LightGBM, frozen MiniLM at max_len 128 + SVR;
`data.limit` essays, 3 folds; a blend of 3 methods plus the selected-by-inner-CV row). Each trial starts from an
empty workspace, watches the run's log, and sends SIGKILL a set delay after a given log line appears (no
cleanup code runs: the lock file, temporary folders and half-written files stay as a real crash leaves them);
then the same command runs to the end. Besides the kills it checks that a truncated fold model file and a
truncated oof.parquet are detected (refused, then rebuilt by `run`), and that of two concurrent runs on one
workspace the second is refused and the first's artefacts verify. Results: one CSV row per trial in
benchmarks/results/fault_injection.csv, with the machine and load average.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine_info, save_csv  # noqa: E402


@dataclass(frozen=True)
class Moment:
    name: str
    stage: str  # training, embedding, blending, prediction
    pattern: str  # regex on a log line of the run
    delay: float  # seconds after the line appears


MOMENTS = [
    Moment("train-fold1", "training", r"tfidf-ridge fold 1: training", 0.3),
    Moment("train-lgbm-fold2", "training", r"features-lgbm fold 2: training", 0.2),
    Moment("embed-train-texts", "embedding", r"embed-svr-minilm fold 0: training", 1.0),
    Moment("embed-after-store", "embedding", r"embedded \d+ new texts", 0.05),
    Moment("finalize", "training", r"embed-svr-minilm fold 2: MCRMSE", 0.0),
    Moment("blend", "blending", r"blending \d+ members", 0.3),
    Moment("blend-selection", "blending", r"nnls\s+nested", 0.05),
    Moment("predict", "prediction", r"tfidf-ridge: predicted", 0.05),
    Moment("predict-embed", "prediction", r"features-lgbm: predicted", 0.05),
    Moment("report", "prediction", r"wrote .*submission\.csv", 0.0),
]


def zoo_yaml(root: Path, limit: int) -> Path:
    zoo = {
        "name": "fault", "data": {"limit": limit, "limit_seed": 7}, "folds": {"n_folds": 3, "seed": 0},
        "members": [str(REPO / "configs/models/tfidf-ridge.yaml"), str(REPO / "configs/models/features-lgbm.yaml"),
                    {"include": str(REPO / "configs/models/embed-svr-minilm.yaml"), "set": {"max_len": 128}}],
        "blend": {"name": "b", "members": ["tfidf-ridge", "features-lgbm", "embed-svr-minilm"],
                  "methods": [{"name": "mean", "kind": "mean"}, {"name": "nnls", "kind": "nnls"},
                              {"name": "slsqp", "kind": "scipy", "params": {"method": "SLSQP"}}]},
    }
    path = root / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_cmd(zoo: Path, ws: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "fb3stack", "run", str(zoo), "--workspace", str(ws), "--data-dir", str(data_dir)]


def run_and_kill(cmd: list[str], moment: Moment) -> tuple[bool, float]:
    """Start `cmd`, SIGKILL it `moment.delay` s after a log line matches; (killed?, seconds until the kill)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    pattern = re.compile(moment.pattern)
    killed = False
    for line in proc.stderr:
        if pattern.search(line):
            time.sleep(moment.delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
            break
    proc.stderr.close()
    proc.wait()
    return killed, time.perf_counter() - t0


def outputs(ws: Path) -> dict[str, pd.DataFrame]:
    files = {p.relative_to(ws).as_posix(): p for p in [*ws.glob("models/*/oof.parquet"), ws / "blends/b/oof.parquet"]}
    out = {k: pd.read_parquet(p) for k, p in files.items()}
    out["submission.csv"] = pd.read_csv(ws / "submission.csv")
    return out


def compare(ref: dict[str, pd.DataFrame], got: dict[str, pd.DataFrame]) -> tuple[bool, float]:
    """(identical?, max absolute difference over every numeric column) of the final outputs."""
    if set(ref) != set(got):
        return False, float("inf")
    same, diff = True, 0.0
    for key, a in ref.items():
        b = got[key]
        if list(a.columns) != list(b.columns) or len(a) != len(b) or not a.iloc[:, 0].equals(b.iloc[:, 0]):
            return False, float("inf")
        num = a.select_dtypes("number").columns
        d = float(np.abs(a[num].to_numpy() - b[num].to_numpy()).max()) if len(num) else 0.0
        diff = max(diff, d)
        same &= a.equals(b)
    return same, diff


def verify(ws: Path) -> int:
    """Number of complete members whose files all match their seals and content hash."""
    from fb3stack.base.runner import SavedMember

    return sum(1 for d in sorted((ws / "models").glob("[!.]*")) if SavedMember.load(d).verify())


def kill_trials(moments: list[Moment], zoo: Path, work: Path, data_dir: Path,
                ref: dict[str, pd.DataFrame]) -> list[dict]:
    rows = []
    for m in moments:
        ws = work / f"ws-{m.name}"
        killed, t_kill = run_and_kill(run_cmd(zoo, ws, data_dir), m)
        lock_left = (ws / ".fb3stack.lock").exists()
        t0 = time.perf_counter()
        rerun = subprocess.run(run_cmd(zoo, ws, data_dir), capture_output=True, text=True, env=env())
        same, diff = compare(ref, outputs(ws)) if rerun.returncode == 0 else (False, float("inf"))
        row = {"trial": m.name, "stage": m.stage, "trigger": m.pattern, "delay_s": m.delay, "killed": killed,
               "killed_after_s": round(t_kill, 2), "lock_left_by_kill": lock_left, "rerun_rc": rerun.returncode,
               "rerun_s": round(time.perf_counter() - t0, 2), "identical": same, "max_abs_diff": diff,
               "members_verified": verify(ws) if rerun.returncode == 0 else 0,
               "load_1min": round(load_average(), 2)}
        print(row, flush=True)
        if rerun.returncode != 0:
            print(rerun.stderr[-3000:], file=sys.stderr)
        rows.append(row)
    return rows


def damage_trials(zoo: Path, ref_ws: Path, work: Path, data_dir: Path, ref: dict[str, pd.DataFrame]) -> list[dict]:
    """A truncated fold model file and a truncated oof.parquet: refused by predict/blend, rebuilt by run."""
    rows = []
    cases = [("truncate-model", "models/tfidf-ridge/fold1/tfidf_ridge.joblib", "predict"),
             ("truncate-oof", "models/features-lgbm/oof.parquet", "blend")]
    for name, rel, refused_by in cases:
        ws = work / f"ws-{name}"
        shutil.copytree(ref_ws, ws)
        shutil.rmtree(ws / "predictions")
        target = ws / rel
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        if refused_by == "predict":
            cmd = [sys.executable, "-m", "fb3stack", "predict", "--workspace", str(ws), "--test",
                   str(data_dir / "test.csv"), "--out", str(work / f"{name}.csv")]
        else:
            cmd = [sys.executable, "-m", "fb3stack", "blend", str(zoo), "--workspace", str(ws), "--data-dir",
                   str(data_dir)]
        refused = subprocess.run(cmd, capture_output=True, text=True, env=env())
        detected = refused.returncode == 2 and rel.split("/")[-1] in refused.stderr
        rerun = subprocess.run(run_cmd(zoo, ws, data_dir), capture_output=True, text=True, env=env())
        same, diff = compare(ref, outputs(ws)) if rerun.returncode == 0 else (False, float("inf"))
        row = {"trial": name, "stage": "damage", "trigger": rel, "refused_rc": refused.returncode,
               "detected": detected, "rerun_rc": rerun.returncode, "identical": same, "max_abs_diff": diff,
               "members_verified": verify(ws) if rerun.returncode == 0 else 0, "load_1min": round(load_average(), 2)}
        print(row, flush=True)
        rows.append(row)
    return rows


def concurrent_trial(zoo: Path, work: Path, data_dir: Path, ref: dict[str, pd.DataFrame]) -> dict:
    ws = work / "ws-concurrent"
    procs = [subprocess.Popen(run_cmd(zoo, ws, data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env()) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    refused = any(rc == 2 and "is in use by `fb3stack run`" in err for rc, err in results)
    same, diff = compare(ref, outputs(ws)) if 0 in codes else (False, float("inf"))
    row = {"trial": "two-concurrent-runs", "stage": "lock", "trigger": "both started together",
           "rcs": "/".join(map(str, codes)), "detected": refused, "identical": same, "max_abs_diff": diff,
           "members_verified": verify(ws) if 0 in codes else 0, "load_1min": round(load_average(), 2)}
    print(row, flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "fb3"))
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--moments", help="comma-separated subset of: " + ",".join(m.name for m in MOMENTS))
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--out", default="fault_injection.csv")
    args = p.parse_args()
    data_dir = Path(args.data_dir).resolve()
    moments = [m for m in MOMENTS if not args.moments or m.name in args.moments.split(",")]
    info = machine_info()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fb3-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        zoo = zoo_yaml(work, args.limit)
        ref_ws = work / "ws-reference"
        subprocess.run(run_cmd(zoo, ref_ws, data_dir), check=True, capture_output=True, env=env())
        print(f"reference run: {time.perf_counter() - t0:.0f} s", flush=True)
        ref = outputs(ref_ws)
        rows = kill_trials(moments, zoo, work, data_dir, ref)
        rows += damage_trials(zoo, ref_ws, work, data_dir, ref)
        rows.append(concurrent_trial(zoo, work, data_dir, ref))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row.update(limit=args.limit, **info)
    path = save_csv(rows, args.out)
    kills = [r for r in rows if r["stage"] in ("training", "embedding", "blending", "prediction")]
    n_killed = sum(bool(r["killed"]) for r in kills)
    n_same = sum(bool(r["identical"]) for r in kills if r["killed"])
    others = [r for r in rows if r not in kills]
    n_checks = sum(bool(r["detected"]) and bool(r["identical"]) for r in others)
    print(f"\n{n_killed}/{len(kills)} runs killed at their moment; {n_same}/{n_killed} reran to identical OOFs, blend "
          f"and submission; damage/lock checks passed: {n_checks}/{len(others)}; "
          f"total {time.perf_counter() - t0:.0f} s "
          f"-> {path}")
    ok = n_killed >= 5 and n_same == n_killed and all(r["detected"] and r["identical"] for r in others)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
