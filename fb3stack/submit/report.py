"""report.md and report.html: what the run trained, how each member and the blend scored, where the blend's
weight goes and which essays the zoo gets wrong (the figures live in fb3stack.report)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from fb3stack.constants import TARGETS
from fb3stack.io import read_json, write_json, write_text
from fb3stack.report.gather import TIMINGS_FILE, gather, headline, methods_shown
from fb3stack.report.markdown import markdown_table
from fb3stack.workspace import Workspace

logger = logging.getLogger(__name__)


def member_table(ws: Workspace, names: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for name in names if names is not None else ws.list_models():
        path = ws.model_dir(name) / "metrics.json"
        if not path.is_file():
            continue
        m = read_json(path)
        seconds = sum(f.get("seconds", 0.0) for f in m.get("folds", []))
        rows.append({"member": name, "kind": m.get("kind"), "MCRMSE": m["mcrmse"], **m["rmse"],
                     "train_s": round(seconds, 1),
                     "seeds": ", ".join(f"{x['seed']}: {x['mcrmse']:.4f}" for x in m.get("seeds", []))})
    # a seed average's MCRMSE is its mean's; the seeds column (only when there is one) has each seed's
    columns = ["member", "kind", "MCRMSE", *TARGETS, "train_s", *(["seeds"] if any(r["seeds"] for r in rows) else [])]
    # best first, as report.html lists them
    return pd.DataFrame(rows, columns=columns).sort_values("MCRMSE", kind="stable")


def _markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """Scores to `digits` decimals, seconds (`*_s` and `seconds` columns) to 1."""
    cols = list(df.columns)
    return markdown_table(cols, ([(f"{v:.1f}" if c.endswith("_s") or c == "seconds" else f"{v:.{digits}f}")
                                  if isinstance(v, float) else v for c, v in zip(cols, row)]
                                 for _, row in df.iterrows()))


def write_report(ws: Workspace, blend_dir: Path | None, submission: Path | None, timings: dict[str, float],
                 out: Path | None = None, data_dir: str | os.PathLike | None = None) -> Path:
    """Write report.md and report.html beside it; returns the report.md path."""
    if timings:  # kept so `fb3stack report` can rebuild the headline later
        write_json(ws.root / TIMINGS_FILE, {k: round(v, 2) for k, v in timings.items()})
    data = gather(ws.root, data_dir, blend_dir=blend_dir, timings=timings or None)
    path = out or ws.root / "report.md"
    html_name = path.with_suffix(".html").name
    parts = ["# fb3stack run report", "", f"**{headline(data)}**", "",
             f"Figures: [{html_name}]({html_name}) (one self-contained file).", ""]
    if data.timings:
        parts += ["Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in data.timings.items()), ""]
    parts += ["## Base layer: out-of-fold scores", "", _markdown(member_table(ws)), ""]
    if blend_dir is not None and (blend_dir / "spec.json").is_file():
        spec = read_json(blend_dir / "spec.json")
        parts += [f"## Second layer: blend `{blend_dir.name}`", ""]
        if data.blend is not None and data.blend.table is not None:
            parts += [("Every method, in-sample vs nested CV, best nested first (in-sample scores flatter; the "
                       "chosen method's nested score flatters a little too, since it won among many: the honest "
                       "estimate is the selected-by-inner-CV row, which scores the choice itself):"), "",
                      spec.get("honest_note", ""), "", _markdown(methods_shown(data.blend.table), digits=5), ""]
        parts += ["Chosen blend (spec.json):", "", "```json", json.dumps(spec, indent=2)[:6000], "```", ""]
    if submission is not None:
        parts += [f"Submission: `{submission}`", ""]
    write_text(path, "\n".join(parts))
    write_report_html(data, path.with_suffix(".html"))
    return path


def write_report_html(data: object, path: Path) -> Path | None:
    """report.html; a drawing failure is logged, not raised: the run's submission is already written."""
    from fb3stack.report.html import write_html

    try:
        return write_html(data, path)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        logger.exception("could not write %s; rebuild it with `fb3stack report --workspace %s`", path,
                         path.parent)
        return None


def run_summary(ws: Workspace, submission: Path, report: Path, log: Path, blend_dir: Path | None,
                timings: dict[str, float]) -> str:
    """The end of `fb3stack run`: where everything is, and the one-line headline."""
    data = gather(ws.root, blend_dir=blend_dir, timings=timings, with_labels=False)
    html_path = report.with_suffix(".html")
    rows = [("workspace", ws.root), ("submission", submission), ("report", html_path if html_path.is_file() else
            report), ("report.md", report), ("blend", blend_dir), ("models", ws.root / "models"), ("log", log)]
    lines = [f"{k + ':':<12}{v}" for k, v in rows if v is not None]
    return "\n".join([*lines, f"status:     fb3stack status --workspace {ws.root}", "", headline(data)])
