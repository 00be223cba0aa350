"""Figures, drawn without pyplot: each is a `matplotlib.figure.Figure` rendered by the Agg canvas.

No display is needed and the pixels are the same everywhere; nothing here touches pyplot's state or
matplotlib's backend, so importing premem leaves a notebook's inline plots alone (and a figure is freed
when it is no longer referenced: there is no pyplot registry to close it in).

Each figure function returns a Figure; `save` writes it to a file (atomically), `png_base64` turns it
into the text of a data: URL for the HTML report. Runs keep one colour and marker in every figure
(`run_styles`), and long run names are shortened the same way everywhere (`short_names`), so a reader
can follow a run from figure to figure.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from premem.files import atomic_path
from premem.metrics.predict import Prediction

MARKERS = "osD^v"  # with tab20's 20 colours: 100 runs before a (colour, marker) pair repeats
SERIES = {  # the per-checkpoint curves of accuracy_curves: column -> (label, colour, line style)
    "premem": ("pre-memorization train acc", "tab:blue", "-"),
    "train_acc": ("train acc", "tab:orange", "--"),
    "test_acc": ("test acc", "tab:green", "-"),
}


def new_figure(**kw) -> Figure:
    """A Figure on its own Agg canvas: drawn and saved without pyplot or a backend switch."""
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def run_styles(runs: list[str]) -> dict[str, dict]:
    """One colour and marker per run; tab20 because runs often outnumber tab10's colours."""
    colors = matplotlib.colormaps["tab20"].colors
    return {run: {"color": colors[i % 20], "marker": MARKERS[(i // 20 + i) % len(MARKERS)]} for i, run in enumerate(runs)}


def short_names(runs: list[str]) -> dict[str, str]:
    """Drop the '_'-separated words every run name shares at its start and end (gsm8k_orig_..._bs128).

    Legends with 13 names of 40 characters crowd out the plot; the full names are in the runs table.
    Names stay as they are when shortening would leave one empty or make two equal.
    """
    words = [r.split("_") for r in runs]
    if len(runs) < 2:
        return {r: r for r in runs}
    head = 0
    while all(len(w) > head for w in words) and len({w[head] for w in words}) == 1:
        head += 1
    tail = 0
    while all(len(w) > head + tail for w in words) and len({w[-1 - tail] for w in words}) == 1:
        tail += 1
    short = ["_".join(w[head : len(w) - tail]) for w in words]
    if not all(short) or len(set(short)) < len(short):
        return {r: r for r in runs}
    return dict(zip(runs, short))


def _grid(n: int, ncols: int = 5, size: tuple[float, float] = (2.6, 2.0), **kw):
    """Small multiples: one panel per run, unused panels hidden.

    Margins are set by hand, in inches: constrained layout triples the drawing time of a 13-panel grid.
    """
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    width, height = size[0] * ncols + 0.7, size[1] * nrows + 0.9
    fig = new_figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.6 / height, top=1 - 0.55 / height,
                        wspace=0.12, hspace=0.45)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def accuracy_curves(points: pd.DataFrame, runs: list[str], labels: dict[str, str]) -> Figure:
    """Per run: pre-memorization, train and (when scored) test accuracy at each checkpoint."""
    fig, axes = _grid(len(runs), sharey=True)
    has_test = "test_acc" in points and points["test_acc"].notna().any()
    for ax, run in zip(axes, runs):
        g = points[points["run"] == run].sort_values("step")
        for col, (label, color, style) in SERIES.items():
            if col == "test_acc" and not has_test:
                continue
            ax.plot(g["step"], g[col], color=color, linestyle=style, marker="o", markersize=3, linewidth=1.2, label=label)
        ax.set_title(labels[run], fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        _integer_steps(ax, g["step"])
    _label_grid(fig, "checkpoint step", "accuracy")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncols=len(names), fontsize=8, frameon=False)
    return fig


def premem_histograms(final: pd.DataFrame, runs: list[str], labels: dict[str, str]) -> Figure:
    """Per run, at its last checkpoint: how pre-memorization accuracy spreads over its training examples.

    Plain train accuracy is outlined behind it: the gap is what memorized traces take away.
    Bars are fractions of the run's examples, so runs trained on different amounts of data compare.
    """
    fig, axes = _grid(len(runs), sharey=True)
    bins = np.linspace(-0.05, 1.05, 12)  # centred on 0, 0.1, ..., 1: accuracies are fractions of k samples
    for ax, run in zip(axes, runs):
        g = final[final["run"] == run]
        weights = np.full(len(g), 1 / max(len(g), 1))
        ax.hist(g["acc"], bins=bins, weights=weights, histtype="step", color="tab:orange", linewidth=1.2, label="train acc")
        ax.hist(g["premem"], bins=bins, weights=weights, color="tab:blue", alpha=0.7, label="pre-memorization acc")
        ax.set_title(f"{labels[run]} (step {int(g['step'].iloc[0])})" if len(g) else labels[run], fontsize=8)
        ax.set_xlim(bins[0], bins[-1])
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _label_grid(fig, "per-example accuracy at the run's last checkpoint", "fraction of examples")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], names[::-1], loc="upper center", ncols=2, fontsize=8, frameon=False)
    return fig


def memorized_curves(points: pd.DataFrame, runs: list[str], labels: dict[str, str], tau: float) -> Figure:
    """Fraction of each run's training examples memorized (log(log(ppl)) < tau) at each checkpoint."""
    fig = new_figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.subplots()
    styles = run_styles(runs)
    for run in runs:
        g = points[points["run"] == run].sort_values("step")
        ax.plot(g["step"], g["frac_memorized"], linewidth=1.2, markersize=4, label=labels[run], **styles[run])
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("fraction of training examples memorized")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"memorized: log(log(ppl)) < {tau:g}, i.e. perplexity < {math.exp(math.exp(tau)):.4f}", fontsize=9)
    ax.grid(alpha=0.3)
    _integer_steps(ax, points["step"])
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


def scatter_figure(pred: Prediction, runs: list[str] | None = None, labels: dict[str, str] | None = None) -> Figure:
    """Predicted against actual test accuracy, one marker per checkpoint, one colour per run.

    Predictions are the leave-one-run-out ones: each run as if it were new.
    """
    pts = pred.points.dropna(subset=["test_acc"])
    runs = runs or sorted(pts["run"].unique())
    labels = labels or {r: r for r in runs}
    styles = run_styles(runs)
    fig = new_figure(figsize=(7.4, 5.2), layout="constrained")
    ax = fig.subplots()
    for run in runs:
        g = pts[pts["run"] == run].sort_values("step")
        if len(g):
            ax.plot(g["test_acc"], g["predicted_loro"], linestyle="-", linewidth=0.8, markersize=5, label=labels[run], **styles[run])
    lo = min(pts["test_acc"].min(), pts["predicted_loro"].min()) - 0.02
    hi = max(pts["test_acc"].max(), pts["predicted_loro"].max()) + 0.02
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("actual test accuracy")
    ax.set_ylabel("predicted test accuracy (run held out)")
    ax.set_title(
        f"pre-memorization accuracy, tau={pred.tau:g}: R²={pred.r2:.3f}, "
        f"leave-one-run-out R²={pred.r2_loro:.3f}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


def forecast_curves(table: pd.DataFrame, runs: list[str], labels: dict[str, str], level: float) -> Figure:
    """Per run: predicted test accuracy at each checkpoint with its band, and the real test accuracy where scored.

    table: premem.metrics.calibration.predict_from_fit's (run, step, predicted, lower, upper, test_acc, in_fit).
    A run with one checkpoint so far gets an error bar rather than an invisible band of zero width.
    """
    fig, axes = _grid(len(runs), sharey=True)
    values = table[["lower", "upper", "test_acc"]].to_numpy(dtype=float)
    lo, hi = (np.nanmin(values), np.nanmax(values)) if np.isfinite(values).any() else (0.0, 1.0)
    pad = max(0.05, 0.1 * (hi - lo))  # zoomed on the predictions: a band of ±0.02 is invisible on [0, 1]
    for ax, run in zip(axes, runs):
        g = table[table["run"] == run].sort_values("step")
        ax.fill_between(g["step"], g["lower"], g["upper"], color="tab:purple", alpha=0.18, linewidth=0,
                        label=f"{level:.0%} band")
        # the band is clipped to [0, 1] and the line is not: a prediction below 0 has no bar below it
        below, above = (g["predicted"] - g["lower"]).clip(lower=0), (g["upper"] - g["predicted"]).clip(lower=0)
        ax.errorbar(g["step"], g["predicted"], yerr=[below, above],
                    color="tab:purple", marker="o", markersize=3, linewidth=1.2, capsize=2, elinewidth=0.6,
                    label="predicted test acc")
        scored = g.dropna(subset=["test_acc"])
        ax.plot(scored["step"], scored["test_acc"], color="tab:green", linestyle="none", marker="x", markersize=5,
                label="actual test acc")
        ax.set_title(labels[run] + (" (in the fit)" if g["in_fit"].any() else ""), fontsize=8)
        ax.set_ylim(max(-0.03, lo - pad), min(1.03, hi + pad))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        _integer_steps(ax, g["step"])
    _label_grid(fig, "checkpoint step", "test accuracy")
    handles = [Line2D([], [], color="tab:purple", marker="o", markersize=3, label="predicted test acc"),
               Patch(color="tab:purple", alpha=0.18, label=f"{level:.0%} band"),
               Line2D([], [], color="tab:green", linestyle="none", marker="x", markersize=5, label="actual test acc")]
    fig.legend(handles=handles, loc="upper center", ncols=3, fontsize=8, frameon=False)
    return fig


def learning_curves(curve: pd.DataFrame, strategies: list[str] | None = None) -> Figure:
    """The curation experiment: test accuracy against training-set size per strategy, error bars one std over seeds.

    curve: premem.recipes.curation.curves' table (strategy, examples, mean, std, n_seeds). i.i.d. scaling
    (random) is the thick black line; the others are nudged sideways a little so their error bars do not overlap.
    """
    strategies = strategies or sorted(curve["strategy"].unique(), key=lambda s: (s != "random", s))
    others = [s for s in strategies if s != "random"]
    colors = matplotlib.colormaps["tab10"].colors
    slots = sorted(sorted(range(-len(others), len(others) + 1), key=abs)[1 : len(others) + 1])  # -2 -1 1 2: random at 0
    fig = new_figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for name in strategies:
        g = curve[curve["strategy"] == name].sort_values("examples")
        if name == "random":
            style, nudge = dict(lw=2.5, color="black", zorder=3), 1.0
        else:
            i = others.index(name)
            style, nudge = dict(lw=1.5, color=colors[i % 10]), 2 ** (0.03 * slots[i])  # slots of 0.03 octave
        ax.errorbar(g["examples"] * nudge, g["mean"], yerr=g["std"].fillna(0), marker="o", markersize=4, capsize=3,
                    label=name, **style)
    sizes = sorted(curve["examples"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(int(s)) for s in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


EMPHASISED_TYPES = {  # the three types the squeezing verdict rests on: thick, and the same colours everywhere
    "chosen": "tab:green",
    "rejected": "tab:red",
    "greedy": "tab:blue",
}


def type_styles(types: list[str]) -> dict[str, dict]:
    """One line style per probe response type, the same in every run's panel and in every report.

    chosen, rejected and greedy are thick and solid; the other types are thin and dashed, each with
    a colour fixed by its place in premem.data.probes.ALL_TYPES (unknown types share grey).
    """
    from premem.data.probes import ALL_TYPES

    others = [t for t in ALL_TYPES if t not in EMPHASISED_TYPES]
    palette = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i not in (0, 2, 3)]  # not blue, green, red
    palette.append((0.0, 0.0, 0.0))  # 8 colours for the 8 other types of ALL_TYPES
    styles = {}
    for t in types:
        if t in EMPHASISED_TYPES:
            styles[t] = dict(color=EMPHASISED_TYPES[t], linewidth=2.2, linestyle="-", marker="o", markersize=3.5, zorder=3)
        else:
            color = palette[others.index(t) % len(palette)] if t in others else "0.6"
            styles[t] = dict(color=color, linewidth=1.0, linestyle="--", marker=".", markersize=3, alpha=0.8, zorder=2)
    return styles


def probe_curves(curves: dict[str, pd.DataFrame], runs: list[str], labels: dict[str, str],
                 change: bool = False) -> Figure:
    """Per run: the mean over probe prompts of summed log π(response | prompt) per response type, by step.

    curves: run -> premem.metrics.probes.type_curves(scores, run). change=True draws each type's
    change since the run's first checkpoint instead, where the squeezing verdict's moves are read off.
    """
    types = list(dict.fromkeys(t for run in runs for t in curves[run].columns))
    styles = type_styles(types)
    fig, axes = _grid(len(runs), ncols=4, size=(3.2, 2.5))
    rows = math.ceil(len(types) / 6)  # the legend's rows: make room above the panels
    height = fig.get_figheight() + 0.2 * rows
    fig.set_figheight(height)
    fig.subplots_adjust(top=1 - (0.35 + 0.2 * rows) / height, bottom=0.6 / height)
    for ax, run in zip(axes, runs):
        table = curves[run]
        if change:
            table = table - table.iloc[0]
            ax.axhline(0, color="0.3", linewidth=0.8)
        for t in table.columns:
            ax.plot(table.index, table[t], label=t, **styles[t])
        ax.set_title(labels[run], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        _integer_steps(ax, pd.Series(table.index))
    _label_grid(fig, "checkpoint step",
                "change since the first checkpoint (nats)" if change else "mean summed log π(y|x) (nats)")
    # one legend for all panels, the emphasised types first
    order = sorted(types, key=lambda t: (t not in EMPHASISED_TYPES, list(EMPHASISED_TYPES).index(t) if t in EMPHASISED_TYPES else 0))
    handles = [Line2D([], [], label=t, **{k: v for k, v in styles[t].items() if k != "zorder"}) for t in order]
    fig.legend(handles=handles, loc="upper center", ncols=min(len(order), 6), fontsize=7, frameon=False)
    return fig


def prediction_scatter(pred: Prediction, out: str | Path) -> Path:
    """`premem predict --plot`: the scatter, written to a .png, .svg or .pdf file."""
    return save(scatter_figure(pred), out)


def save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=120)
    return out


def png_base64(fig: Figure, dpi: int = 100) -> str:
    """The figure as base64 PNG text, for an <img src="data:image/png;base64,...">."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label_grid(fig: Figure, xlabel: str, ylabel: str) -> None:
    fig.supxlabel(xlabel, fontsize=9, y=0.1 / fig.get_figheight())
    fig.supylabel(ylabel, fontsize=9, x=0.1 / fig.get_figwidth())


def _integer_steps(ax: Axes, steps: pd.Series) -> None:
    """Steps are integers; a run with one checkpoint would otherwise get ticks like 57.96."""
    ax.xaxis.get_major_locator().set_params(integer=True)
    if steps.nunique() == 1:
        s = float(steps.iloc[0])
        ax.set_xlim(s - 1, s + 1)
