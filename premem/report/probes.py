"""The report's "Learning dynamics (probes)" section, from the store's probe_scores table.

Per run: the mean over probe prompts of summed log π(response | prompt) per response type at each
checkpoint, and the squeezing verdict (greedy y* rises while chosen and rejected both fall) with the
size of each move. The numbers are premem.metrics.probes' `type_curves` and `squeezing`, the same
that `premem probe track/show` print.
"""

from __future__ import annotations

from html import escape

import pandas as pd

from premem.metrics.probes import SIGNIFICANT, VERDICT_TYPES, Squeezing, squeezing, type_curves
from premem.report import plots
from premem.report.page import figure


def probe_runs(scores: pd.DataFrame, order: list[str] | None = None) -> list[str]:
    """The runs with probe scores: in `order` (runs.parquet's) where listed, the rest sorted after."""
    present = set(scores["run"].unique())
    listed = [r for r in (order or []) if r in present]
    return listed + sorted(present - set(listed))


def probe_section(scores: pd.DataFrame, order: list[str] | None = None) -> str:
    """The section's HTML body: the two figures, then one table per run with its verdict."""
    runs = probe_runs(scores, order)
    labels = plots.short_names(runs)
    curves = {run: type_curves(scores, run) for run in runs}
    verdicts = {run: squeezing(scores, run) for run in runs}
    n_probes = scores["probe_id"].nunique()
    intro = (f"<p>{n_probes} probe prompt{'s' * (n_probes != 1)}, {len(runs)} run{'s' * (len(runs) != 1)}. "
             "Squeezing (Ren &amp; Sutherland): in off-policy DPO the chosen and the rejected responses both lose "
             "probability while the model's greedy response y* gains it. A run is flagged when, from its first to its "
             f"last checkpoint, greedy rises while chosen and rejected both fall, each move at least {SIGNIFICANT:g} "
             "standard errors (over probe prompts) from zero.</p>")
    parts = [
        intro,
        verdicts_html(runs, verdicts),
        figure(plots.probe_curves(curves, runs, labels),
               "Per run and checkpoint: the mean over probe prompts of the summed log π(response | prompt) of each "
               "response type. chosen, rejected and greedy (y*, the teacher-forced argmax on [prompt; y+]) are the "
               "thick lines; each type keeps its colour in every panel."),
        figure(plots.probe_curves(curves, runs, labels, change=True),
               "The same curves as changes since each run's first checkpoint: the squeezing verdict compares the "
               "first and the last point of the thick lines."),
        '<div class="probe-tables" style="display:flex;flex-wrap:wrap;gap:1.5em">'
        + "".join(run_table(run, curves[run], verdicts[run]) for run in runs) + "</div>",
    ]
    return "\n".join(parts)


def verdict_text(v: Squeezing) -> str:
    if v.squeezing is None:
        return f"undetermined ({v.reason})"
    return "yes" if v.squeezing else "no"


def verdicts_html(runs: list[str], verdicts: dict[str, Squeezing]) -> str:
    """One row per run: the verdict and the three moves it rests on."""
    head = ("<tr><th>run</th><th>squeezing</th><th>steps</th>"
            + "".join(f"<th>{t} change</th>" for t in VERDICT_TYPES) + "</tr>")
    rows = []
    for run in runs:
        v = verdicts[run]
        moves = "".join(f'<td class="num">{escape(v.moves[t].describe())}</td>' if t in v.moves
                        else '<td class="num">–</td>' for t in VERDICT_TYPES)
        rows.append(f'<tr class="verdict"><td>{escape(run)}</td><td><b>{escape(verdict_text(v))}</b></td>'
                    f'<td class="num">{v.first_step} → {v.last_step}</td>{moves}</tr>')
    return (f'<table class="grid verdicts">{head}{"".join(rows)}</table>\n'
            '<p style="font-size:0.85em;color:#555">Change: of the summed log-prob (nats) from the run\'s first to its '
            "last checkpoint, mean ± standard error over probe prompts, and how many prompts' went up.</p>")


def run_table(run: str, table: pd.DataFrame, v: Squeezing) -> str:
    """The run's types at its first and last checkpoint and the change, chosen/rejected/greedy first."""
    first, last = table.index[0], table.index[-1]
    types = [t for t in VERDICT_TYPES if t in table.columns] + [t for t in table.columns if t not in VERDICT_TYPES]
    rows = []
    for t in types:
        a, b = table.loc[first, t], table.loc[last, t]
        cells = "".join('<td class="num">–</td>' if pd.isna(x) else f'<td class="num">{x:.2f}</td>' for x in (a, b))
        delta = f'{v.deltas[t]:+.2f}' if t in v.deltas else "–"
        name = f"<b>{escape(t)}</b>" if t in VERDICT_TYPES else escape(t)
        rows.append(f'<tr><td>{name}</td>{cells}<td class="num">{delta}</td></tr>')
    return (f'<div><p><b>{escape(run)}</b>: squeezing {escape(verdict_text(v))}</p>'
            f'<table class="grid"><tr><th>type</th><th>step {int(first)}</th><th>step {int(last)}</th><th>change</th></tr>'
            f'{"".join(rows)}</table></div>')
