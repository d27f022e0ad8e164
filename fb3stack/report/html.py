"""Assemble report.html: one file, inline CSS, every figure a base64 PNG, no address outside the file."""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fb3stack import __version__
from fb3stack.constants import TEXT_COL
from fb3stack.io import write_text
from fb3stack.report import figures
from fb3stack.report.gather import ReportData, format_seconds, headline, methods_shown

logger = logging.getLogger(__name__)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1320px;padding:16px 28px;
color:#222;line-height:1.45}
h1{margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:1.8em}
.headline{background:#eef6ee;border-left:5px solid #2ca02c;padding:10px 14px;font-size:1.1em;margin:10px 0}
.guide{background:#f5f7fa;border-left:4px solid #1f77b4;padding:6px 12px;margin:6px 0 10px;font-size:.95em}
.note{color:#8a4b00;background:#fff6e5;border-left:4px solid #ff7f0e;padding:6px 12px}
img{max-width:100%;height:auto;display:block;margin:6px 0 4px}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
tr.hl td{background:#e8f5e9;font-weight:bold}nav a{margin-right:14px}.meta{color:#777;font-size:.85em}
"""


class Page:
    def __init__(self) -> None:
        self.sections: list[tuple[str, str, list[str]]] = []  # (anchor, title, html parts)

    def section(self, anchor: str, title: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((anchor, title, parts))
        return parts


def img(fig: object, alt: str) -> str:
    data = base64.b64encode(figures.to_png(fig)).decode("ascii")  # type: ignore[arg-type]
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def guide(text: str) -> str:
    return f'<p class="guide"><b>How to read:</b> {html.escape(text)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def table(df: pd.DataFrame, highlight: Callable[[pd.Series], bool] | None = None, digits: int = 4) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = "".join(f"<td>{v:.{digits}f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                        for v in r)
        cls = ' class="hl"' if highlight is not None and highlight(r) else ""
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figure(parts: list[str], fig: object | None, alt: str, reading: str, missing: str) -> None:
    if fig is None:
        parts.append(note(missing))
        return
    parts += [guide(reading), img(fig, alt)]


def build(data: ReportData) -> str:
    page = Page()
    b = data.blend
    best = data.best_member
    labels = data.labels

    s = page.section("members", "Members: out-of-fold leaderboard")
    _figure(s, figures.leaderboard(data.members, b), "member leaderboard",
            "Each bar is a member's MCRMSE over all out-of-fold rows (lower is better); the dots are its single "
            "folds, so a wide spread means an unstable member. The dashed green line is the blend's honest score; "
            "the heatmap shows which trait each member gets most wrong.", "No finished member yet.")
    if data.members:
        df = pd.DataFrame([{"member": m.name, "kind": m.kind or "", "MCRMSE": m.mcrmse, **m.rmse,
                            "fold sd": float(pd.Series(m.fold_mcrmse).std()) if len(m.fold_mcrmse) > 1 else 0.0,
                            "train": format_seconds(m.seconds)} for m in sorted(data.members, key=lambda m: m.mcrmse)])
        if any(m.seeds for m in data.members):  # seed averages: the MCRMSE column is the mean's, these each seed's
            df["seeds (MCRMSE each)"] = [m.seeds_text for m in sorted(data.members, key=lambda m: m.mcrmse)]
        s.append(table(df))

    s = page.section("diversity", "Diversity: correlation between members")
    _figure(s, figures.correlations(data.oofs, labels), "member correlation heatmaps",
            "Pearson correlation of the members' out-of-fold predictions, per trait and averaged (bold); the last "
            "panel correlates their errors. Near 1 means two members make the same mistakes, so a blend gains "
            "little from the pair; good members with lower error correlation are what a blend needs.",
            "Correlations need at least two finished members.")

    s = page.section("blend", "Blend: where the weight goes")
    if b is None:
        s.append(note("No fitted blend yet (run `fb3stack blend`)."))
    else:
        _figure(s, figures.blend_weights(b.explanation), "blend weights",
                "What the saved blend learned when refitted on every OOF row: one column per trait. Weights near "
                "zero mean the member is not used for that trait; for stackers the values are coefficients or "
                "split shares, not weights summing to one.",
                f"The chosen method '{b.chosen}' exposes no per-member weights or importances.")
        s.append(f'<p class="meta">members: {html.escape(", ".join(b.spec.get("members", [])))}; outer folds: '
                 f'{html.escape(str(b.spec.get("outer", "")))}</p>')

    s = page.section("methods", "Blend methods: in-sample vs nested CV")
    if b is None or b.table is None:
        s.append(note("No blend table yet."))
    else:
        n_methods = int((b.table["kind"].astype(str) != "member").sum()) if "kind" in b.table else 0
        honest_note = (f"'{b.honest_name}' scores the whole choice of method on held-out rows, so its nested score "
                       "is the honest estimate of the saved blend. " if b.honest_name != b.chosen else
                       f"The chosen method is the best nested score of {n_methods}; picking the best of several is "
                       "itself slightly optimistic, more so the closer the scores. ")
        _figure(s, figures.methods(b.table, b.chosen, b.honest_name), "blend methods",
                "Hollow dots are in-sample scores (fitted and scored on the same rows: optimistic); filled dots "
                "are nested-CV scores with their spread over repeats. Only the nested score is honest; a big gap "
                f"means the method overfits the OOF rows. {honest_note}The red dotted line is the best single "
                "member: a method right of it is worse than not blending.", "The blend table has no methods.")
        info = b.spec.get("uncertainty") or {}
        if info:
            _figure(s, figures.gain_intervals(b.table, b.chosen, b.honest_name), "gain intervals",
                    f"Each method's nested MCRMSE minus the plain mean's (left) and the best single member's "
                    f"({info.get('best_member')}, right); the bar is its {100 * info.get('level', 0.95):g}% interval "
                    f"from a paired bootstrap over the {info.get('n_essays')} essays of the held-out predictions "
                    f"({info.get('n_boot')} resamples, seed {info.get('seed')}). Green: the whole interval is below "
                    "0, a gain that redrawing the essays would rarely undo; grey: it crosses 0, so the gain may be "
                    "chance; red: worse on almost every resample.", "The blend table has no intervals.")
        if b.table is not None and "loo_delta" in b.table:
            _figure(s, figures.leave_one_out(b.table, b.chosen), "leave one member out",
                    f"How much worse '{b.chosen}' scores (nested CV) when refitted without each member: a long blue "
                    "bar is a member the blend relies on, a bar near 0 one it could drop, an orange bar one it "
                    "is better without.", "No leave-one-out column (one member, or leave_one_out is off).")
        shown = methods_shown(b.table)
        if "seconds" in shown:
            shown = shown.assign(seconds=shown["seconds"].map(lambda v: f"{v:.2f}"))
        s.append(table(shown,
                       highlight=lambda r: str(r["name"]) in (b.chosen, b.honest_name), digits=5))

    pred, who = None, ""
    if b is not None and b.oof is not None:
        pred, who = b.oof, f"blend '{b.name}' ({b.chosen}), nested-CV held-out predictions"
    elif best is not None:
        pred, who = data.oofs[best.name], f"best member {best.name}, OOF predictions"
    s = page.section("errors", "Errors: residuals against the true score and essay length")
    if pred is None or labels is None:
        s.append(note(data.notes[0] if labels is None and data.notes else "Nothing to score yet."))
    else:
        _figure(s, figures.residuals_vs_truth(pred, labels, who), "residuals against true score",
                "Boxes of predicted minus true score for each true score. Boxes above zero on the left and below "
                "zero on the right are regression to the mean, the known failure of FB3 models: weak essays are "
                "over-scored and strong ones under-scored.", "No prediction matches a labelled essay.")
        words = labels[TEXT_COL].astype(str).str.split().str.len()
        _figure(s, figures.residuals_vs_length(pred, labels, words, who), "residuals against essay length",
                "Grey dots are essays; the red line is the mean residual and the blue dashed line the RMSE per "
                "length decile. A sloped red line means length biases the predictions; a rising blue line means "
                "the model is less sure about very short or very long essays.",
                "No prediction matches a labelled essay.")
        s = page.section("distributions", "Predicted vs true score distributions")
        _figure(s, figures.distributions(pred, labels, who), "score distributions",
                "Bars are the true scores (on the 0.5 grid), the orange line the predictions. A predicted "
                "distribution narrower than the true one (smaller sd in the title) is the same shrinkage toward "
                "the mean, seen per trait.", "No prediction matches a labelled essay.")

    s = page.section("training", "Training curves (transformer members)")
    if not data.histories:
        s.append(note("No member wrote a history.csv: the training curves apply to transformer members only."))
    for name, runs in data.histories.items():
        _figure(s, figures.training_curves(name, runs), f"training curves of {name}",
                "One line per fold. Validation MCRMSE should fall and flatten; a rise after the best checkpoint "
                "(star) is overfitting that early stopping caught. Training loss falling while validation rises "
                "means too many epochs or too high a learning rate (right panel).",
                f"{name}: history.csv has no loss, MCRMSE or lr column.")
    return render(page, data)


def render(page: Page, data: ReportData) -> str:
    nav = " ".join(f'<a href="#{a}">{html.escape(t.split(":")[0])}</a>' for a, t, _ in page.sections)
    body = [f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'
            for anchor, title, parts in page.sections]
    timings = ", ".join(f"{k} {format_seconds(v)}" for k, v in data.timings.items())
    notes = "".join(note(n) for n in data.notes)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>fb3stack report: {html.escape(data.root.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>fb3stack report</h1><p class=\"meta\">workspace {html.escape(str(data.root))} · made {stamp} · "
        f"fb3stack {__version__}</p><div class=\"headline\">{html.escape(headline(data))}</div>"
        + (f"<p class=\"meta\">wall time: {html.escape(timings)}</p>" if timings else "")
        + notes + f"<nav>{nav}</nav>" + "".join(body) + "</body></html>\n"
    )


def write_html(data: ReportData, path: Path) -> Path:
    write_text(path, build(data))
    logger.info("wrote %s", path)
    return path
