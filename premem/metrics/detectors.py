"""Memorization detectors with no global hand-set threshold, compared with tau by nested leave-one-run-out.

premem marks a pair memorized when log(log(ppl)) < tau, one number for every run and example (tau=auto picks
it by nested leave-one-run-out). A detector here replaces that step by a not-memorized weight w_t(i) in [0, 1]
and the same recursion (premem.metrics.premem):

    PreMem_t(i) = min( max_{t' <= t} w_t'(i) * acc_t'(i),  acc_t(i) )

    tau       the step w = [loglog >= tau]: premem's own rule, here to check the harness against predict's auto
    soft      a logistic w = sigmoid((loglog - centre) / scale): memorization as a matter of degree
    relative  memorized once log(ppl_t(i)) < factor * log(ppl_first(i)), the example's own value at its first
              checkpoint in the run: each example's threshold is set by where it started, not by one global
              number (so nothing counts as memorized at a run's first checkpoint, nor in a one-checkpoint run)
    gmm       a two-component Gaussian mixture on loglog of the fitting runs' pairs: w = the posterior of the
              higher (not memorized) component, made monotone; no parameter is chosen by test scores at all

Every free parameter (centre, scale, factor, the mixture) is chosen or fitted on the other runs only: for each
held-out run, on the other runs' pairs and, where test scores choose it, by those runs' own leave-one-run-out R²
(`nested_loro`), exactly as tau=auto is. A store's unsampled pairs (premem.store) were memorized at its
sample_tau and have no accuracy: every detector counts a pair below the store's sample_tau as memorized (w = 0),
so a skip never hides a contribution; where a soft weight leaves M_{t-1} > 0 over a skip, PreMem_t is undefined
(NaN) and the notes count it, as for sample=final. The store keeps one perplexity per trace, no per-token
log-probs, so a detector on the final answer's span alone cannot be built from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.metrics import mean_absolute_error
from sklearn.mixture import GaussianMixture

from premem.errors import InputError
from premem.metrics.predict import (
    AUTO_MIN_RUNS, TAU_GRID, Line, Prediction, _r2_note, fit_table, loro_predictions, r2, sampling_notes,
    score_feature)
from premem.metrics.premem import FEATURES, PAPER_TAU, TrainingCurves
from premem.store import ScoreStore

Params = tuple  # a detector's parameters, hashable: the cache key of its feature


class Detector:
    """How memorized each pair is: `weight` (1 = not memorized) under `params`, which `candidates` offers
    from the fitting runs' rows alone; ties in leave-one-run-out R² go to the lowest `prefer`."""

    name = ""
    about = ""

    def candidates(self, fit: pd.DataFrame, min_tau: float | None) -> list[Params]:
        raise NotImplementedError

    def weight(self, frame: pd.DataFrame, params: Params) -> np.ndarray:
        raise NotImplementedError

    def prefer(self, params: Params) -> float:
        return 0.0

    def describe(self, params: Params) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in zip(self.keys, params))

    keys: tuple[str, ...] = ()


class Step(Detector):
    name, about, keys = "tau", "step at one tau: memorized when log(log(ppl)) < tau (premem's rule)", ("tau",)

    def candidates(self, fit, min_tau):
        return [(t,) for t in TAU_GRID if min_tau is None or t >= min_tau - 1e-12]

    def weight(self, frame, params):
        return (frame["loglog"].to_numpy() >= params[0]).astype(float)

    def prefer(self, params):
        return abs(params[0] - PAPER_TAU)  # predict.choose_tau's tie rule


class Soft(Detector):
    name, about, keys = "soft", "logistic weight sigmoid((log(log(ppl)) - centre) / scale)", ("centre", "scale")
    SCALES = (0.1, 0.25, 0.5, 1.0)

    def candidates(self, fit, min_tau):
        return [(c, s) for c in TAU_GRID for s in self.SCALES]

    def weight(self, frame, params):
        centre, scale = params
        return expit((frame["loglog"].to_numpy() - centre) / scale)

    def prefer(self, params):
        return abs(params[0] - PAPER_TAU) + params[1]


class Relative(Detector):
    name, keys = "relative", ("factor",)
    about = "memorized once log(ppl) < factor * the example's log(ppl) at its run's first checkpoint"
    FACTORS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    def candidates(self, fit, min_tau):
        return [(f,) for f in self.FACTORS]

    def weight(self, frame, params):
        log_ppl = frame["log_ppl"].to_numpy()
        first = first_log_ppl(frame)
        # ppl <= 1 is a trace reproduced exactly: memorized whatever it started at (loglog = -inf, as for tau)
        memorized = (log_ppl < params[0] * np.maximum(first, 0.0)) | (log_ppl <= 0)
        return (~memorized).astype(float)

    def prefer(self, params):
        return abs(math.log(params[0] / 0.1))  # exact ties only (a flat R²): the middle of the grid, in log


class Mixture(Detector):
    name, keys = "gmm", ("low_mean", "high_mean")
    about = "posterior of the not-memorized component of a 2-Gaussian mixture on log(log(ppl)), fitted per fold"
    SAMPLE = 20000  # pairs the mixture is fitted on: a fold of the paper store has ~300k

    def candidates(self, fit, min_tau):
        x = fit["loglog"].to_numpy()
        x = x[np.isfinite(x)]
        if len(x) > self.SAMPLE:
            x = np.random.default_rng(0).choice(x, self.SAMPLE, replace=False)
        gmm = GaussianMixture(2, random_state=0).fit(x.reshape(-1, 1))
        order = np.argsort(gmm.means_.ravel())
        means, sds = gmm.means_.ravel()[order], np.sqrt(gmm.covariances_.ravel()[order])
        return [(*means, *sds, *gmm.weights_[order])]

    def weight(self, frame, params):
        (m0, m1, s0, s1, p0, p1), x = params, frame["loglog"].to_numpy()
        grid = np.linspace(m0 - 4 * s0, m1 + 4 * s1, 2001)
        log0 = np.log(p0) - np.log(s0) - 0.5 * ((grid - m0) / s0) ** 2
        log1 = np.log(p1) - np.log(s1) - 0.5 * ((grid - m1) / s1) ** 2
        # the broader component wins both tails of a 2-Gaussian posterior: keep it rising with loglog
        post = np.maximum.accumulate(expit(log1 - log0))
        return np.interp(np.where(np.isfinite(x), x, grid[0]), grid, post, left=0.0, right=1.0)

    def describe(self, params):
        m0, m1, s0, s1 = params[:4]
        return f"memorized mean {m0:.2f} (sd {s0:.2f}), not memorized {m1:.2f} (sd {s1:.2f})"


DETECTORS: dict[str, Detector] = {d.name: d for d in (Step(), Soft(), Relative(), Mixture())}


def first_log_ppl(frame: pd.DataFrame) -> np.ndarray:
    """Each row's (run, example) log-perplexity at its first checkpoint; the frame is sorted by run, example, step."""
    return frame.groupby(["run", "example_id"], sort=False)["log_ppl"].transform("first").to_numpy()


def weighted_premem(acc: np.ndarray, weight: np.ndarray, group: np.ndarray) -> np.ndarray:
    """PreMem_t per row with a not-memorized weight; premem_accuracy's rule where the weight is 0 or 1.

    An unsampled pair (acc NaN) adds nothing where its weight is 0; PreMem_t there is 0 where M_t = 0, else NaN."""
    contribution = np.where(weight > 0, weight * acc, 0.0)
    best = pd.Series(contribution).groupby(group, sort=False).cummax().to_numpy()
    out = np.minimum(best, acc)
    return np.where(np.isnan(acc) & (best == 0), 0.0, out)


class Evaluator:
    """One store's curves, with the per-checkpoint points every detector shares (test accuracy, baselines)."""

    def __init__(self, curves: TrainingCurves):
        self.curves, f = curves, curves.frame
        keys = f.groupby(["run", "step"], sort=True)
        self.codes = keys.ngroup().to_numpy()
        base = keys.agg(train_acc=("acc", "mean"), train_log_ppl=("log_ppl", "mean"),
                        n_examples=("example_id", "size"), n_unsampled=("acc", lambda a: int(a.isna().sum())))
        self.base = base.reset_index().merge(curves.test, on=["run", "step"], how="left")
        self.scored = self.base["test_acc"].notna().to_numpy()
        self.y = self.base["test_acc"].to_numpy(dtype=float)[self.scored]
        self.runs = self.base["run"].to_numpy()[self.scored]
        self.floor = skipped(curves)
        self._cache: dict[tuple, np.ndarray] = {}

    def per_row(self, detector: Detector, params: Params) -> tuple[np.ndarray, np.ndarray]:
        return detector_rows(self.curves, detector, params, self.floor)

    def feature(self, detector: Detector, params: Params) -> np.ndarray:
        """Mean PreMem per (run, step) over the pairs where it is defined, at the scored points."""
        key = (detector.name, params)
        if key not in self._cache:
            premem = self.per_row(detector, params)[1]
            defined = ~np.isnan(premem)
            sums = np.bincount(self.codes, np.where(defined, premem, 0.0), minlength=len(self.base))
            counts = np.bincount(self.codes, defined.astype(float), minlength=len(self.base))
            if (counts[self.scored] == 0).any():  # sample=final skipped every pair of a checkpoint: no figure
                row = self.base[self.scored].iloc[int(np.argmax(counts[self.scored] == 0))]
                raise InputError(f"detector {detector.name}: run {row['run']!r} step {int(row['step'])} has no pair "
                                 "whose pre-memorization accuracy is defined (sample=final skipped them)")
            self._cache[key] = (sums / np.maximum(counts, 1))[self.scored]
        return self._cache[key]

    def choose(self, detector: Detector, params: list[Params], keep: np.ndarray) -> Params:
        """The candidate with the best leave-one-run-out R² over the points `keep` (the fitting runs)."""
        y, runs = self.y[keep], self.runs[keep]

        def score(p):
            value = r2(y, loro_predictions(self.feature(detector, p)[keep], y, runs))
            return round(value, 12) if math.isfinite(value) else -math.inf

        return max(params, key=lambda p: (score(p), -detector.prefer(p)))

    def fit_params(self, detector: Detector, held: str | None) -> Params:
        """The detector's parameters chosen without run `held` (None: on all runs): its pairs, its test scores."""
        frame = self.curves.frame
        fit = frame if held is None else frame[frame["run"].to_numpy() != held]
        candidates = detector.candidates(fit, self.curves.min_tau)
        if not candidates:
            raise InputError(f"detector {detector.name}: no candidate at or above the store's sample_tau "
                             f"{self.curves.min_tau:g}")
        keep = np.ones(len(self.y), bool) if held is None else self.runs != held
        return candidates[0] if len(candidates) == 1 else self.choose(detector, candidates, keep)


@dataclass
class Comparison:
    """One detector's nested leave-one-run-out figures on one store."""

    detector: str
    r2_loro: float
    mae_loro: float
    params: Params  # chosen on all runs
    params_per_run: dict[str, Params] = field(default_factory=dict)
    held_out: np.ndarray | None = None


def nested_loro(ev: Evaluator, detector: Detector) -> Comparison:
    """Each run's test accuracy predicted by a line on the other runs, at parameters chosen on them alone."""
    nested, per_run = np.empty_like(ev.y), {}
    for run in np.unique(ev.runs):
        held = ev.runs == run
        p = ev.fit_params(detector, run)
        per_run[str(run)] = p
        x = ev.feature(detector, p)
        nested[held] = Line(x[~held], ev.y[~held]).predict(x[held])
    return Comparison(detector.name, r2(ev.y, nested) if len(ev.y) > 2 else math.nan,
                      float(mean_absolute_error(ev.y, nested)), ev.fit_params(detector, None), per_run, nested)


def best_fixed_tau(ev: Evaluator) -> tuple[float, float]:
    """(tau, in-sample R²) of the grid's best tau: the reference auto-tau cannot see out of sample."""
    step = DETECTORS["tau"]
    scores = {p[0]: r2(ev.y, Line(ev.feature(step, p), ev.y).predict(ev.feature(step, p)))
              for p in step.candidates(None, ev.curves.min_tau)}
    tau = max(scores, key=lambda t: (scores[t], -abs(t - PAPER_TAU)))
    return tau, scores[tau]


def load(store) -> TrainingCurves:
    return store if isinstance(store, TrainingCurves) else TrainingCurves.from_store(
        store if isinstance(store, ScoreStore) else ScoreStore(store))


@dataclass
class DetectorPrediction(Prediction):
    """`premem predict --detector`: Prediction's figures, with the detector and its parameters per held-out run."""

    detector: str = "tau"
    params: str = ""
    params_per_run: dict[str, str] = field(default_factory=dict)

    @property
    def rule(self) -> str:
        return (f"detector {self.detector} ({DETECTORS[self.detector].about}); chosen by nested leave-one-run-out: "
                f"{self.params}")

    def to_dict(self) -> dict:
        # no tau: the detector's parameters say how memorization was decided
        return {**super().to_dict(), "tau": None, "tau_mode": None, "detector": self.detector, "params": self.params,
                "params_per_run": self.params_per_run}


def predict_with(store, detector: str) -> DetectorPrediction:
    """The fit of test accuracy on the detector's PreMem, its parameters chosen as tau=auto chooses tau."""
    if detector not in DETECTORS:
        raise InputError(f"detector: expected one of {', '.join(DETECTORS)}, got {detector!r}")
    ev, det = Evaluator(load(store)), DETECTORS[detector]
    n_runs = len(np.unique(ev.runs))
    if n_runs < AUTO_MIN_RUNS:
        raise InputError(f"detector {detector}: needs test scores for at least {AUTO_MIN_RUNS} runs to choose its "
                         f"parameters by nested leave-one-run-out (the store has {n_runs})")
    cmp = nested_loro(ev, det)
    w, premem = ev.per_row(det, cmp.params)
    f = ev.curves.frame
    rows = pd.DataFrame({"code": ev.codes, "premem": premem, "memorized": 1.0 - w, "undefined": np.isnan(premem)})
    agg = rows.groupby("code").agg(premem=("premem", "mean"), frac_memorized=("memorized", "mean"),
                                   n_premem_undefined=("undefined", "sum"))
    points = ev.base.assign(**{c: agg[c].to_numpy() for c in agg.columns})
    main, _, _ = score_feature(points["premem"].to_numpy(dtype=float)[ev.scored], ev.y, ev.runs)
    main.r2_loro, main.mae_loro = cmp.r2_loro, cmp.mae_loro
    baselines = {name: score_feature(points[name].to_numpy(dtype=float)[ev.scored], ev.y, ev.runs)[0]
                 for name in FEATURES if name != "premem"}
    points["predicted"] = main.intercept + main.slope * points["premem"]
    points["predicted_loro"] = np.nan
    points.loc[ev.scored, "predicted_loro"] = cmp.held_out
    points = points[["run", "step", *FEATURES, "n_examples", "n_unsampled", "n_premem_undefined", "test_acc",
                     "predicted", "predicted_loro"]]
    return DetectorPrediction(
        tau=math.nan, tau_mode="auto", n_points=int(ev.scored.sum()), n_runs=n_runs, baselines=baselines,
        points=points, dropped_test_runs=list(ev.curves.dropped_test_runs), r2_note=_r2_note(ev.y),
        notes=sampling_notes(points[ev.scored], ev.curves) if f["acc"].isna().any() else [], detector=detector,
        params=det.describe(cmp.params), params_per_run={r: det.describe(p) for r, p in cmp.params_per_run.items()},
        **asdict(main))


def summary(pred: DetectorPrediction) -> str:
    """What `premem predict --detector` prints: the fit table, the parameters per held-out run, every point."""
    per_run = sorted(set(pred.params_per_run.values()))
    cols = ["run", "step", "premem", "train_acc", "frac_memorized", "test_acc", "predicted", "predicted_loro"]
    return "\n".join([fit_table(pred), f"\nparameters chosen for each held-out run: {per_run}", "",
                      pred.points[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")])


def skipped(curves: TrainingCurves) -> np.ndarray | None:
    """Per row of curves.frame: below the store's sample_tau, where premem score may have skipped the pair (None
    when nothing was skipped). Every detector counts those pairs memorized, so a skip never hides a contribution."""
    return curves.frame["loglog"].to_numpy() < curves.min_tau if curves.min_tau is not None else None


def detector_rows(curves: TrainingCurves, detector: Detector, params: Params,
                  floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(not-memorized weight, PreMem) per row of curves.frame under the detector; floor: skipped(curves)."""
    w = np.clip(detector.weight(curves.frame, params), 0.0, 1.0)
    w = w if floor is None else np.where(floor, 0.0, w)
    return w, weighted_premem(curves.frame["acc"].to_numpy(), w, curves.group)


def relative_per_example(curves: TrainingCurves, factor: float) -> pd.DataFrame:
    """TrainingCurves.per_example's columns (run, step, example_id, acc, memorized, premem) with memorization
    decided by the relative detector at `factor`; a pair the store skipped at its sample_tau stays memorized."""
    weight, premem = detector_rows(curves, DETECTORS["relative"], (factor,), skipped(curves))
    return curves.frame[["run", "step", "example_id", "acc"]].assign(memorized=weight == 0, premem=premem)


def chosen_factor(store) -> float:
    """The relative detector's factor, chosen on all of the store's runs with test scores as `premem predict
    --detector relative` chooses it (by their leave-one-run-out R²)."""
    return float(nested_loro(Evaluator(load(store)), DETECTORS["relative"]).params[0])
