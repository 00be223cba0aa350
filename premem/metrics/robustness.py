"""Per-example robustness and what predicts it (Kang et al., arXiv 2411.07681; DESIGN.md §1).

An example's robustness at a checkpoint is the accuracy of the answers sampled to its training prompt followed
by a perturbation (" First", " We know that": `premem score perturbations=[...]`, premem.sampling.perturb),
pooled over the perturbations: sum of n_correct / sum of n_samples in robustness_scores. The paper's per-example
claim: pre-memorization train accuracy predicts it, and plain train accuracy does not, because a memorized
example is answered right from its own prompt and wrong once the prompt changes.

Each example's robustness is joined with its predictors at the same checkpoint (premem.metrics.premem):

    premem      PreMem_t(i) at tau
    train_acc   acc_t(i), the accuracy of the unperturbed samples
    log_ppl     log ppl_t(i) of the gold trace (teacher forced)

`correlations` gives Pearson's and Spearman's coefficient of each with robustness (scipy.stats), pooled over the
runs and per run, over three sets of examples (SCOPES): each run's last checkpoint; every checkpoint; and, at the
last checkpoint, the examples answered right in every unperturbed sample (train accuracy 1, which cannot tell
them apart: the paper's "right but fragile" case). `compare` bootstraps, over examples, how much better premem's
Spearman coefficient is (in absolute value) than each other predictor's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from premem.errors import InputError
from premem.metrics.premem import TrainingCurves
from premem.store import ScoreStore

PREDICTORS = {
    "premem": "pre-memorization train accuracy",
    "train_acc": "train accuracy",
    "log_ppl": "gold-trace log-perplexity",
}
KEY = ["run", "step", "example_id"]
POOLED = "all runs"  # correlations' `runs` for the pooled rows
SCOPES = {  # correlations' `examples`: which (example, checkpoint) rows a coefficient is over
    "last": "each run's last checkpoint",
    "all": "every checkpoint",
    "solved": "each run's last checkpoint, examples with train accuracy 1",
}


def robustness(rows: pd.DataFrame) -> pd.DataFrame:
    """run, step, example_id, robustness, n_perturbed (samples under perturbation), one row per example and
    checkpoint, from robustness_scores rows (every perturbation pooled)."""
    sums = rows.groupby(KEY, as_index=False)[["n_correct", "n_samples"]].sum()
    return sums.assign(robustness=sums["n_correct"] / sums["n_samples"]).rename(
        columns={"n_samples": "n_perturbed"})[[*KEY, "robustness", "n_perturbed"]]


def examples(store: ScoreStore, tau: float, factor: float | None = None) -> pd.DataFrame:
    """Every trained example at every checkpoint with robustness scores: run, step, example_id, last (the run's
    last such checkpoint), robustness, n_perturbed, premem, train_acc, log_ppl, memorized. factor: memorization
    by the relative detector (premem.metrics.detectors) instead of tau."""
    if not store.has("robustness_scores"):
        raise InputError(f"{store.path('robustness_scores')}: table missing; score the runs with perturbations "
                         "(premem score perturbations='[\" First\", \" We know that\"]')")
    curves = TrainingCurves.from_store(store)
    if factor is None:
        ex = curves.per_example(tau)
    else:
        from premem.metrics.detectors import relative_per_example

        ex = relative_per_example(curves, factor)
    ex = ex.assign(log_ppl=curves.frame["log_ppl"].to_numpy()).rename(columns={"acc": "train_acc"})
    return join(ex, robustness(store.read("robustness_scores")))


def join(per_example: pd.DataFrame, robust: pd.DataFrame) -> pd.DataFrame:
    """The per-example predictors (run, step, example_id, premem, train_acc, log_ppl, ...) beside robustness."""
    out = per_example.merge(robust, on=KEY, how="inner", validate="one_to_one")
    if out.empty:
        raise InputError("robustness_scores: no (run, step, example) of it has train scores: were these runs' "
                         "training examples scored into the same store?")
    out["last"] = out["step"].eq(out.groupby("run")["step"].transform("max"))
    cols = [*KEY, "last", "robustness", "n_perturbed", *PREDICTORS]
    return out[cols + [c for c in out.columns if c not in cols]].sort_values(KEY, ignore_index=True)


def by_perturbation(store: ScoreStore, frame: pd.DataFrame) -> pd.DataFrame:
    """perturbation ("(none)": the unperturbed prompt), examples, accuracy: the accuracy of the samples of the
    examples at each run's last checkpoint in `frame` (examples()), with each prompt: how much each one costs."""
    last = frame.loc[frame["last"], KEY]
    rows = store.read("robustness_scores").merge(last, on=KEY)
    sums = rows.groupby("perturbation", sort=False).agg(examples=("example_id", "size"), n_correct=("n_correct", "sum"),
                                                         n_samples=("n_samples", "sum"))
    each = pd.DataFrame({"perturbation": sums.index, "examples": sums["examples"].to_numpy(),
                         "accuracy": (sums["n_correct"] / sums["n_samples"]).to_numpy()})
    none = pd.DataFrame({"perturbation": ["(none)"], "examples": [len(last)],
                         "accuracy": [float(frame.loc[frame["last"], "train_acc"].mean())]})
    return pd.concat([none, each], ignore_index=True)


def coefficients(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Pearson's r, Spearman's rho and rho's p-value; NaN where either side is constant or n < 3."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rho = stats.spearmanr(x, y)
        return float(stats.pearsonr(x, y).statistic), float(rho.statistic), float(rho.pvalue)


def scope(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one of SCOPES."""
    if name == "all":
        return frame
    last = frame[frame["last"]]
    return last[last["train_acc"].eq(1.0)] if name == "solved" else last


def correlations(frame: pd.DataFrame, predictors=tuple(PREDICTORS)) -> pd.DataFrame:
    """examples (a key of SCOPES), runs (POOLED or a run), predictor, n, mean_robustness, pearson, spearman,
    spearman_p: each predictor against robustness over the examples where both are defined (train_acc is constant
    over "solved": NaN there)."""
    rows = []
    for at in SCOPES:
        part = scope(frame, at)
        for runs, g in [(POOLED, part), *part.groupby("run", sort=True)]:
            for p in predictors:
                ok = g[[p, "robustness"]].dropna()
                r, rho, p_value = coefficients(ok[p].to_numpy(float), ok["robustness"].to_numpy(float))
                rows.append({"examples": at, "runs": runs, "predictor": p, "n": len(ok),
                             "mean_robustness": float(ok["robustness"].mean()) if len(ok) else np.nan,
                             "pearson": r, "spearman": rho, "spearman_p": p_value})
    return pd.DataFrame(rows)


def compare(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0, best: str = "premem") -> pd.DataFrame:
    """At each run's last checkpoint, pooled: |Spearman| of `best` minus |Spearman| of each other predictor, with a
    95% interval from resampling the examples (paired: the same resample for both), and in how many runs `best`'s
    |Spearman| is the larger (runs_ahead) or the same (runs_tied: premem equals train accuracy where nothing is
    memorized)."""
    last = frame[frame["last"]]
    others = [p for p in PREDICTORS if p != best]
    ok = last[[best, *others, "robustness", "run"]].dropna()
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(ok), len(ok)) for _ in range(n_boot)]
    y = ok["robustness"].to_numpy(float)

    def strength(p: str, idx=slice(None)) -> float:
        return abs(coefficients(ok[p].to_numpy(float)[idx], y[idx])[1])

    per_run = correlations(last).query("examples == 'last' and runs != @POOLED").pivot(
        index="runs", columns="predictor", values="spearman").abs()
    out = []
    for p in others:
        boot = np.array([strength(best, i) - strength(p, i) for i in draws])
        lo, hi = np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any() else (np.nan, np.nan)
        both = per_run[[best, p]].dropna()
        out.append({"predictor": p, f"|rho| {best}": strength(best), "|rho|": strength(p),
                    "difference": strength(best) - strength(p), "ci_low": lo, "ci_high": hi,
                    "runs_ahead": int((both[best] > both[p] + 1e-12).sum()),
                    "runs_tied": int(((both[best] - both[p]).abs() <= 1e-12).sum()), "runs": len(both)})
    return pd.DataFrame(out)


def binned(frame: pd.DataFrame, predictor: str, bins: int = 6) -> pd.DataFrame:
    """Mean robustness (± standard error) by bins of a predictor: its own values when it takes few (an accuracy
    over k samples), else quantile bins. x, mean, se, n per bin."""
    ok = frame[[predictor, "robustness"]].dropna()
    values = ok[predictor]
    groups = values if values.nunique() <= 12 else pd.qcut(values, bins, duplicates="drop")
    g = ok.groupby(groups, observed=True)
    out = pd.DataFrame({"x": g[predictor].mean(), "mean": g["robustness"].mean(), "se": g["robustness"].sem(),
                        "n": g["robustness"].size()})
    return out.reset_index(drop=True)
