"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed).

Each function takes plain data and returns a Figure, or None when the figure does not apply (one member has no
correlations, a CPU zoo has no training curves).
"""

from __future__ import annotations

import io
from functools import reduce

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fb3stack.constants import SCORE_MAX, SCORE_MIN, SCORE_STEP, TARGETS
from fb3stack.report.gather import BlendInfo, MemberInfo

BLUE, ORANGE, GREEN, GREY, RED = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f", "#d62728"
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # no Software/URL text chunk: the file must not mention any address
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _annotate(ax: Axes, im: object, values: np.ndarray, fmt: str) -> None:
    """Write each cell's value, white on dark cells and black on light ones."""
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            r, g, b, _ = im.cmap(im.norm(v))  # type: ignore[attr-defined]
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8, color="white" if dark else "black")


def leaderboard(members: list[MemberInfo], blend: BlendInfo | None) -> Figure | None:
    if not members:
        return None
    ms = sorted(members, key=lambda m: m.mcrmse, reverse=True)  # best at the top of a barh
    fig = new_figure(12, 1.6 + 0.45 * len(ms))
    ax, hm = fig.subplots(1, 2, width_ratios=[1.1, 1])
    y = np.arange(len(ms))
    ax.barh(y, [m.mcrmse for m in ms], color=BLUE, alpha=0.35, height=0.6, label="OOF MCRMSE (all folds)")
    for i, m in enumerate(ms):
        if m.fold_mcrmse:
            ax.plot([min(m.fold_mcrmse), max(m.fold_mcrmse)], [i, i], color=BLUE, lw=1)
            ax.scatter(m.fold_mcrmse, [i] * len(m.fold_mcrmse), s=14, color=BLUE, zorder=3,
                       label="single folds" if i == 0 else None)
        ax.text(m.mcrmse, i + 0.32, f"{m.mcrmse:.4f}", va="bottom", ha="center", fontsize=8)
    lows = [min([m.mcrmse, *m.fold_mcrmse]) for m in ms]
    highs = [max([m.mcrmse, *m.fold_mcrmse]) for m in ms]
    if blend is not None and blend.honest_score is not None:
        ax.axvline(blend.honest_score, color=GREEN, ls="--", lw=1.5,
                   label=f"blend, honest ({blend.honest_score:.4f})")
        lows.append(blend.honest_score)
    span = max(highs) - min(lows)
    ax.set_xlim(min(lows) - 0.15 * span - 1e-3, max(highs) + 0.1 * span + 1e-3)
    ax.set_yticks(y, [f"{m.name}\n({m.kind})" if m.kind and m.kind != m.name else m.name for m in ms], fontsize=9)
    ax.set_ylim(-0.6, len(ms) - 0.2)
    ax.set_xlabel("MCRMSE (lower is better)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower left", ncol=3, fontsize=8, frameon=False)
    ax.set_title("OOF MCRMSE and fold spread")
    vals = np.array([[m.rmse[t] for t in TARGETS] for m in ms])
    im = hm.imshow(vals, cmap="viridis_r", aspect="auto")
    _annotate(hm, im, vals, ".3f")
    hm.set_xticks(range(len(TARGETS)), TARGETS, rotation=20, fontsize=9)
    hm.set_yticks(y, [m.name for m in ms], fontsize=9)
    hm.set_title("RMSE per trait (darker = worse)")
    fig.colorbar(im, ax=hm, shrink=0.8)
    return fig


def correlations(oofs: dict[str, pd.DataFrame], y: pd.DataFrame | None = None) -> Figure | None:
    """Pearson correlation of the members' OOF predictions per trait, averaged; and of their errors."""
    names = list(oofs)
    if len(names) < 2:
        return None
    ids = reduce(pd.Index.intersection, [oof.index for oof in oofs.values()])
    P = np.stack([oofs[n].loc[ids, list(TARGETS)].to_numpy(dtype=float) for n in names])  # (m, n, 6)
    per_trait = [np.corrcoef(P[:, :, k]) for k in range(len(TARGETS))]
    panels = [("averaged over traits", np.mean(per_trait, axis=0))] + list(zip(TARGETS, per_trait))
    if y is not None and set(ids) <= set(y.index):
        E = P - y.loc[ids, list(TARGETS)].to_numpy(dtype=float)[None]
        panels.append(("errors (pred − true), averaged", np.mean([np.corrcoef(E[:, :, k]) for k in range(6)], 0)))
    ncol = 4
    nrow = int(np.ceil(len(panels) / ncol))
    size = max(2.6, 0.5 * len(names) + 1.2)
    fig = new_figure(min(14, ncol * size + 1), nrow * size + 0.4)
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    short = [n if len(n) <= 18 else n[:17] + "…" for n in names]
    lo = min(float(np.nanmin(c)) for _, c in panels)
    for ax, (title, c) in zip(axes, panels):
        im = ax.imshow(c, vmin=min(lo, 0.5), vmax=1.0, cmap="magma")
        if len(names) <= 12:
            _annotate(ax, im, c, ".2f")
        ax.set_xticks(range(len(names)), short, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), short, fontsize=8)
        ax.set_title(title, fontsize=10, fontweight="bold" if title.startswith("averaged") else "normal")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=list(axes[:len(panels)]), shrink=0.6, label="Pearson r")
    return fig


def blend_weights(explanation: tuple[str, pd.DataFrame] | None) -> Figure | None:
    if explanation is None:
        return None
    title, df = explanation
    vals = df.to_numpy(dtype=float)
    fig = new_figure(min(12, 3 + 1.2 * vals.shape[1]), 1.4 + 0.38 * vals.shape[0])
    ax = fig.subplots()
    signed = bool((vals < 0).any())
    bound = float(np.nanmax(np.abs(vals))) or 1.0
    im = ax.imshow(vals, cmap="RdBu_r" if signed else "Blues", aspect="auto",
                   vmin=-bound if signed else 0.0, vmax=bound)
    _annotate(ax, im, vals, ".2f" if bound >= 0.01 else ".1e")
    ax.set_xticks(range(vals.shape[1]), df.columns, fontsize=9)
    ax.set_yticks(range(vals.shape[0]), df.index, fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def methods(table: pd.DataFrame, chosen: str, honest: str) -> Figure | None:
    """Every blend method's in-sample vs nested MCRMSE, best nested at the top; the chosen and honest rows marked."""
    if table is None or not {"name", "kind", "in_sample", "nested"} <= set(table.columns):
        return None
    rows = table[table["kind"].astype(str) != "member"].sort_values("nested", ascending=False, kind="stable")
    if rows.empty:
        return None
    best_member = table[table["kind"].astype(str) == "member"]["nested"].min()
    fig = new_figure(12, 1.5 + 0.36 * len(rows))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ins, nes = rows["in_sample"].to_numpy(float), rows["nested"].to_numpy(float)
    std = rows["nested_std"].to_numpy(float) if "nested_std" in rows else np.zeros(len(rows))
    ax.hlines(y, np.minimum(ins, nes), np.maximum(ins, nes), color=GREY, lw=1)
    ax.scatter(ins, y, facecolors="white", edgecolors=ORANGE, s=40, zorder=3, label="in-sample (optimistic)")
    ax.errorbar(nes, y, xerr=np.where(std > 0, std, np.nan), fmt="o", color=BLUE, ms=6, zorder=4, capsize=3,
                label="nested CV (honest)")
    if np.isfinite(best_member):
        ax.axvline(best_member, color=RED, ls=":", lw=1.2, label=f"best single member ({best_member:.4f})")
    names = rows["name"].astype(str).tolist()
    tags = [("  ◀ chosen" if n == chosen else "") + ("  ◀ honest score" if n == honest != chosen else "")
            for n in names]
    ax.set_yticks(y, [n + tag for n, tag in zip(names, tags)], fontsize=9)
    for i, (tick, name) in enumerate(zip(ax.get_yticklabels(), names)):
        if name in (chosen, honest):
            ax.axhspan(i - 0.45, i + 0.45, color=GREEN, alpha=0.15, lw=0)
            tick.set_fontweight("bold")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("MCRMSE (lower is better)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower left", ncol=3, fontsize=8, frameon=False)
    ax.set_title("Blend methods: in-sample vs nested CV")
    return fig


def gain_intervals(table: pd.DataFrame, chosen: str, honest: str) -> Figure | None:
    """Each method's nested MCRMSE minus the plain mean's and the best member's, with its bootstrap interval."""
    panels = [c for c in ("vs_mean", "vs_best") if {c, f"{c}_lo", f"{c}_hi"} <= set(table.columns)]
    if not panels or "kind" not in table:
        return None
    rows = table[table["kind"].astype(str) != "member"].sort_values("nested", ascending=False, kind="stable")
    if rows.empty:
        return None
    fig = new_figure(12, 1.6 + 0.36 * len(rows))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    y = np.arange(len(rows))
    names = rows["name"].astype(str).tolist()
    titles = {"vs_mean": "minus the plain mean", "vs_best": "minus the best single member"}
    for ax, col in zip(axes, panels):
        d, lo, hi = (rows[c].to_numpy(float) for c in (col, f"{col}_lo", f"{col}_hi"))
        sure = hi < 0  # the whole interval below 0: better on (almost) every resample of the essays
        worse = lo > 0
        colors = np.where(sure, GREEN, np.where(worse, RED, GREY))
        ax.hlines(y, lo, hi, colors=colors, lw=2.5)
        ax.scatter(d, y, c=colors, s=30, zorder=3)
        ax.axvline(0.0, color="black", lw=1)
        for i, name in enumerate(names):
            if name in (chosen, honest):
                ax.axhspan(i - 0.45, i + 0.45, color=GREEN, alpha=0.12, lw=0)
        ax.set_xlabel("difference in nested MCRMSE (negative = better)")
        ax.set_title(titles[col], fontsize=10)
    axes[0].set_yticks(y, [n + ("  ◀ chosen" if n == chosen else "") for n in names], fontsize=9)
    axes[0].set_ylim(-0.6, len(rows) - 0.4)
    fig.suptitle("How sure each gain is: difference with its paired-bootstrap interval over essays", fontsize=11)
    return fig


def leave_one_out(table: pd.DataFrame, chosen: str) -> Figure | None:
    """Per member: how much the chosen method's nested MCRMSE rises without it (what the member adds)."""
    if not {"loo_delta", "kind", "name"} <= set(table.columns):
        return None
    rows = table[(table["kind"].astype(str) == "member") & table["loo_delta"].notna()]
    if rows.empty:
        return None
    rows = rows.sort_values("loo_delta", kind="stable")  # largest at the top of a barh
    fig = new_figure(9, 1.4 + 0.3 * len(rows))
    ax = fig.subplots()
    d = rows["loo_delta"].to_numpy(float)
    ax.barh(np.arange(len(rows)), d, color=np.where(d > 0, BLUE, ORANGE), height=0.6)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(np.arange(len(rows)), rows["name"].astype(str).tolist(), fontsize=8)
    ax.set_xlabel(f"nested MCRMSE of '{chosen}' without the member minus with it (> 0: the member helps)")
    ax.set_title("Leave one member out", fontsize=10)
    return fig


def _trait_grid(height: float = 6.4, **share: bool) -> tuple[Figure, np.ndarray]:
    """One panel per trait, 2 x 3; `share`: subplots' sharex / sharey."""
    fig = new_figure(13, height)
    return fig, np.asarray(fig.subplots(2, 3, **share)).ravel()


def _finish_trait_grid(fig: Figure, axes: np.ndarray, ylabel: str, title: str, legend_loc: str = "best") -> Figure:
    """The y label on the left column, the legend in the first panel, one title over the 2 x 3 grid."""
    for ax in (axes[0], axes[3]):
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8, loc=legend_loc)
    fig.suptitle(title, fontsize=11)
    return fig


def residuals_vs_truth(pred: pd.DataFrame, y: pd.DataFrame, who: str) -> Figure | None:
    ids = pred.index.intersection(y.index)
    if not len(ids):
        return None
    fig, axes = _trait_grid(sharey=True)
    grid = np.arange(SCORE_MIN, SCORE_MAX + SCORE_STEP / 2, SCORE_STEP)
    for ax, t in zip(axes, TARGETS):
        true = y.loc[ids, t].to_numpy(float)
        res = pred.loc[ids, t].to_numpy(float) - true
        present = [g for g in grid if np.isclose(true, g).any()]
        groups = [res[np.isclose(true, g)] for g in present]
        ax.boxplot(groups, positions=present, widths=0.35, showfliers=False, patch_artist=True, manage_ticks=False,
                   boxprops={"facecolor": "#c6dbef", "edgecolor": BLUE}, medianprops={"color": BLUE})
        ax.plot(present, [g.mean() for g in groups], "o-", color=RED, ms=3, lw=1, label="mean residual")
        ax.axhline(0, color="black", lw=0.8)
        counts = [len(g) for g in groups]
        for x, c in zip(present, counts):
            ax.text(x, 0.97, str(c), transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=6,
                    color=GREY)
        ax.set_xticks(grid[::2])
        ax.set_xlim(SCORE_MIN - 0.4, SCORE_MAX + 0.4)
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("true score")
    return _finish_trait_grid(fig, axes, "predicted − true", f"Residual against the true score: {who}  "
                              "(small grey numbers: essays per score)", "lower left")


def residuals_vs_length(pred: pd.DataFrame, y: pd.DataFrame, words: pd.Series, who: str) -> Figure | None:
    ids = pred.index.intersection(y.index)
    if not len(ids):
        return None
    n = words.loc[ids].to_numpy(float)
    edges = np.unique(np.quantile(n, np.linspace(0, 1, 11)))
    bins = np.clip(np.searchsorted(edges, n, side="right") - 1, 0, len(edges) - 2)
    centers = np.array([np.median(n[bins == b]) for b in range(len(edges) - 1)])
    fig, axes = _trait_grid(sharey=True)
    for ax, t in zip(axes, TARGETS):
        res = pred.loc[ids, t].to_numpy(float) - y.loc[ids, t].to_numpy(float)
        ax.scatter(n, res, s=4, alpha=0.25, color=GREY, lw=0)
        mean = np.array([res[bins == b].mean() for b in range(len(edges) - 1)])
        rmse = np.array([np.sqrt(np.mean(res[bins == b] ** 2)) for b in range(len(edges) - 1)])
        ax.plot(centers, mean, "o-", color=RED, ms=3, lw=1.2, label="mean residual per length decile")
        ax.plot(centers, rmse, "s--", color=BLUE, ms=3, lw=1, label="RMSE per length decile")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("essay length (words, log scale)")
    return _finish_trait_grid(fig, axes, "predicted − true", f"Residual against essay length: {who}", "lower left")


def distributions(pred: pd.DataFrame, y: pd.DataFrame, who: str) -> Figure | None:
    ids = pred.index.intersection(y.index)
    if not len(ids):
        return None
    fig, axes = _trait_grid(6.0, sharex=True)
    grid = np.arange(SCORE_MIN, SCORE_MAX + SCORE_STEP / 2, SCORE_STEP)
    for ax, t in zip(axes, TARGETS):
        true = y.loc[ids, t].to_numpy(float)
        p = pred.loc[ids, t].to_numpy(float)
        counts = np.array([np.isclose(true, g).sum() for g in grid]) / len(true) / SCORE_STEP
        ax.bar(grid, counts, width=SCORE_STEP * 0.9, color="#c6dbef", edgecolor=BLUE, label="true")
        ax.hist(p, bins=np.arange(SCORE_MIN, SCORE_MAX + 0.1001, 0.1), density=True, histtype="step", lw=1.8,
                color=ORANGE, label="predicted")
        ax.set_title(f"{t}: sd true {true.std():.2f}, predicted {p.std():.2f}", fontsize=10)
        ax.set_xlabel("score")
    return _finish_trait_grid(fig, axes, "density", f"Predicted vs true score distributions: {who}")


CURVES = [("train_loss", "training loss"), ("valid_mcrmse", "validation MCRMSE"), ("lr", "learning rate")]


def training_curves(member: str, runs: list[tuple[int, pd.DataFrame]]) -> Figure | None:
    panels = [(c, title) for c, title in CURVES if any(c in h.columns for _, h in runs)]
    if not panels:
        return None
    fig = new_figure(13, 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    colors = [BLUE, ORANGE, GREEN, RED, "#9467bd", "#8c564b", "#e377c2", GREY]
    for ax, (col, title) in zip(axes, panels):
        for i, (fold, h) in enumerate(runs):
            if col not in h.columns:
                continue
            c = colors[i % len(colors)]
            ax.plot(h["step"], h[col], "-", color=c, lw=1.2, marker="." if len(h) < 40 else None,
                    label=f"fold {fold}")
            if col == "valid_mcrmse" and len(h):
                best = h.loc[h[col].idxmin()]
                ax.scatter([best["step"]], [best[col]], marker="*", s=90, color=c, zorder=4, edgecolors="black",
                           lw=0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        if col == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Training curves: {member} (star: best checkpoint of each fold)", fontsize=11)
    return fig
