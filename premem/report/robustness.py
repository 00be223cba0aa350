"""The robustness experiment's figure and report (`premem experiment robustness`, premem.recipes.robustness).

The figure: at each run's last checkpoint, every trained example's robustness (accuracy of its samples under
perturbation) against each per-example predictor (premem.metrics.robustness.PREDICTORS), points and mean ± s.e.
by bins of the predictor, pooled over runs; the same against pre-memorization accuracy for the examples answered
right in every sample (train accuracy 1); and each run's Spearman coefficients side by side. The page: what was
run, the comparison (is pre-memorization accuracy the better predictor?), the correlation tables, the figure.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from premem.files import atomic_path
from premem.metrics.robustness import POOLED, PREDICTORS, SCOPES, binned, scope
from premem.report.page import PAGE, figure, section
from premem.report.plots import new_figure, short_names

COLOURS = {"premem": "tab:blue", "train_acc": "tab:orange", "log_ppl": "tab:gray"}


def robustness_figure(frame: pd.DataFrame, corr: pd.DataFrame) -> Figure:
    """frame: premem.metrics.robustness.examples; corr: its correlations."""
    panels = [("last", p) for p in PREDICTORS] + [("solved", "premem")]
    fig = new_figure(figsize=(3.6 * (len(panels) + 1), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels) + 1)
    for ax, (at, p) in zip(axes, panels):
        points(ax, scope(frame, at), p)
        rho = corr.query("examples == @at and runs == @POOLED and predictor == @p")["spearman"]
        title = PREDICTORS[p] if at == "last" else "answered right every time:\n" + PREDICTORS[p]
        ax.set_title(f"{title}\nSpearman {rho.iloc[0]:+.2f}" if len(rho) else title, fontsize=9)
        ax.set_xlabel(PREDICTORS[p], fontsize=8)
    axes[0].set_ylabel("robustness (accuracy under perturbation)", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    per_run(axes[-1], corr)
    return fig


def points(ax, rows: pd.DataFrame, p: str) -> None:
    """One point per example (jittered: accuracies over k samples sit on a few values), and mean ± s.e. by bins."""
    ok = rows[[p, "robustness"]].dropna()
    rng = np.random.default_rng(0)
    span = max(float(np.ptp(ok[p])), 1e-9) if len(ok) else 1.0
    ax.scatter(ok[p] + rng.normal(0, 0.01 * span, len(ok)), ok["robustness"] + rng.normal(0, 0.01, len(ok)),
               s=6, alpha=0.25, color=COLOURS[p], linewidths=0)
    if len(ok):
        b = binned(ok, p)
        ax.errorbar(b["x"], b["mean"], yerr=b["se"].fillna(0), color="black", marker="o", ms=4, capsize=2,
                    label="mean ± s.e. per bin")
    ax.set_ylim(-0.05, 1.05)


def per_run(ax, corr: pd.DataFrame) -> None:
    """Spearman coefficient of each predictor with robustness, per run, at its last checkpoint."""
    rows = corr.query("examples == 'last' and runs != @POOLED")
    runs = sorted(rows["runs"].unique())
    names = short_names(runs)
    width = 0.8 / len(PREDICTORS)
    for j, p in enumerate(PREDICTORS):
        values = rows[rows["predictor"] == p].set_index("runs")["spearman"].reindex(runs)
        ax.bar(np.arange(len(runs)) + (j - (len(PREDICTORS) - 1) / 2) * width, values, width, color=COLOURS[p],
               label=p)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(np.arange(len(runs)), [names[r] for r in runs], rotation=60, ha="right", fontsize=6)
    ax.set_title("Spearman with robustness, per run", fontsize=9)
    ax.legend(fontsize=7)


def table_html(df: pd.DataFrame, digits: int = 3) -> str:
    p_values = {c: "{:.1e}".format for c in df.columns if c.endswith("_p")}  # 0.000 would hide how small
    return df.to_html(index=False, classes="grid", border=0, na_rep="–", float_format=lambda v: f"{v:.{digits}f}",
                      formatters=p_values)


def build_report(out: Path, frame: pd.DataFrame, corr: pd.DataFrame, comparison: pd.DataFrame,
                 accuracy: pd.DataFrame, facts: dict[str, str], fig: Figure) -> Path:
    """Write the self-contained page to `out`; accuracy: premem.metrics.robustness.by_perturbation; facts: what was
    run (label -> text)."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts.items())
    tables = {at: corr[corr["examples"] == at].drop(columns="examples") for at in SCOPES}
    means = frame[frame["last"]].groupby("run", as_index=False).agg(
        step=("step", "first"), examples=("example_id", "size"), robustness=("robustness", "mean"),
        train_acc=("train_acc", "mean"), premem=("premem", "mean"), memorized=("memorized", "mean"))
    parts = [
        "<h1>premem robustness experiment</h1>\n<p>Kang et al.'s per-example probe: every training prompt is "
        "followed by a perturbation (the model continues after it) and the answers sampled so are graded; an "
        "example's robustness is their accuracy. Does the example's pre-memorization train accuracy predict it "
        "better than its train accuracy and its gold-trace perplexity?</p>\n"
        f'<table class="facts">{rows}</table>',
        section("Is pre-memorization accuracy the better predictor?", table_html(comparison) + (
            '<p class="caption">At each run\'s last checkpoint, over the examples of every run: |Spearman| of '
            "pre-memorization accuracy with robustness minus that of each other predictor, with a 95% interval from "
            "resampling examples; runs_ahead / runs_tied: in how many runs its |Spearman| is the larger / the "
            "same.</p>")),
        section("Robustness against each predictor", figure(fig, (
            "Each run's last checkpoint; one point per training example (jittered), black: mean ± standard error "
            "per bin of the predictor, pooled over runs. Fourth: only the examples whose every unperturbed sample "
            "is right (train accuracy 1, which cannot tell them apart). Right: the Spearman coefficient of each "
            "predictor per run."))),
        section("What each perturbation costs", table_html(accuracy) + (
            '<p class="caption">Accuracy of the samples to the training prompts at each run\'s last checkpoint, '
            "as they are and followed by each perturbation (every run's trained examples).</p>")),
        section("Correlations at each run's last checkpoint", table_html(tables["last"])),
        section("Among the examples answered right every time (last checkpoint, train accuracy 1)", table_html(
            tables["solved"][tables["solved"]["predictor"] != "train_acc"])),
        section("Correlations over every checkpoint", table_html(tables["all"])),
        section("Means per run at its last checkpoint", table_html(means)),
    ]
    page = PAGE.format(title=escape(f"premem robustness experiment: {out.parent.resolve().name}"),
                       body="\n".join(parts))
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
