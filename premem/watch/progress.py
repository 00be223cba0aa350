"""What a scored checkpoint says, per (run, step): the figures `premem watch` prints and PrememCallback logs.

    premem            pre-memorization train accuracy (premem.metrics.premem) at tau
    train_acc         train accuracy (on the sampled pairs)
    frac_memorized    share of the run's training examples memorized at tau
    test_acc          test accuracy, where the test set was scored
    predicted, lower, upper   predicted test accuracy and its band: from a saved fit (its tau), else from a fit on
                      the store's own runs with test scores once at least 2 have them (the rule premem predict
                      uses for tau; the band from the leave-one-run-out errors); NaN before that

A checkpoint counts as scored once the store holds every row its run should have at that step (scored_steps):
what a reader that did not do the scoring (PrememCallback attached to a running `premem watch`) can check.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from premem.errors import InputError
from premem.metrics.calibration import Fit, half_width, predict_from_fit
from premem.metrics.predict import predict
from premem.metrics.premem import PAPER_TAU, TrainingCurves
from premem.store import ScoreStore

log = logging.getLogger(__name__)

COLUMNS = ["run", "step", "premem", "train_acc", "frac_memorized", "test_acc", "predicted", "lower", "upper", "tau"]


def checkpoint_metrics(store: str | Path | ScoreStore, fit: Fit | None = None, tau: float | None = None
                       ) -> pd.DataFrame:
    """One row per scored (run, step) of the store, COLUMNS; empty before any train score is stored."""
    store = store if isinstance(store, ScoreStore) else ScoreStore(store)
    if not store.has("train_scores"):
        return pd.DataFrame(columns=COLUMNS)
    curves = TrainingCurves.from_store(store)
    if fit is None:
        fit = _store_fit(curves, tau)
    at = fit.tau if fit is not None else (PAPER_TAU if tau is None else float(tau))
    pts = curves.points(at)
    out = pts[["run", "step", "premem", "train_acc", "frac_memorized", "test_acc"]].assign(tau=at)
    if fit is None:
        return out.assign(predicted=np.nan, lower=np.nan, upper=np.nan)[COLUMNS]
    pred = predict_from_fit(curves, fit)[["run", "step", "predicted", "lower", "upper"]]
    return out.merge(pred, on=["run", "step"], how="left")[COLUMNS]


def _store_fit(curves: TrainingCurves, tau: float | None) -> Fit | None:
    """A fit on the store's own runs with test scores (None under 2 of them): premem predict's line at its tau,
    the band from its leave-one-run-out errors (no coverage check: that is premem predict --save-fit's)."""
    if len(curves.scored_runs()) < 2:
        return None
    try:
        pred = predict(curves, tau)
    except InputError as e:  # e.g. every test accuracy alike so far: no line yet
        log.debug("no fit on the store yet: %s", e)
        return None
    res = pred.points.dropna(subset=["test_acc", "predicted_loro"])
    if res.empty:
        return None
    q = half_width((res["test_acc"] - res["predicted_loro"]).to_numpy(), 0.9)
    return Fit(tau=pred.tau, tau_mode=pred.tau_mode, slope=pred.slope, intercept=pred.intercept, r2=pred.r2,
               r2_loro=pred.r2_loro, mae=pred.mae, mae_loro=pred.mae_loro, level=0.9, half_width=q, residuals=res,
               runs=sorted(res["run"].unique()))


def describe(row: pd.Series) -> str:
    """One checkpoint's figures in a line, as `premem watch` logs them."""
    text = (f"{row['run']} step {int(row['step'])}: pre-memorization train accuracy {row['premem']:.3f}, "
            f"{row['frac_memorized']:.0%} memorized (tau {row['tau']:g})")
    if pd.notna(row["predicted"]):
        text += f", predicted test accuracy {row['predicted']:.3f} [{row['lower']:.3f}, {row['upper']:.3f}]"
    if pd.notna(row["test_acc"]):
        text += f", test accuracy {row['test_acc']:.3f}"
    return text


def logged_metrics(row: pd.Series) -> dict[str, float]:
    """A checkpoint's figures as the scalars PrememCallback logs (only those defined)."""
    values = {"premem/checkpoint_step": int(row["step"]), "premem/pre_memorization_acc": row["premem"],
              "premem/train_acc": row["train_acc"], "premem/memorized_fraction": row["frac_memorized"],
              "premem/test_acc": row["test_acc"], "premem/predicted_test_acc": row["predicted"],
              "premem/predicted_test_acc_lower": row["lower"], "premem/predicted_test_acc_upper": row["upper"]}
    return {k: (int(v) if k == "premem/checkpoint_step" else float(v)) for k, v in values.items() if pd.notna(v)}


def scored_steps(store: str | Path | ScoreStore, run: str, expected: dict[str, int]) -> set[int]:
    """The run's steps for which the store holds every expected score row ({split: rows per checkpoint})."""
    store = store if isinstance(store, ScoreStore) else ScoreStore(store)
    done: set[int] | None = None
    for split, n in expected.items():
        if n == 0:
            continue
        table = f"{split}_scores"
        try:
            df = store.read(table) if store.has(table) else None
        except (InputError, OSError):  # a part compacted away while read: look again next time
            return set()
        counts = df.loc[df["run"] == run, "step"].value_counts() if df is not None else pd.Series(dtype=int)
        steps = {int(s) for s, c in counts.items() if c >= n}
        done = steps if done is None else done & steps
    return done or set()
