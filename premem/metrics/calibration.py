"""A saved calibration: fit test accuracy on pre-memorization accuracy once, on runs with test scores, and
predict later runs that have none from the saved fit, with an uncertainty band.

    fit = calibrate(store)                   # premem.metrics.predict's fit, its band, the band's coverage
    save_fit(fit, "fit.json")                # `premem predict --store S --save-fit fit.json`
    table = predict_from_fit(other_store, load_fit("fit.json"))   # `premem predict --store S2 --fit fit.json`
    # run, step, premem, predicted, lower, upper, test_acc (NaN where the run has none), in_fit

The band is a prediction interval for one checkpoint of a new run: predicted ± q, where q is the
ceil((n+1)·level)-th smallest of the n leave-one-run-out |residuals| (the split-conformal quantile).
Each of those residuals is the error of predicting a checkpoint from a fit that never saw its run
(with tau=auto, a tau chosen without it too), which is exactly the situation of a run with no test
scores; in-sample residuals would flatter the fit. The band is clipped to [0, 1], which never loses
coverage. A run's checkpoints are correlated, so the n residuals are worth fewer than n independent
ones: the coverage actually reached is measured rather than assumed. `calibrate` repeats the whole
procedure (tau, line, residuals, band) without each run in turn and counts the held-out run's
checkpoints that fall inside the band it would have got (`coverage_loro`), and the fit file keeps it.

The fit file is JSON (FORMAT, the premem version, tau and how it was chosen, the line, its figures,
the band and the held-out residuals it comes from, the runs). A store is predicted only at the fit's
tau, so one scored with memorization-aware sampling at a higher sample_tau is refused (its skipped
pairs are exact only at or above it), as `premem predict` refuses a tau below a store's sample_tau.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from premem.errors import InputError
from premem.files import atomic_path
from premem.metrics.predict import Prediction, _json_number, predict
from premem.metrics.premem import FEATURES, TrainingCurves
from premem.store import ScoreStore
from premem.version import __version__

log = logging.getLogger(__name__)

FORMAT = "premem.fit/1"  # a reader refuses any other: a newer writer may mean something else by a field
LEVEL = 0.9  # the band's target coverage of a new run's checkpoints
BAND_METHOD = ("split-conformal: predicted +/- the ceil((n+1)*level)-th smallest of the n leave-one-run-out "
               "|residuals|, clipped to [0, 1]")


@dataclass
class Fit:
    """A calibration: what `premem predict --save-fit` writes and `--fit` reads (to_dict is the file)."""

    tau: float
    tau_mode: str  # as Prediction.tau_mode: auto, fixed or default
    slope: float
    intercept: float
    r2: float
    r2_loro: float
    mae: float
    mae_loro: float
    level: float
    half_width: float  # the band: predicted +/- half_width, at `level`
    residuals: pd.DataFrame  # run, step, premem, test_acc, predicted_loro: the held-out errors the band comes from
    runs: list[str]  # the runs with test scores it was fit on
    sample_tau: float | None = None  # the fitted store's (None: every pair sampled); never above tau
    coverage_loro: dict | None = None  # covered, points, fraction, runs, runs_covered, per_run; None: under 3 runs
    store: str = ""  # where it was fit, for the record
    premem_version: str = __version__
    feature: str = "premem"
    notes: list[str] = field(default_factory=list)  # the fit's sampling notes (premem.metrics.predict)

    @property
    def n_points(self) -> int:
        return len(self.residuals)

    def half_width_at(self, level: float | None = None) -> float:
        """The band's half-width at `level` (None: the level it was saved at), from the held-out residuals."""
        if level is None or level == self.level:
            return self.half_width
        return half_width(self.residuals["test_acc"] - self.residuals["predicted_loro"], level)

    def to_dict(self) -> dict:
        res = self.residuals[["run", "step", "premem", "test_acc", "predicted_loro"]]
        return {
            "format": FORMAT,
            "premem_version": self.premem_version,
            "feature": self.feature,
            "feature_label": FEATURES[self.feature],
            "tau": self.tau,
            "tau_mode": self.tau_mode,
            "sample_tau": self.sample_tau,
            "slope": self.slope,
            "intercept": self.intercept,
            "n_runs": len(self.runs),
            "n_points": self.n_points,
            "r2": _json_number(self.r2),
            "r2_loro": _json_number(self.r2_loro),
            "mae": self.mae,
            "mae_loro": self.mae_loro,
            "band": {"level": self.level, "half_width": self.half_width, "method": BAND_METHOD,
                     "coverage_loro": self.coverage_loro},
            "residuals": res.astype(object).where(res.notna(), None).to_dict(orient="records"),
            "runs": list(self.runs),
            "store": self.store,
            "notes": list(self.notes),
        }


def half_width(residuals: np.ndarray, level: float = LEVEL) -> float:
    """The split-conformal half-width: the ceil((n+1)*level)-th smallest |residual| (an InputError when n is too
    small for `level`: no finite band then covers a new point with that probability)."""
    if not 0 < level < 1:
        raise InputError(f"level: expected a number between 0 and 1, got {level!r}")
    r = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    k = math.ceil((len(r) + 1) * level - 1e-9)
    if k > len(r):
        raise InputError(f"a {level:.0%} band needs at least {math.ceil(level / (1 - level) - 1e-9)} checkpoints "
                         f"with test scores, held out by run (the fit has {len(r)}); score more runs or checkpoints")
    return float(r[k - 1])


def calibrate(curves: TrainingCurves | ScoreStore | str | Path, tau=None, level: float = LEVEL,
              pred: Prediction | None = None) -> Fit:
    """The saved calibration of a store's runs with test scores: premem.metrics.predict's fit at `tau` (a number,
    "auto", or None for its default rule), its band at `level`, and the band's leave-one-run-out coverage.

    pred: that fit, when already made on these curves with this tau (premem predict --save-fit reuses its own).
    """
    store = ""
    if not isinstance(curves, TrainingCurves):
        store = str(Path(curves.root if isinstance(curves, ScoreStore) else curves).resolve())
        curves = TrainingCurves.from_store(curves if isinstance(curves, ScoreStore) else ScoreStore(curves))
    shared = _SharedCurves.of(curves)
    pred = pred or predict(shared, tau)
    residuals = _held_out(pred)
    fit = Fit(tau=pred.tau, tau_mode=pred.tau_mode, slope=pred.slope, intercept=pred.intercept, r2=pred.r2,
              r2_loro=pred.r2_loro, mae=pred.mae, mae_loro=pred.mae_loro, level=level,
              half_width=half_width(residuals["test_acc"] - residuals["predicted_loro"], level),
              residuals=residuals, runs=sorted(residuals["run"].unique()), sample_tau=curves.min_tau,
              store=store, notes=list(pred.notes))
    fit.coverage_loro = loro_coverage(shared, tau, level)
    return fit


def _held_out(pred: Prediction) -> pd.DataFrame:
    pts = pred.points.dropna(subset=["test_acc", "predicted_loro"])  # premem undefined (sample=final): no residual
    return pts[["run", "step", "premem", "test_acc", "predicted_loro"]].reset_index(drop=True)


def loro_coverage(curves: TrainingCurves, tau=None, level: float = LEVEL) -> dict | None:
    """How often the band covers a run it was not made on: each run's test scores hidden in turn, the whole
    calibration (tau, line, held-out residuals, band) made on the others, that run's checkpoints predicted.
    None when fewer than 3 runs have test scores (the others could not make a held-out residual)."""
    curves = _SharedCurves.of(curves)
    runs = curves.scored_runs()
    if len(runs) < 3:
        return None
    inside, per_run = [], []
    for run in runs:
        try:
            pred = predict(curves.hide(run), tau)
            q = half_width(_held_out(pred).eval("test_acc - predicted_loro"), level)
        except InputError as e:  # too few checkpoints left for a band without this run
            log.info("band coverage: no band without run %r (%s)", run, e)
            return None
        pts = pred.points[pred.points["run"] == run].merge(curves.test, on=["run", "step"], suffixes=("_", ""))
        lower, upper = _band(pts["predicted"].to_numpy(dtype=float), q)
        hit = ((pts["test_acc"] >= lower) & (pts["test_acc"] <= upper)).to_numpy()
        inside += list(hit)
        per_run.append({"run": run, "covered": int(hit.sum()), "points": len(hit), "half_width": q})
    return {"covered": int(sum(inside)), "points": len(inside), "fraction": float(np.mean(inside)),
            "runs": len(per_run), "runs_covered": sum(r["covered"] == r["points"] for r in per_run),
            "per_run": per_run}


@dataclass
class _SharedCurves(TrainingCurves):
    """TrainingCurves whose points per tau are computed once and shared by its copies (dataclasses.replace keeps
    the cache), each of which hides one run's test scores: the coverage check refits with every run hidden in
    turn, and tau=auto reads dozens of taus each time."""

    cache: dict = field(default_factory=dict)
    all_test: pd.DataFrame | None = None  # the test scores of every run: the cache's, whichever copy fills it
    hidden: str | None = None  # the run whose test scores this copy hides

    @classmethod
    def of(cls, curves: TrainingCurves) -> "_SharedCurves":
        if isinstance(curves, cls):
            return curves
        return cls(curves.frame, curves.test, group=curves.group, dropped_test_runs=curves.dropped_test_runs,
                   min_tau=curves.min_tau, all_test=curves.test)

    def hide(self, run: str) -> "_SharedCurves":
        return dataclasses.replace(self, test=self.test[self.test["run"] != run], hidden=run)

    def points(self, tau: float) -> pd.DataFrame:
        if tau not in self.cache:
            self.cache[tau] = TrainingCurves(self.frame, self.all_test, self.group, min_tau=self.min_tau).points(tau)
        pts = self.cache[tau]
        return pts.assign(test_acc=pts["test_acc"].where(pts["run"] != self.hidden))


def _band(predicted: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    return np.clip(predicted - q, 0.0, 1.0), np.clip(predicted + q, 0.0, 1.0)


# -- the file -----------------------------------------------------------------------------


def save_fit(fit: Fit, path: str | Path) -> Path:
    """Write the fit as JSON, atomically (a reader never sees half a file). Check the path first
    (premem.files.check_output) where it could be an input."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(fit.to_dict(), indent=1) + "\n")
    return path


def load_fit(path: str | Path) -> Fit:
    """A fit file as written by save_fit; anything else is one InputError naming the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such fit file (premem predict --save-fit writes one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a fit file: {e}") from None
    read = _Reader(path, data)
    if read.get("format", str) != FORMAT:
        raise InputError(f"{path}: format {data['format']!r} is not {FORMAT} (written by another premem version?)")
    feature = read.get("feature", str)
    if feature != "premem":
        raise InputError(f"{path}: feature {feature!r}: only 'premem' fits can be read")
    band = read.get("band", dict)
    level = read.get("band.level", float, band)
    q = read.get("band.half_width", float, band)
    if not 0 < level < 1 or q < 0:
        raise InputError(f"{path}: band: level must be in (0, 1) and half_width >= 0, got {level!r}, {q!r}")
    tau = read.get("tau", float)
    sample_tau = read.get("sample_tau", float, optional=True)
    if sample_tau is not None and tau < sample_tau:
        raise InputError(f"{path}: tau {tau:g} is below sample_tau {sample_tau:g}, which no fit can be made at")
    return Fit(tau=tau, tau_mode=read.get("tau_mode", str), slope=read.get("slope", float),
               intercept=read.get("intercept", float), r2=read.get("r2", float, optional=True, nan=True),
               r2_loro=read.get("r2_loro", float, optional=True, nan=True), mae=read.get("mae", float),
               mae_loro=read.get("mae_loro", float), level=level, half_width=q, residuals=read.residuals(),
               runs=[str(r) for r in read.get("runs", list)], sample_tau=sample_tau,
               coverage_loro=read.get("band.coverage_loro", dict, band, optional=True),
               store=read.get("store", str, optional=True) or "",
               premem_version=read.get("premem_version", str), notes=read.get("notes", list, optional=True) or [])


class _Reader:
    """Fields of a fit file, each checked for its type; errors name the file and the field's dotted path."""

    def __init__(self, path: Path, data):
        if not isinstance(data, dict):
            raise InputError(f"{path}: not a fit file: expected a JSON object, got {type(data).__name__}")
        self.path, self.data = path, data

    def get(self, key: str, kind: type, within: dict | None = None, optional: bool = False, nan: bool = False):
        value = (self.data if within is None else within).get(key.rpartition(".")[2])
        if value is None and (optional or nan):
            return math.nan if nan else None
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              if kind is float else isinstance(value, kind))
        if not ok:
            what = "missing" if value is None else f"{value!r} is not {_KINDS[kind]}"
            raise InputError(f"{self.path}: field {key}: {what}")
        return float(value) if kind is float else value

    def residuals(self) -> pd.DataFrame:
        rows = self.get("residuals", list)
        cols = {"run": str, "step": int, "premem": float, "test_acc": float, "predicted_loro": float}
        for i, row in enumerate(rows):
            for col, kind in cols.items():
                value = row.get(col) if isinstance(row, dict) else None
                if not (isinstance(value, str) if kind is str else
                        isinstance(value, (int, float)) and not isinstance(value, bool)
                        and (kind is not int or float(value).is_integer())):
                    raise InputError(f"{self.path}: field residuals[{i}].{col}: {value!r} is not {_KINDS[kind]}")
        return pd.DataFrame(rows, columns=list(cols)).astype({"step": "int64"})


_KINDS = {float: "a finite number", int: "an integer", str: "a string", dict: "an object", list: "a list"}


# -- predicting from a fit ----------------------------------------------------------------


@dataclass
class Forecast:
    """What `premem predict --fit` reports: every checkpoint of a store predicted from a saved fit."""

    fit: Fit
    table: pd.DataFrame  # run, step, premem, predicted, lower, upper, test_acc, in_fit
    level: float
    half_width: float
    fit_path: str = ""

    def to_dict(self) -> dict:
        pts = self.table.astype(object).where(self.table.notna(), None)
        return {"fit": self.fit_path, "tau": self.fit.tau, "slope": self.fit.slope, "intercept": self.fit.intercept,
                "level": self.level, "half_width": self.half_width, "coverage_loro": self.fit.coverage_loro,
                "points": pts.to_dict(orient="records")}


def predict_from_fit(store: TrainingCurves | ScoreStore | str | Path, fit: Fit, level: float | None = None
                     ) -> pd.DataFrame:
    """Every checkpoint of every run in the store predicted from the fit: run, step, premem, predicted, lower,
    upper, test_acc (NaN where the run has none: it is not needed), in_fit (a run the fit was made on, so the
    comparison with its test_acc is in-sample, not a check). level: the band's, from the fit's held-out
    residuals (default: the level it was saved at)."""
    curves = store if isinstance(store, TrainingCurves) else TrainingCurves.from_store(
        store if isinstance(store, ScoreStore) else ScoreStore(store))
    if curves.min_tau is not None and fit.tau < curves.min_tau - 1e-12:
        raise InputError(f"the fit's tau {fit.tau:g} is below {curves.min_tau:g}, the sample_tau this store's "
                         "unsampled pairs were skipped at (exact only at or above it); score the store with "
                         f"sample=all or sample_tau <= {fit.tau:g}, or calibrate on runs scored like it")
    q = fit.half_width_at(level)
    pts = curves.points(fit.tau)
    predicted = (fit.slope * pts["premem"] + fit.intercept).to_numpy(dtype=float)
    lower, upper = _band(predicted, q)
    return pd.DataFrame({"run": pts["run"], "step": pts["step"], "premem": pts["premem"], "predicted": predicted,
                         "lower": lower, "upper": upper, "test_acc": pts["test_acc"].astype(float),
                         "in_fit": pts["run"].isin(fit.runs)})


def forecast(store: str | Path, fit: Fit | str | Path, level: float | None = None) -> Forecast:
    """predict_from_fit with what `premem predict --fit` prints about it; fit: a Fit or its file."""
    path = "" if isinstance(fit, Fit) else str(fit)
    fit = fit if isinstance(fit, Fit) else load_fit(fit)
    try:
        table = predict_from_fit(store, fit, level)
    except InputError as e:
        raise InputError(f"--fit {path}: {e}" if path else str(e)) from None
    return Forecast(fit, table, fit.level if level is None else level, fit.half_width_at(level), path)


def fit_summary(fit: Fit) -> str:
    """The fit and its band in three lines, as `premem predict --save-fit` and `--fit` print them."""
    cov = fit.coverage_loro
    checked = (f"leave-one-run-out: {cov['covered']} of {cov['points']} held-out checkpoints inside "
               f"({cov['fraction']:.0%}), all checkpoints of {cov['runs_covered']} of {cov['runs']} runs"
               if cov else "coverage not checked: fewer than 3 runs with test scores")
    r2 = "undefined" if math.isnan(fit.r2_loro) else f"{fit.r2_loro:.3f}"
    return "\n".join([
        f"fit on {len(fit.runs)} runs, {fit.n_points} checkpoints; tau = {fit.tau:g} ({fit.tau_mode}); "
        f"test_acc ~ {fit.slope:.3f} * premem + {fit.intercept:.3f}; LORO R2 {r2}, LORO MAE {fit.mae_loro:.3f}",
        f"band: {fit.level:.0%} prediction interval, predicted +/- {fit.half_width:.3f}; {checked}"])


def forecast_summary(fc: Forecast) -> str:
    """What `premem predict --fit` prints: the fit, then every checkpoint with its band and, where the run has
    test scores, the real test accuracy beside it and whether the band covers it."""
    t = fc.table.copy()
    has = t["test_acc"].notna()
    t["inside"] = np.where(has, np.where((t["test_acc"] >= t["lower"]) & (t["test_acc"] <= t["upper"]), "yes", "no"),
                           "-")
    t["run"] = t["run"] + np.where(t["in_fit"], " *", "")
    cols = ["run", "step", "premem", "predicted", "lower", "upper"] + (["test_acc", "inside"] if has.any() else [])
    lines = [f"fit: {fc.fit_path}" if fc.fit_path else "fit:", fit_summary(fc.fit)]
    if fc.level != fc.fit.level:
        lines.append(f"band here: {fc.level:.0%}, predicted +/- {fc.half_width:.3f} (not checked by leave-one-run-out)")
    lines.append("\n" + t[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    new = has & ~t["in_fit"]
    if new.any():
        n_in = int((t.loc[new, "inside"] == "yes").sum())
        lines.append(f"\n{n_in} of {int(new.sum())} checkpoints of runs the fit was not made on have test accuracy "
                     f"inside the {fc.level:.0%} band")
    if t["in_fit"].any():
        lines.append("* a run the fit was made on: its test accuracy beside the prediction is in-sample, not a check")
    return "\n".join(lines)
