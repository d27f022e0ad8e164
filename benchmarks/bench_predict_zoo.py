"""Prediction time of a trained zoo on FB3's hidden-test size, through the real CLI.

FB3's hidden test set had 2,571 essays. This samples that many from train.csv (seeded; their text is what the
hidden essays look like), writes them as a test CSV without scores, and times `fb3stack predict --workspace W`
with an empty prediction cache (every member predicts every essay with every fold model, as a Kaggle rerun
does), recording wall seconds, peak memory of the process (ru_maxrss of the child) and the machine's load.

    python benchmarks/bench_predict_zoo.py --workspace workspace-finetune
    python benchmarks/bench_predict_zoo.py --workspace workspace --essays 500

Results: benchmarks/results/predict_zoo.csv (a row per run, appended).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_average, machine_info, save_csv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CSV = "predict_zoo.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/data/fb3"))
    ap.add_argument("--essays", type=int, default=2571, help="essays to predict (FB3's hidden test: 2,571)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train = Path(args.data_dir) / "train.csv"
    if not Path(args.workspace, "blends").is_dir() or not train.is_file():
        sys.exit(f"error: need a trained workspace with a fitted blend ({args.workspace}) and {train}")
    df = pd.read_csv(train)
    sample = df.sample(n=min(args.essays, len(df)), random_state=args.seed)[["text_id", "full_text"]]
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test.csv"
        sample.to_csv(test, index=False)
        cmd = [sys.executable, "-m", "fb3stack", "predict", "--workspace", args.workspace, "--test", str(test),
               "--cache", str(Path(tmp) / "cache"), "--out", str(Path(tmp) / "submission.csv")]
        load0, t0 = load_average(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        rows = len(pd.read_csv(Path(tmp) / "submission.csv"))
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB on Linux
    members = sorted(p.name for p in Path(args.workspace, "models").iterdir() if p.is_dir())
    row = {"workspace": Path(args.workspace).name, "members": " ".join(members), "essays": rows,
           "wall_s": round(wall, 1), "peak_rss_gb": round(peak_gb, 2), "load_1min_start": load0,
           "load_1min_end": load_average(), **machine_info()}
    path = RESULTS / CSV
    old = pd.read_csv(path).to_dict("records") if path.is_file() else []
    save_csv([*old, row], CSV)
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
