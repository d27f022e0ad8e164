"""report.md: what the run trained, how each member and the blend scored (per trait), the blend weights."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fb3stack.constants import TARGETS
from fb3stack.io import read_json, write_text
from fb3stack.workspace import Workspace


def member_table(ws: Workspace, names: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for name in names if names is not None else ws.list_models():
        path = ws.model_dir(name) / "metrics.json"
        if not path.is_file():
            continue
        m = read_json(path)
        seconds = sum(f.get("seconds", 0.0) for f in m.get("folds", []))
        rows.append({"member": name, "kind": m.get("kind"), "MCRMSE": m["mcrmse"], **m["rmse"],
                     "train_s": round(seconds, 1)})
    return pd.DataFrame(rows, columns=["member", "kind", "MCRMSE", *TARGETS, "train_s"])


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [(f"{v:.1f}" if c.endswith("_s") else f"{v:.4f}") if isinstance(v, float) else str(v)
                 for c, v in zip(cols, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(ws: Workspace, blend_dir: Path | None, submission: Path | None, timings: dict[str, float],
                 out: Path | None = None) -> Path:
    parts = ["# fb3stack run report", ""]
    if timings:
        parts += ["Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), ""]
    parts += ["## Base layer: out-of-fold scores", "", _markdown(member_table(ws)), ""]
    if blend_dir is not None and (blend_dir / "spec.json").is_file():
        spec = read_json(blend_dir / "spec.json")
        parts += [f"## Second layer: blend `{blend_dir.name}`", ""]
        if (blend_dir / "table.md").is_file():
            parts += ["Every method, in-sample vs nested CV (only the nested score is an honest estimate):", "",
                      (blend_dir / "table.md").read_text(encoding="utf-8").strip(), ""]
        parts += ["Chosen blend (spec.json):", "", "```json", json.dumps(spec, indent=2)[:6000], "```", ""]
    if submission is not None:
        parts += [f"Submission: `{submission}`", ""]
    path = out or ws.root / "report.md"
    write_text(path, "\n".join(parts))
    return path
