"""Predict a run's test accuracy from its training-time metrics alone.

Each (run, checkpoint) is one point: x = a run-level training feature at that checkpoint
(pre-memorization accuracy, or a baseline), y = test accuracy at the same checkpoint.
We fit y ~ a*x + b over all points and report

    r2       in-sample R²
    r2_loro  leave-one-run-out R²: each run's checkpoints predicted by a fit on the other
             runs only, R² over all those held-out predictions pooled
    mae      mean absolute error of the in-sample fit (mae_loro: of the held-out predictions)

Leave-one-run-out is the honest number: a new run is what a user wants predicted, and a
run's checkpoints are correlated, so holding out single points would flatter the fit.

tau = "auto" chooses the memorization threshold without looking at the held-out run's test
scores: for each held-out run, tau is picked on the other runs alone (by their own
leave-one-run-out R² over a grid), then that run is predicted with it. The tau reported is
the one the same rule picks on all runs, used for the final fit and for unscored runs.

tau = None is the default every verb shares (predict, report, quickstart): "auto" where at
least AUTO_MIN_RUNS runs have test scores, else the paper's GSM8K value PAPER_TAU; so the
same store prints the same numbers whichever verb reads it. `resolve_tau` is that rule.

R² is reported as NaN (printed "undefined", null in JSON) where it means nothing: test
accuracy that is the same at every point leaves no variance to explain, and a line through
two points fits them exactly whatever they are.

A store scored with memorization-aware sampling (premem score sample=exact|final) has
unsampled pairs: a tau below its recorded sample_tau is refused, tau=auto searches the grid
at or above it, and `notes` (printed under the table) say which figures cover sampled pairs
only: train accuracy whenever a pair was skipped, premem where sample=final left it undefined.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error

from premem.errors import InputError
from premem.metrics.premem import FEATURES, PAPER_TAU, TrainingCurves
from premem.store import ScoreStore
from premem.tables import LOWEST_AUTO_TAU

log = logging.getLogger(__name__)

# log(log(ppl)) from ppl 1.018 to 1.82; its low end is premem score's default sample_tau (premem.tables)
TAU_GRID = tuple(np.round(np.arange(LOWEST_AUTO_TAU, -0.45, 0.1), 2))
AUTO_MIN_RUNS = 3  # nested leave-one-run-out: each held-out run's tau is chosen on >= 2 others
# tau_mode -> how the printed header says tau was set
TAU_MODES = {
    "auto": "auto",
    "fixed": "fixed",
    "default": f"default, fewer than {AUTO_MIN_RUNS} runs with test scores",
}


def check_tau(tau) -> float | str | None:
    """tau as given: None (the default rule), "auto", or a finite number; anything else is an InputError."""
    if tau is None or tau == "auto":
        return tau
    if isinstance(tau, (bool, np.bool_)) or not isinstance(tau, (int, float, np.number)) or not math.isfinite(tau):
        raise InputError(f"tau: expected a finite number or 'auto', got {tau!r}")
    return float(tau)


def resolve_tau(tau, n_runs_with_test: int) -> tuple[float | str, str]:
    """(tau to use: a number or "auto", tau_mode): the one default rule every verb uses."""
    tau = check_tau(tau)
    if tau is None:
        return ("auto", "auto") if n_runs_with_test >= AUTO_MIN_RUNS else (PAPER_TAU, "default")
    return tau, "auto" if tau == "auto" else "fixed"


@dataclass
class FitScores:
    r2: float
    r2_loro: float
    mae: float
    mae_loro: float
    slope: float
    intercept: float


@dataclass
class Prediction:
    """What `premem predict` reports; `to_dict()` is its --json output."""

    tau: float
    tau_mode: str  # "auto", "fixed" (given) or "default" (the paper's value: too few runs for auto); see TAU_MODES
    n_points: int  # checkpoints with test scores, the points of the fit
    n_runs: int
    r2: float
    r2_loro: float
    mae: float
    mae_loro: float
    slope: float
    intercept: float
    baselines: dict[str, FitScores]
    points: pd.DataFrame  # run, step, features, test_acc, predicted, predicted_loro
    tau_per_run: dict[str, float] = field(default_factory=dict)  # auto only: tau used for each held-out run
    dropped_test_runs: list[str] = field(default_factory=list)  # test-score runs with no train scores: left out
    r2_note: str = ""  # why R² is undefined, where it is
    notes: list[str] = field(default_factory=list)  # figures computed on sampled pairs only (sampling_notes)

    @property
    def tau_how(self) -> str:
        """How tau was set, as the printed header says it."""
        return TAU_MODES[self.tau_mode]

    @property
    def rule(self) -> str:
        """How memorization was decided, as the table's header says it (premem.metrics.detectors says its own)."""
        return f"tau = {self.tau:g} ({self.tau_how}; memorized when log(log(ppl)) < tau)"

    def to_dict(self) -> dict:
        pts = self.points.astype(object).where(self.points.notna(), None)
        return {
            "tau": self.tau,
            "tau_mode": self.tau_mode,
            "n_points": self.n_points,
            "n_runs": self.n_runs,
            "r2": _json_number(self.r2),
            "r2_loro": _json_number(self.r2_loro),
            "r2_note": self.r2_note or None,
            "mae": self.mae,
            "mae_loro": self.mae_loro,
            "slope": self.slope,
            "intercept": self.intercept,
            "baselines": {k: {f: _json_number(v) for f, v in asdict(b).items()} for k, b in self.baselines.items()},
            "tau_per_run": self.tau_per_run,
            "dropped_test_runs": self.dropped_test_runs,
            "notes": self.notes,
            "points": pts.to_dict(orient="records"),
        }


def _json_number(value: float) -> float | None:
    """NaN (an undefined R²) as JSON null: json.dumps would write NaN, which is not JSON."""
    return None if value is None or math.isnan(value) else value


def r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """R², NaN where undefined: test accuracy that never varies leaves no variance to explain
    (scikit-learn would report 1.0 for a flat fit to it, or 0.0)."""
    if len(y) == 0 or np.ptp(y) <= 1e-12:
        return math.nan
    # scikit-learn's r2_score, less its input checks: tau=auto and the band's coverage check call this ~10^4 times
    return float(1.0 - np.sum((y - predicted) ** 2) / np.sum((y - np.mean(y)) ** 2))


class Line:
    """Least-squares line y = slope*x + intercept. Closed form: tau=auto fits thousands of these."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        dx = x - x.mean()
        var = float(dx @ dx)
        self.slope = float(dx @ (y - y.mean())) / var if var > 0 else 0.0
        self.intercept = float(y.mean() - self.slope * x.mean())

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(x, dtype=float) + self.intercept


def loro_predictions(x: np.ndarray, y: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Predict each run's points from a linear fit on all other runs."""
    out = np.empty_like(y, dtype=float)
    for run in np.unique(runs):
        held = runs == run
        out[held] = Line(x[~held], y[~held]).predict(x[held])
    return out


def score_feature(x: np.ndarray, y: np.ndarray, runs: np.ndarray) -> tuple[FitScores, np.ndarray, np.ndarray]:
    model = Line(x, y)
    fitted = model.predict(x)
    held_out = loro_predictions(x, y, runs)
    scores = FitScores(
        # two points: a line fits them exactly, and each predicts the other at R² -3 whatever they are
        r2=r2(y, fitted) if len(y) > 2 else math.nan,
        r2_loro=r2(y, held_out) if len(y) > 2 else math.nan,
        mae=float(mean_absolute_error(y, fitted)),
        mae_loro=float(mean_absolute_error(y, held_out)),
        slope=model.slope,
        intercept=model.intercept,
    )
    return scores, fitted, held_out


def _loro_r2(x: np.ndarray, y: np.ndarray, runs: np.ndarray) -> float:
    value = r2(y, loro_predictions(x, y, runs))
    return value if math.isfinite(value) else -math.inf  # undefined for every tau: a tie, broken below


def choose_tau(features: dict[float, np.ndarray], y: np.ndarray, runs: np.ndarray) -> float:
    """The tau whose premem feature gives the best leave-one-run-out R² on these points.

    Ties go to the tau nearest the paper's GSM8K value (PAPER_TAU), so flat regions are stable.
    """
    best = max(features, key=lambda tau: (round(_loro_r2(features[tau], y, runs), 12), -abs(tau - PAPER_TAU)))
    return float(best)


def predict(curves: TrainingCurves | ScoreStore | str | Path, tau: float | str | None = None,
            grid: tuple[float, ...] = TAU_GRID) -> Prediction:
    """Fit test accuracy on pre-memorization accuracy (and each baseline) over all scored checkpoints.

    curves: the runs' TrainingCurves, or the score store (a ScoreStore or its directory) to read them from.
    tau: a number, "auto", or None for the default rule (resolve_tau): auto with >= 3 scored runs, else PAPER_TAU.
    """
    tau = check_tau(tau)
    if not isinstance(curves, TrainingCurves):
        curves = TrainingCurves.from_store(curves if isinstance(curves, ScoreStore) else ScoreStore(curves))
    n_runs = len(curves.scored_runs())
    if n_runs < 2:
        dropped = ", ".join(map(repr, curves.dropped_test_runs))
        raise InputError(f"predict needs test scores for at least 2 runs (the store has {n_runs})"
                         + (f"; test scores of {dropped} match no run with train scores" if dropped else ""))
    tau, mode = resolve_tau(tau, n_runs)
    auto = tau == "auto"
    if auto and n_runs < AUTO_MIN_RUNS:
        raise InputError(f"tau=auto needs test scores for at least {AUTO_MIN_RUNS} runs (the store has {n_runs}); "
                         "give tau a number")
    if auto and curves.min_tau is not None:  # skips are exact only at or above the recorded sample_tau
        grid = tuple(t for t in grid if t >= curves.min_tau - 1e-12)
        if not grid:
            raise InputError(f"tau=auto: every tau of the grid is below {curves.min_tau:g}, the sample_tau this "
                             "store's unsampled pairs were skipped at; give tau a number at or above it")
        log.info("tau=auto searches %g..%g: the store's pairs were skipped at sample_tau %g", grid[0], grid[-1],
                 curves.min_tau)
    elif not auto:
        curves.check_tau(tau)
    taus = list(grid) if auto else [tau]
    points_by_tau = {t: curves.points(t) for t in taus}
    any_points = points_by_tau[taus[0]]
    scored = any_points["test_acc"].notna().to_numpy()
    runs = any_points["run"].to_numpy()[scored]
    y = any_points["test_acc"].to_numpy(dtype=float)[scored]
    premem_x = {t: p["premem"].to_numpy(dtype=float)[scored] for t, p in points_by_tau.items()}
    for t, x in premem_x.items():  # sample=final can leave every pair of a checkpoint undefined: no figure to fit
        if np.isnan(x).any():
            bad = any_points[scored].iloc[int(np.argmax(np.isnan(x)))]
            raise InputError(f"tau {t:g}: run {bad['run']!r} step {int(bad['step'])} has no pair whose "
                             "pre-memorization accuracy is defined (its store was scored with sample=final, which "
                             "skips memorized pairs before the last checkpoint); score it with sample=exact to "
                             "predict from every checkpoint")

    tau_per_run: dict[str, float] = {}
    if auto:
        chosen = choose_tau(premem_x, y, runs)
        # Nested leave-one-run-out: the held-out run's test scores never choose its tau.
        nested = np.empty_like(y)
        for run in np.unique(runs):
            held = runs == run
            t = choose_tau({k: v[~held] for k, v in premem_x.items()}, y[~held], runs[~held])
            tau_per_run[str(run)] = t
            nested[held] = Line(premem_x[t][~held], y[~held]).predict(premem_x[t][held])
        log.debug("tau=auto chose %.2f on all runs; per held-out run: %s", chosen, tau_per_run)
    else:
        chosen = tau

    points = points_by_tau[chosen].copy()
    main, fitted, held_out = score_feature(premem_x[chosen], y, runs)
    if auto:  # the honest held-out figures are the nested ones
        held_out = nested
        main.r2_loro = r2(y, nested) if len(y) > 2 else math.nan
        main.mae_loro = float(mean_absolute_error(y, nested))
    baselines = {}
    for name in FEATURES:
        if name != "premem":
            baselines[name], _, _ = score_feature(points[name].to_numpy(dtype=float)[scored], y, runs)

    points["predicted"] = main.intercept + main.slope * points["premem"]  # unscored runs too
    points["predicted_loro"] = np.nan
    points.loc[scored, "predicted_loro"] = held_out
    return Prediction(
        tau=chosen,
        tau_mode=mode,
        n_points=int(scored.sum()),
        n_runs=n_runs,
        baselines=baselines,
        points=points,
        tau_per_run=tau_per_run,
        dropped_test_runs=list(curves.dropped_test_runs),
        r2_note=_r2_note(y),
        notes=sampling_notes(points[scored], curves),
        **asdict(main),
    )


def sampling_notes(points: pd.DataFrame, curves: TrainingCurves) -> list[str]:
    """What the figures of these points cover when the store has unsampled pairs (premem.store)."""
    if not curves.n_unsampled:
        return []
    pairs = int(points["n_examples"].sum())
    notes = [f"train accuracy computed on sampled pairs only: {int(points['n_unsampled'].sum())} of the {pairs} "
             f"(example, checkpoint) pairs were not sampled (sample_tau {curves.min_tau:g})"]
    partial = points[points["n_premem_undefined"] > 0]
    if len(partial):
        notes.append(f"pre-memorization accuracy computed on sampled pairs only at {len(partial)} of "
                     f"{len(points)} checkpoints ({int(partial['n_premem_undefined'].sum())} pairs undefined: "
                     "sample=final skips memorized pairs before the last checkpoint)")
    return notes


def _r2_note(y: np.ndarray) -> str:
    if np.ptp(y) <= 1e-12:
        return f"R2 undefined: test accuracy is {y[0]:.3f} at every checkpoint, so there is no variance to explain"
    if len(y) <= 2:
        return "R2 undefined: 2 checkpoints with test scores; a line fits any 2 points exactly"
    return ""


def fit_table(pred: Prediction) -> str:
    """The R² / leave-one-run-out table of premem and its baselines, as `premem predict` prints it."""

    def r2(v: float) -> str:  # an undefined R² is NaN: say so, never print a number for it
        return "undefined" if v != v else f"{v:.3f}"

    w1, w2 = (9, 9) if pred.r2_note else (7, 8)  # room for "undefined"; the usual table keeps its layout
    lines = [
        f"{pred.n_runs} runs, {pred.n_points} checkpoints with test scores; {pred.rule}",
        f"test_acc ~ {pred.slope:.3f} * premem + {pred.intercept:.3f}",
        "",
        f"{'predictor':<34} {'R2':>{w1}} {'LORO R2':>{w2}} {'MAE':>7} {'LORO MAE':>9}",
    ]
    rows = [(FEATURES["premem"], pred.r2, pred.r2_loro, pred.mae, pred.mae_loro)]
    rows += [(FEATURES[k], b.r2, b.r2_loro, b.mae, b.mae_loro) for k, b in pred.baselines.items()]
    lines += [f"{label:<34} {r2(a):>{w1}} {r2(b):>{w2}} {mae:>7.3f} {mael:>9.3f}" for label, a, b, mae, mael in rows]
    if pred.r2_note:
        lines.append(pred.r2_note)
    lines += [f"note: {n}" for n in pred.notes]
    if pred.dropped_test_runs:
        lines.append(f"left out: test scores of {', '.join(pred.dropped_test_runs)} (no run with train scores)")
    return "\n".join(lines)


def summary(pred: Prediction) -> str:
    """What `premem predict` prints: the fit table, the tau chosen per held-out run, every point."""
    text = [fit_table(pred)]
    if pred.tau_per_run:
        text.append(f"\ntau chosen for each held-out run: {sorted(set(pred.tau_per_run.values()))}")
    cols = ["run", "step", "premem", "train_acc", "frac_memorized", "test_acc", "predicted", "predicted_loro"]
    text.append("\n" + pred.points[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    return "\n".join(text)
