"""The curation experiment's report: one self-contained HTML file beside its loops' records.

`premem experiment curation` writes it; `build_curation_report(out_dir)` rebuilds it from the
curation loops' records under out_dir alone (every <loop>/store/curation_rounds.parquet). Like the
score-store report (premem.report.html) everything is inline: the learning curves as a base64 PNG,
CSS in a <style> block, no scripts or links. The page: what was run (strategies, seeds, sizes); the
learning curves with error bars of one std over seeds; mean ± standard error of test accuracy per
strategy and size; the data-efficiency ratio against i.i.d. scaling (of the mean curves, and each
seed's own, mean ± standard error), the best curation strategy at each size in bold; premem_low
against every other strategy, paired by seed; every seed's rounds.

Rounds, curves and ratios come from premem.metrics.curves, the same numbers the experiment prints
and writes to curves.csv and efficiency.csv.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from premem.files import atomic_path
from premem.metrics.curves import IID_STRATEGY, comparisons, curves, efficiency, read_rounds, strategy_order
from premem.report import plots
from premem.report.page import PAGE, figure, section


def build_curation_report(out_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write the HTML report of the curation experiment in `out_dir` to `path` (default out_dir/report.html).

    Reads the loops' records under out_dir; none, or a malformed one, raises InputError before anything is
    written."""
    out_dir = Path(out_dir)
    rounds = read_rounds(out_dir)
    curve = curves(rounds)
    has_iid = (rounds["strategy"] == IID_STRATEGY).any()
    eff = efficiency(curve, rounds) if has_iid else pd.DataFrame()
    out = Path(path) if path is not None else out_dir / "report.html"
    page = render(out_dir, rounds, curve, eff, has_iid, comparisons(rounds))
    with atomic_path(out) as tmp:  # a failed or killed build leaves no half-written report
        tmp.write_text(page, encoding="utf-8")
    return out


# -- the page --------------------------------------------------------------------------------


def render(out_dir: Path, rounds: pd.DataFrame, curve: pd.DataFrame, eff: pd.DataFrame, has_iid: bool,
           compare: pd.DataFrame | None = None) -> str:
    order = strategy_order(curve)  # the figure's legend order
    sections = [summary(out_dir, rounds, order)]
    one_seed = " With one seed there is no spread: no error bars." if curve["n_seeds"].max() == 1 else ""
    sections.append(section("Learning curves", figure(
        plots.learning_curves(curve, order),
        "Mean test accuracy over seeds against the number of training examples (log scale); error bars are one "
        "standard deviation over seeds. Every strategy starts from the same i.i.d. examples; i.i.d. scaling "
        "(random) is the thick black line. Strategies are drawn slightly apart sideways so their bars stay apart."
        + one_seed)))
    sections.append(section("Test accuracy by training-set size", curve_table(curve, order)))
    sections.append(section("Data efficiency against i.i.d. scaling", efficiency_table(eff, order, has_iid)))
    if compare is not None and not compare.empty:
        sections.append(section("premem_low against each strategy", comparison_table(compare)))
    sections.append(section("Rounds, per seed", rounds_table(rounds, order)))
    page = PAGE.format(title=escape(f"premem curation experiment: {out_dir.resolve().name}"), body="\n".join(sections))
    return page.replace("</style></head>", CSS + "</style></head>", 1)  # html.py's style sheet, plus this page's


def summary(out_dir: Path, rounds: pd.DataFrame, order: list[str]) -> str:
    start = sorted(rounds.loc[rounds["round"] == 0, "examples"].unique())
    budgets = sorted(rounds.loc[rounds["round"] > 0, "examples"].unique())
    iid = sorted(rounds.loc[rounds["round"] < 0, "examples"].unique())
    seeds = sorted(rounds["seed"].unique())
    facts = [
        ("experiment", f"<code>{escape(str(out_dir.resolve()))}</code>"),
        ("strategies", ", ".join(escape(s) for s in order)),
        ("seeds", f"{len(seeds)} ({', '.join(str(s) for s in seeds)})"),
        ("start", f"{_sizes(start)} i.i.d. examples, shared by every strategy of a seed"),
        ("rounds", f"training-set sizes {_sizes(budgets)}" if budgets else "none beyond the start yet"),
        ("i.i.d. only", f"{_sizes(iid)} examples, to extend the i.i.d. curve" if iid else "no extra i.i.d. sizes"),
        ("records", f"{len(rounds)} rounds, from the curation loops' <code>store/curation_rounds.parquet</code>"),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return (
        "<h1>premem curation experiment</h1>\n"
        "<p>Does curating training data by a strategy beat collecting more i.i.d. data? For each seed, every strategy "
        "starts from the same i.i.d. problems; each round trains a run on the data so far, scores it, ranks its "
        "training examples by the strategy and collects new problems like the top-ranked ones. <i>random</i> is "
        "i.i.d. scaling. A strategy's data-efficiency ratio at a size is the number of i.i.d. examples needed to reach "
        "its test accuracy, divided by the examples it used: above 1 means the curated data is worth more.</p>\n"
        f'<table class="facts">{rows}</table>'
    )


def curve_table(curve: pd.DataFrame, order: list[str]) -> str:
    sizes = sorted(curve["examples"].unique())
    head = "<th>strategy</th>" + "".join(f'<th class="num">{int(n)}</th>' for n in sizes)
    rows = []
    for name in order:
        g = curve[curve["strategy"] == name].set_index("examples")
        cells = "".join(_acc_cell(g.loc[n]) if n in g.index else '<td class="num">–</td>' for n in sizes)
        rows.append(f"<tr><td>{escape(name)}</td>{cells}</tr>")
    return (f'<table class="grid curve"><tr>{head}</tr>{"".join(rows)}</table>\n'
            '<p class="caption">Test accuracy, mean ± standard error over seeds, by training-set size; '
            '<span class="n">n</span> is the number of seeds.</p>')


def _acc_cell(row: pd.Series) -> str:
    se = "" if math.isnan(row["se"]) else f" ± {row['se']:.3f}"
    return f'<td class="num">{row["mean"]:.3f}{se} <span class="n">{int(row["n_seeds"])}</span></td>'


def efficiency_table(eff: pd.DataFrame, order: list[str], has_iid: bool) -> str:
    if not has_iid:
        return '<p class="note">No i.i.d. (random) rounds in the records: no curve to measure ratios against.</p>'
    if eff.empty:
        return '<p class="note">No sizes beyond the smallest i.i.d. one yet: no ratios to show.</p>'
    eff = eff.assign(_order=eff["strategy"].map({s: i for i, s in enumerate(order)}))
    eff = eff.sort_values(["examples", "_order"])
    best = set()
    for _, g in eff[eff["strategy"] != "random"].groupby("examples"):
        # the highest ratio; at equal ratios (two lower bounds at one size) the higher accuracy
        top = g[np.isclose(g["ratio"], g["ratio"].max())]
        best |= set(top[np.isclose(top["test_acc"], top["test_acc"].max())].index)
    head = ("<tr><th>strategy</th><th>examples</th><th>test accuracy</th><th>i.i.d. examples needed</th>"
            "<th>ratio</th><th>per seed</th></tr>")
    rows = []
    for i, r in eff.iterrows():
        b = r["bound"]
        needed = f"{b}{r['iid_examples_needed']:.0f}"
        ratio = f"{b}{r['ratio']:.2f}"
        cls = ' class="best"' if i in best else (' class="iid"' if r["strategy"] == "random" else "")
        rows.append(f"<tr{cls}><td>{escape(r['strategy'])}</td><td class=\"num\">{int(r['examples'])}</td>"
                    f'<td class="num">{r["test_acc"]:.3f}</td><td class="num">{escape(needed)}</td>'
                    f'<td class="num ratio">{escape(ratio)}</td><td class="num">{_per_seed(r)}</td></tr>')
    return (f'<table class="grid efficiency">{head}{"".join(rows)}</table>\n'
            '<p class="caption">i.i.d. examples needed: where the i.i.d. curve (its running best, interpolated in log '
            "examples) first reaches the strategy's mean test accuracy; ratio = needed / examples. "
            "&gt; marks a lower bound: the strategy beat the largest i.i.d. size. "
            "<b>Bold</b>: the best curation strategy at that size. i.i.d. rows (grey) are the reference. "
            "Per seed: each seed's accuracy read off its own seed's i.i.d. curve, mean ± standard error.</p>")


def _per_seed(r: pd.Series) -> str:
    mean, se = r.get("ratio_mean", float("nan")), r.get("ratio_se", float("nan"))
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" + ("" if pd.isna(se) else f" ± {se:.2f}")


def comparison_table(compare: pd.DataFrame) -> str:
    """premem_low minus each strategy per size, paired by seed, and whether it is ahead by more than 2 SE."""
    head = "<tr><th>examples</th><th>strategy</th><th>premem_low minus it</th><th>seeds</th><th>ahead</th></tr>"
    rows = []
    for r in compare.itertuples():
        se = "" if pd.isna(r.se) else f" ± {r.se:.3f}"
        cls = ' class="best"' if r.ahead else ""
        rows.append(f'<tr{cls}><td class="num">{int(r.examples)}</td><td>{escape(r.strategy)}</td>'
                    f'<td class="num">{r.diff:+.3f}{se}</td><td class="num">{int(r.n_seeds)}</td>'
                    f'<td>{"yes" if r.ahead else "no"}</td></tr>')
    return (f'<table class="grid compare">{head}{"".join(rows)}</table>\n'
            '<p class="caption">Test accuracy of premem_low minus the strategy\'s, mean ± standard error over seeds, '
            "paired by seed (a seed's strategies share their start data and test set). Ahead: the mean difference "
            "is more than two standard errors.</p>")


def rounds_table(rounds: pd.DataFrame, order: list[str]) -> str:
    """One row per (strategy, seed), one column per size: the rounds' test accuracies at a glance."""
    sizes = sorted(rounds["examples"].unique())
    iid_only = set(rounds.loc[rounds["round"] < 0, "examples"]) - set(rounds.loc[rounds["round"] >= 0, "examples"])
    head = "<th>strategy</th><th>seed</th>" + "".join(
        f'<th class="num">{int(n)}{"*" * (n in iid_only)}</th>' for n in sizes)
    rows = []
    for name in order:
        g = rounds[rounds["strategy"] == name]
        for seed in sorted(g["seed"].unique()):
            acc = g[g["seed"] == seed].drop_duplicates("examples").set_index("examples")["test_acc"]
            cells = "".join(f'<td class="num">{acc[n]:.3f}</td>' if n in acc.index else '<td class="num">–</td>'
                            for n in sizes)
            rows.append(f"<tr><td>{escape(name)}</td><td class=\"num\">{int(seed)}</td>{cells}</tr>")
    note = " * i.i.d. only (round −1)." if iid_only else ""
    return (f'<div class="wide"><table class="grid rounds"><tr>{head}</tr>{"".join(rows)}</table></div>\n'
            f'<p class="caption">Test accuracy at the end of each round, by training-set size; the first column is '
            f"the shared start.{note}</p>")


def _sizes(sizes) -> str:
    return ", ".join(str(int(s)) for s in sizes) or "–"


CSS = (
    "table.efficiency tr.best td, table.compare tr.best td { font-weight: 700; background: #eaf5e6; }\n"
    "table.efficiency tr.iid td { color: #777; }\n"
    "table.grid th.num { text-align: right; }\n"
    "span.n { color: #999; font-size: 0.8em; margin-left: 0.3em; }\n"
    "p.caption { font-size: 0.85em; color: #555; margin-top: 0.3em; max-width: 60em; }\n"
)
