"""`premem report`: one self-contained HTML file describing a score store.

Everything is inline (figures as base64 PNG, CSS in a <style> block, no scripts, fonts or
links to fetch), so the file can be mailed, archived or opened offline and looks the same.
The page: what the store holds and the tau used; how well each training-time feature
predicts test accuracy; per run, the accuracy curves, the predicted-vs-actual scatter, each
checkpoint's predicted test accuracy with its band (from a saved fit or calibrated on the store:
premem.report.forecast), the spread of per-example pre-memorization accuracy, the fraction
memorized; the runs table.

The live page (live=True, what `premem watch` rewrites after each checkpoint) adds an inline
script that reloads it and a banner saying when it was made (premem.report.live); without those
two blocks it is byte for byte the plain page, so a finished run's live page equals its report.
The file is always replaced atomically.

With probe_scores (premem probe track) a "Learning dynamics (probes)" section follows: per run, each
response type's mean summed log π(y|x) by checkpoint and the squeezing verdict (premem.report.probes).
A store with probe_scores and no train scores gets a page of that section alone.

A store with unsampled pairs (premem score sample=exact|final) says so among its facts, and
every figure over train accuracy says it is computed on sampled pairs only.

Test scores are optional: without them (or with them for fewer than 2 runs, too few to fit
a line across runs) the prediction parts say why they are missing and the rest still draws.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from premem.errors import InputError
from premem.files import atomic_path
from premem.metrics.calibration import Fit
from premem.metrics.predict import AUTO_MIN_RUNS, PAPER_TAU, TAU_MODES, Prediction, check_tau, predict, resolve_tau
from premem.metrics.premem import FEATURES, TrainingCurves
from premem.report import plots
from premem.report.forecast import TITLE as FORECAST_TITLE
from premem.report.forecast import Forecast, forecast, read_fit
from premem.report.forecast import section_body as forecast_body
from premem.report.live import make_live
from premem.report.page import PAGE, figure, section
from premem.report.probes import probe_runs, probe_section
from premem.store import ScoreStore

PROBES_TITLE = "Learning dynamics (probes)"


def build_report(store_dir: str | Path, out_path: str | Path = "report.html", tau: float | str | None = None, *,
                 fit: Fit | str | Path | None = None, live: bool = False) -> Path:
    """Write the HTML report of the score store at `store_dir` to `out_path`; returns the path.

    tau: the memorization threshold on log(log(perplexity)), "auto" to choose it by nested
    leave-one-run-out, or None for the default `premem predict` uses too (premem.metrics.predict.resolve_tau:
    auto where at least 3 runs have test scores, else -2.3); auto falls back to -2.3 without them;
    with a fit and no tau, the fit's.
    fit: a saved fit (premem.metrics.calibration.Fit or its file) predicting each run's test accuracy per
    checkpoint with its band; None: calibrated on the store's runs with test scores where they allow it
    (premem.report.forecast).
    live: the page `premem watch` rewrites after each checkpoint: it reloads itself in the browser and says when
    it was made and the checkpoint scored last (premem.report.live); less those, it is the live=False page.
    The file is replaced atomically: a reader sees the old page or the new one, never half of one.
    Bad input raises InputError before anything is written.
    """
    check_tau(tau)
    given, source = read_fit(fit)
    if given is not None and tau is None:
        tau = given.tau
    store = ScoreStore(store_dir)
    probes = store.read("probe_scores") if store.has("probe_scores") else None
    if probes is not None and probes.empty:
        probes = None
    if not store.has("train_scores"):
        if probes is None:
            raise InputError(f"{store.path('train_scores')}: table missing from the score store, "
                             "and no probe_scores either: nothing to report on")
        page = render_probes_only(store, probes)
    else:
        runs_table = store.runs()
        curves = TrainingCurves.from_store(store)
        if curves.frame.empty:
            if probes is None:
                raise InputError(f"{store.path('train_scores')}: no train scores to report on")
            page = render_probes_only(store, probes)
        else:
            pred, tau_used, note = fit_line(curves, tau)
            points = pred.points if pred else curves.points(tau_used)
            try:
                fc = forecast(curves, given, source, pred, note)
            except InputError as e:  # the fit cannot predict this store (its tau below the store's sample_tau)
                raise InputError(f"fit: {e}") from None
            if pred is None and given is not None:
                note += f"; “{FORECAST_TITLE}” below predicts it from {source} instead"
            page = render(store, runs_table, curves, points, pred, tau, tau_used, note, probes, fc)
    if live:
        page = make_live(page, store)
    out = Path(out_path)
    with atomic_path(out) as tmp:  # a failed or killed build leaves no half-written report
        tmp.write_text(page, encoding="utf-8")
    return out


def fit_line(curves: TrainingCurves, tau: float | str | None) -> tuple[Prediction | None, float, str]:
    """The prediction (None when it cannot be fitted), the tau to use, and a note saying why not."""
    n = len(curves.scored_runs())
    chosen, _ = resolve_tau(tau, n)  # the default rule premem predict uses: the same store, the same numbers
    if n >= 2:
        if chosen == "auto" and n < AUTO_MIN_RUNS:  # auto asked for by name: each held-out run needs 2 others
            pred = predict(curves, PAPER_TAU)
            return pred, PAPER_TAU, (f"tau=auto needs test scores for at least {AUTO_MIN_RUNS} runs: using the paper's "
                                     f"GSM8K value {PAPER_TAU:g}")
        pred = predict(curves, chosen)
        return pred, pred.tau, ""
    why = "the store has no test scores" if curves.test.empty else f"test scores cover only {n} run{'s' * (n != 1)} with train scores"
    note = f"{why}; predicting test accuracy needs at least 2 runs with test scores, so it is skipped"
    if chosen == "auto":
        return None, PAPER_TAU, f"{note}, and tau=auto cannot be chosen: using the paper's GSM8K value {PAPER_TAU:g}"
    return None, chosen, note


# -- the page --------------------------------------------------------------------------------


def render(store, runs_table, curves, points, pred, tau_asked, tau, note, probes=None, fc: Forecast | None = None) -> str:
    runs = [r for r in runs_table["run"] if r in set(points["run"])]  # runs.parquet's order
    labels = plots.short_names(runs)
    per_ex = curves.per_example(tau)
    last = per_ex.groupby("run")["step"].transform("max")
    final = per_ex[per_ex["step"] == last]
    has_test = points["test_acc"].notna().any()
    only = sampled_only(curves)

    sections = [summary(store, curves, points, pred, tau_asked, tau, note, runs, labels)]
    sections.append(section(
        "Accuracy over training",
        figure(plots.accuracy_curves(points, runs, labels),
               "Per run and checkpoint: mean pre-memorization train accuracy, mean train accuracy"
               + (", and test accuracy." if has_test else ". No test scores in this store: test accuracy not shown.")
               + only),
    ))
    if pred:
        body = figure(plots.scatter_figure(pred, runs, labels),
                      "Each point is a checkpoint; its prediction comes from a line fitted on the other runs only.")
    else:
        body = f'<p class="note">Not drawn: {escape(note)}.</p>'
    sections.append(section("Predicted vs actual test accuracy", body))
    if fc is not None:
        sections.append(section(FORECAST_TITLE, forecast_body(fc, runs, labels, tau)))
    sections.append(section(
        "Per-example pre-memorization accuracy",
        figure(plots.premem_histograms(final, runs, labels),
               "Distribution over each run's training examples at its last checkpoint; "
               "the orange outline is plain train accuracy on the same examples." + only),
    ))
    sections.append(section(
        "Memorization over training",
        figure(plots.memorized_curves(points, runs, labels, tau),
               f"Fraction of each run's training examples whose gold trace is memorized (log(log(ppl)) &lt; {tau:g})."),
    ))
    if probes is not None:
        sections.append(section(PROBES_TITLE, probe_section(probes, list(runs_table["run"]))))
    sections.append(section("Runs", runs_html(runs_table, points)))
    title = f"premem report: {store.root.name or store.root}"
    return PAGE.format(title=escape(title), body="\n".join(sections))


def render_probes_only(store, probes: pd.DataFrame) -> str:
    """A store with probe_scores but no train scores (one `premem probe track` wrote alone)."""
    order = list(store.read("runs")["run"]) if store.has("runs") else None
    runs = probe_runs(probes, order)
    facts = [
        ("store", f"<code>{escape(str(store.root.resolve()))}</code>"),
        ("runs with probe scores", f"{len(runs)}"),
        ("checkpoints", f"{len(probes[['run', 'step']].drop_duplicates())}"),
        ("probe prompts", f"{probes['probe_id'].nunique()}"),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    head = (f'<h1>premem report</h1>\n<table class="facts">{rows}</table>\n'
            f'<p class="note">This store has no train scores ({escape(store.path("train_scores").name)} missing or empty): '
            "pre-memorization accuracy, the test-accuracy prediction, memorization and the runs table are not drawn; "
            "only the probes' learning dynamics are.</p>")
    body = [head, section(PROBES_TITLE, probe_section(probes, order))]
    title = f"premem report: {store.root.name or store.root}"
    return PAGE.format(title=escape(title), body="\n".join(body))


def summary(store, curves, points, pred, tau_asked, tau, note, runs, labels) -> str:
    n_ckpt = len(points[["run", "step"]].drop_duplicates())
    n_test = curves.test[["run", "step"]].drop_duplicates().shape[0]
    facts = [
        ("store", f"<code>{escape(str(store.root.resolve()))}</code>"),
        ("runs", f"{len(runs)}"),
        ("checkpoints", f"{n_ckpt} ({n_test} with test scores)"),
        ("train examples", f"{curves.frame['example_id'].nunique()}"),
        ("tau", tau_html(pred, tau_asked, tau)),
    ]
    if curves.n_unsampled:
        facts.append(("sampled pairs", f"{len(curves.frame) - curves.n_unsampled} of {len(curves.frame)} (example, "
                      f"checkpoint) pairs; the rest were skipped by memorization-aware sampling (sample_tau "
                      f"{curves.min_tau:g}), so train accuracy is computed on sampled pairs only"))
    shortened = [r for r in runs if labels[r] != r]
    if shortened:
        facts.append(("run names", "figures drop the words every run name shares; the runs table has the full names"))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    out = f'<h1>premem report</h1>\n<table class="facts">{rows}</table>\n'
    if not pred:
        return out + f'<p class="note">Test-accuracy prediction: {escape(note)}.</p>'
    table = [("premem", pred.r2, pred.r2_loro, pred.mae, pred.mae_loro)]
    table += [(name, b.r2, b.r2_loro, b.mae, b.mae_loro) for name, b in pred.baselines.items()]
    body = "".join(
        f"<tr><td>{escape(FEATURES[name])}{' (this method)' * (name == 'premem')}</td>"
        + "".join(f'<td class="num">{"undefined" if math.isnan(v) else f"{v:.3f}"}</td>' for v in vals) + "</tr>"
        for name, *vals in table
    ) + (f'<tr><td colspan="5" class="note">{escape(pred.r2_note)}</td></tr>' if pred.r2_note else "") + "".join(
        f'<tr><td colspan="5" class="note">{escape(n)}</td></tr>' for n in pred.notes)
    return out + (
        "<h2>Predicting test accuracy</h2>\n"
        f"<p>{pred.n_points} checkpoints of {pred.n_runs} runs with test scores; "
        f"fit: test accuracy ≈ {pred.slope:.3f} × pre-memorization accuracy {'−+'[pred.intercept >= 0]} {abs(pred.intercept):.3f}. "
        "Leave-one-run-out (LORO) predicts each run from a fit on the others only"
        + (", with tau chosen on the others too." if pred.tau_mode == "auto" else ".") + "</p>\n"
        '<table class="grid"><tr><th>predictor</th><th>R²</th><th>LORO R²</th><th>MAE</th><th>LORO MAE</th></tr>'
        f"{body}</table>"
    )


def sampled_only(curves: TrainingCurves) -> str:
    """A caption's words when the store has unsampled pairs: what the accuracy figures cover."""
    if not curves.n_unsampled:
        return ""
    return (f" Train accuracy is computed on sampled pairs only ({curves.n_unsampled} of {len(curves.frame)} "
            "pairs were skipped by memorization-aware sampling).")


def tau_html(pred, tau_asked, tau) -> str:
    ppl = math.exp(math.exp(tau))
    how = "given"
    if pred and pred.tau_mode == "auto":
        per_run = sorted(set(pred.tau_per_run.values()))
        how = f"auto: best leave-one-run-out R² over a grid; per held-out run {', '.join(f'{t:g}' for t in per_run)}"
    elif tau_asked is None:  # the default rule, as premem predict prints it
        how = f"{TAU_MODES['default']}: the paper's GSM8K value"
    elif tau_asked == "auto":
        how = f"auto needs test scores for at least {AUTO_MIN_RUNS} runs; paper default"
    return f"<b>{tau:g}</b> ({escape(how)}); an example counts as memorized when log(log(ppl)) &lt; tau, i.e. ppl &lt; {ppl:.4f}"


def runs_html(runs_table: pd.DataFrame, points: pd.DataFrame) -> str:
    """runs.parquet as a table (list columns as counts), plus each run's figures at its last checkpoint."""
    last = points.sort_values("step").groupby("run").tail(1).set_index("run")
    derived = {"checkpoints scored": points.groupby("run").size(), "last step": last["step"],
               "final premem": last["premem"], "final train acc": last["train_acc"], "final test acc": last["test_acc"]}
    cols = list(runs_table.columns)
    # <wbr> lets long snake_case headers wrap at their underscores, so the table fits the page
    head = "".join(f"<th>{escape(c).replace('_', '_<wbr>')}{' (count)' * _is_list_column(runs_table[c])}</th>" for c in cols)
    head += "".join(f'<th class="derived">{escape(c)}</th>' for c in derived)
    rows = []
    for _, row in runs_table.iterrows():
        cells = "".join(_cell(row[c]) for c in cols)
        cells += "".join(_cell(d.get(row["run"], np.nan), ".3f") for d in derived.values())
        rows.append(f"<tr>{cells}</tr>")
    return f'<div class="wide"><table class="grid runs"><tr>{head}</tr>{"".join(rows)}</table></div>'


def _is_list_column(col: pd.Series) -> bool:
    return any(isinstance(v, (list, tuple, np.ndarray, dict, set)) for v in col)


def _cell(v, fmt: str = ".4g") -> str:
    if isinstance(v, (list, tuple, np.ndarray, dict, set)):
        return f'<td class="num">{len(v)}</td>'
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<td class="num">–</td>'
    if isinstance(v, (float, np.floating)):
        return f'<td class="num">{v:{fmt}}</td>'
    if isinstance(v, (int, np.integer)):
        return f'<td class="num">{v}</td>'
    return f"<td>{escape(str(v))}</td>"
