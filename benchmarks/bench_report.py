"""Wall time of `fb3stack report` (report.md + report.html) and `fb3stack status --json` on an existing workspace.

Each command runs in a fresh subprocess (as a user runs it: imports, matplotlib and all) `--repeats` times; one
CSV row per run goes to benchmarks/results/bench_report_<time>.csv with the machine, the load average at the
start, the essays in the workspace, the size of report.html and its number of embedded figures.

    python benchmarks/bench_report.py --workspace /tmp/ws15c --data-dir ../shared/data/fb3 [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from common import load_average, machine_info, save_csv  # benchmarks/common.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fb3stack", "-q", *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workspace", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    ws = Path(args.workspace).resolve()
    essays = len(pd.read_csv(ws / "folds.csv"))
    info = machine_info()
    rows = []
    for r in range(args.repeats):
        for name, cmd in (("report", ["report", "--workspace", str(ws), "--data-dir", args.data_dir]),
                          ("status", ["status", "--workspace", str(ws), "--data-dir", args.data_dir, "--json"])):
            load = load_average()
            seconds = timed(cmd)
            html = (ws / "report.html").read_text(encoding="utf-8")
            rows.append({"command": name, "repeat": r, "seconds": round(seconds, 2), "essays": essays,
                         "html_kb": round(len(html.encode()) / 1024, 1),
                         "figures": html.count("data:image/png;base64,"), "load_1min": round(load, 2), **info})
            print(f"{name:7s} repeat {r}: {seconds:.2f} s (load {load:.1f})")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    print("saved", save_csv(rows, f"bench_report_{stamp}.csv"))


if __name__ == "__main__":
    main()
