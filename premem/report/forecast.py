"""The report's "Predicted test accuracy" section: each run's test accuracy predicted at every checkpoint, with a band.

The line and band come from, in order:

- a saved fit (`build_report(fit=...)`, `premem report --fit FILE`: premem.metrics.calibration.load_fit), which
  predicts runs that have no test scores at all, the use `premem watch` has for it;
- else a calibration on this store's own runs with test scores: the report's prediction (the same tau and line
  as its fit table), with the split-conformal band of premem.metrics.calibration on its leave-one-run-out
  residuals. Its leave-one-run-out coverage is measured for a fixed tau; with tau=auto it is not (it would refit
  tau once per run, seconds to minutes the live report rebuilds after every checkpoint; `premem predict
  --save-fit` measures it);
- else nothing: the section says why (too few runs or checkpoints with test scores for a line or a band).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pandas as pd

from premem.errors import InputError
from premem.metrics.calibration import LEVEL, Fit, half_width, load_fit, loro_coverage, predict_from_fit
from premem.metrics.predict import Prediction
from premem.metrics.premem import TrainingCurves
from premem.report import plots
from premem.report.page import figure

TITLE = "Predicted test accuracy"


@dataclass
class Forecast:
    """What the section draws: the fit and its table, or the reason there is none."""

    fit: Fit | None
    table: pd.DataFrame | None  # predict_from_fit's: run, step, premem, predicted, lower, upper, test_acc, in_fit
    source: str  # where the fit comes from, as the page says it
    note: str = ""  # why there is no band


def read_fit(fit: Fit | str | Path | None) -> tuple[Fit | None, str]:
    """The fit build_report was given, loaded (bad files fail here, before any work), and how the page names it."""
    if fit is None or isinstance(fit, Fit):
        return fit, "a saved fit" if fit is not None else ""
    try:
        return load_fit(fit), f"the saved fit {Path(fit).name}"
    except InputError as e:
        raise InputError(f"fit: {e}") from None


def forecast(curves: TrainingCurves, given: Fit | None, source: str, pred: Prediction | None, note: str) -> Forecast:
    """The section's content: from the given fit, else calibrated on `pred` (the report's fit), else a reason.

    note: why the report has no prediction (pred is None)."""
    if given is not None:
        return Forecast(given, predict_from_fit(curves, given), source)
    if pred is None:
        return Forecast(None, None, "", note)
    try:
        fit = calibrated(curves, pred)
    except InputError as e:  # too few checkpoints with test scores for a 90% band
        return Forecast(None, None, "", f"no band: {e}")
    return Forecast(fit, predict_from_fit(curves, fit), "a fit calibrated on this store's runs with test scores")


def calibrated(curves: TrainingCurves, pred: Prediction) -> Fit:
    """premem.metrics.calibration.calibrate on the report's own prediction, its coverage measured only for a fixed
    tau (see the module's docstring)."""
    res = pred.points.dropna(subset=["test_acc", "predicted_loro"])
    res = res[["run", "step", "premem", "test_acc", "predicted_loro"]].reset_index(drop=True)
    q = half_width(res["test_acc"] - res["predicted_loro"], LEVEL)
    coverage = loro_coverage(curves, pred.tau, LEVEL) if pred.tau_mode != "auto" else None
    return Fit(tau=pred.tau, tau_mode=pred.tau_mode, slope=pred.slope, intercept=pred.intercept, r2=pred.r2,
               r2_loro=pred.r2_loro, mae=pred.mae, mae_loro=pred.mae_loro, level=LEVEL, half_width=q, residuals=res,
               runs=sorted(res["run"].unique()), sample_tau=curves.min_tau, coverage_loro=coverage,
               notes=list(pred.notes))


# -- the section ------------------------------------------------------------------------------


def section_body(fc: Forecast, runs: list[str], labels: dict[str, str], report_tau: float) -> str:
    if fc.fit is None:
        return f'<p class="note">Not drawn: {escape(fc.note)}.</p>'
    fit, table = fc.fit, fc.table
    shown = [r for r in runs if r in set(table["run"])]
    caption = (f"Per run and checkpoint: test accuracy predicted from pre-memorization accuracy by {escape(fc.source)} "
               f"(test accuracy ≈ {fit.slope:.3f} × pre-memorization accuracy {'−+'[fit.intercept >= 0]} "
               f"{abs(fit.intercept):.3f}, tau {fit.tau:g}), with its {fit.level:.0%} band (± {fit.half_width:.3f}: "
               "split-conformal on the fit's leave-one-run-out residuals, clipped to [0, 1]); crosses mark the real "
               "test accuracy where it is scored. "
               + coverage_words(fit) + in_fit_words(table))
    if not math.isclose(fit.tau, report_tau):
        caption += f" The fit's tau ({fit.tau:g}) is not the tau of the rest of this page ({report_tau:g})."
    return (figure(plots.forecast_curves(table, shown, labels, fit.level), caption)
            + latest_table(table, shown, fit.level))


def coverage_words(fit: Fit) -> str:
    cov = fit.coverage_loro
    if cov:
        return (f"With each run held out in turn, the band covered {cov['covered']} of {cov['points']} of its "
                f"checkpoints ({cov['fraction']:.0%}).")
    if fit.tau_mode == "auto":
        return "The band's coverage on held-out runs is not measured here (tau=auto); premem predict --save-fit measures it."
    return "The band's coverage on held-out runs is not measured: fewer than 3 runs have test scores."


def in_fit_words(table: pd.DataFrame) -> str:
    if not table["in_fit"].any():
        return ""
    return " A run marked “in the fit” is one the line was fitted on: beside its test accuracy the prediction is in-sample, not a check."


def latest_table(table: pd.DataFrame, runs: list[str], level: float) -> str:
    """Each run's prediction at its last checkpoint so far, with its band and the real test accuracy if scored."""
    last = table.sort_values("step").groupby("run").tail(1).set_index("run")
    head = ("<tr><th>run</th><th>last step</th><th>pre-memorization acc</th><th>predicted test acc</th>"
            f"<th>{level:.0%} band</th><th>actual test acc</th><th>in the fit</th></tr>")
    rows = []
    for run in runs:
        r = last.loc[run]
        actual = "not scored" if pd.isna(r["test_acc"]) else f"{r['test_acc']:.3f}"
        rows.append(f"<tr><td>{escape(run)}</td><td class=\"num\">{int(r['step'])}</td>"
                    f"<td class=\"num\">{_num(r['premem'])}</td><td class=\"num\">{_num(r['predicted'])}</td>"
                    f"<td class=\"num\">{_num(r['lower'])} – {_num(r['upper'])}</td><td class=\"num\">{actual}</td>"
                    f"<td>{'yes' if r['in_fit'] else 'no'}</td></tr>")
    return f'<div class="wide"><table class="grid">{head}{"".join(rows)}</table></div>'


def _num(v) -> str:
    return "–" if pd.isna(v) else f"{v:.3f}"
