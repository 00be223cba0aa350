"""Pre-memorization train accuracy (Kang et al. 2024, DESIGN.md §1) and its baselines.

For training example i at checkpoint t of one run:

    acc_t(i)    fraction of the k samples whose final answer is correct
    u_t(i)      = [ log(log(ppl_t(i))) >= tau ]      1 while the gold trace is not yet memorized
    PreMem_t(i) = min( max_{t' <= t} u_t'(i) * acc_t'(i),  acc_t(i) )

i.e. the best accuracy the model reached on i while it had not yet memorized i's trace,
capped by its accuracy now. The run-level figure is the mean over the examples the run
trained on (runs.train_example_ids; absent = all). Each (run, checkpoint) becomes one point
whose test accuracy the run-level figure predicts.

`TrainingCurves` sorts and filters the per-example table once, so evaluating many taus
(tau=auto searches a grid) costs one vectorised pass each.

Pairs premem score did not sample (train_scores.skipped, premem.store) have no accuracy (NaN):
their PreMem_t is 0 where M_{t-1} = 0, as sampling them would have given, else undefined (NaN).
Such skips are exact only for tau >= the run's recorded sample_tau, so a lower tau is refused
(`min_tau`). Per checkpoint, train_acc then covers the sampled pairs only, and premem the pairs
whose value is defined; `points` counts both (n_unsampled, n_premem_undefined) so readers can say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from premem.errors import InputError
from premem.store import ScoreStore
from premem.tables import log_log_perplexity  # noqa: F401  (u_t's one definition, shared with the sampler)

log = logging.getLogger(__name__)

# Kang et al.'s tau for GSM8K / Llama-3-8B (MATH: -1.7). The one place the number is written: every config's
# default and the default rule of premem.metrics.predict (where auto has too few runs to choose on) import it.
PAPER_TAU = -2.3

# The per-checkpoint features premem predicts test accuracy from. premem is the method;
# the rest are the baselines the paper compares against.
FEATURES = {
    "premem": "pre-memorization train accuracy",
    "train_acc": "train accuracy",
    "train_log_ppl": "mean train log-perplexity",
    "frac_memorized": "fraction of examples memorized",
}


def premem_accuracy(acc: np.ndarray, loglog: np.ndarray, group: np.ndarray, tau: float) -> np.ndarray:
    """PreMem_t per row, for rows sorted by (group, step); `group` labels one (run, example).

    acc is NaN on an unsampled pair (memorized at tau, premem.store): there PreMem_t = min(M_t, acc_t) is 0 when
    M_t (= M_{t-1}) is 0, whatever acc_t would have been, and undefined (NaN) otherwise."""
    not_memorized = loglog >= tau
    best_before = pd.Series(np.where(not_memorized, acc, 0.0)).groupby(group, sort=False).cummax().to_numpy()
    out = np.minimum(best_before, acc)
    return np.where(np.isnan(acc) & (best_before == 0), 0.0, out)


@dataclass
class TrainingCurves:
    """Per-example training metrics of every run, restricted to the examples each run trained on.

    `frame` holds run, step, example_id, acc, loglog, log_ppl, sorted by (run, example_id, step);
    `group` numbers its (run, example_id) pairs, computed once because every tau needs it.
    """

    frame: pd.DataFrame
    test: pd.DataFrame  # run, step, test_acc (mean over test examples); may be empty
    group: np.ndarray = None
    dropped_test_runs: list[str] = field(default_factory=list)  # test-score runs with no train scores: unused
    min_tau: float | None = None  # the lowest tau its unsampled pairs allow (runs.sample_tau); None: all sampled

    def __post_init__(self):
        if self.group is None:
            f = self.frame
            self.group = pd.factorize(pd.MultiIndex.from_arrays([f["run"], f["example_id"]]))[0]

    @classmethod
    def from_store(cls, store: ScoreStore) -> "TrainingCurves":
        train = store.read("train_scores")
        runs = store.runs()
        test = store.read("test_scores") if store.has("test_scores") else None
        return cls.from_tables(train, runs, test)

    @classmethod
    def from_tables(cls, train: pd.DataFrame, runs: pd.DataFrame, test: pd.DataFrame | None = None) -> "TrainingCurves":
        train = restrict_to_trained(train, runs)
        min_tau = lowest_exact_tau(train, runs)
        frame = pd.DataFrame(
            {
                "run": train["run"].to_numpy(),
                "step": train["step"].to_numpy(dtype=np.int64),
                "example_id": train["example_id"].to_numpy(dtype=np.int64),
                "acc": (train["n_correct"] / train["n_samples"]).to_numpy(dtype=float),
                "loglog": log_log_perplexity(train["perplexity"].to_numpy()),
                "log_ppl": np.log(train["perplexity"].to_numpy(dtype=float)),
            }
        )
        _refuse_unsampled("train_scores", train, allow_skipped=True)
        frame = frame.sort_values(["run", "example_id", "step"], kind="stable", ignore_index=True)
        if test is None or test.empty:
            test_acc = pd.DataFrame(columns=["run", "step", "test_acc"])
        else:
            _refuse_unsampled("test_scores", test)
            test_acc = (
                test.assign(test_acc=test["n_correct"] / test["n_samples"])
                .groupby(["run", "step"], as_index=False)["test_acc"]
                .mean()
            )
        return cls(frame, test_acc, dropped_test_runs=warn_unmatched_test(test_acc, frame), min_tau=min_tau)

    def scored_runs(self) -> list[str]:
        """Runs with test scores at a checkpoint that has train scores: the runs a fit can use."""
        trained = self.frame[["run", "step"]].drop_duplicates()
        return sorted(self.test.dropna(subset=["test_acc"]).merge(trained, on=["run", "step"])["run"].unique())

    def check_tau(self, tau: float) -> None:
        """Refuse a tau below the one the store's skips were decided at: there they would not be exact."""
        if self.min_tau is not None and tau < self.min_tau - 1e-12:
            raise InputError(f"tau {tau:g}: below {self.min_tau:g}, the sample_tau this store's unsampled pairs were "
                             f"skipped at (exact only for tau >= {self.min_tau:g}); use a higher tau, or score "
                             f"with sample=all or sample_tau <= {tau:g}")

    @property
    def n_unsampled(self) -> int:
        """(example, checkpoint) pairs not sampled (memorization-aware sampling): no accuracy."""
        return int(self.frame["acc"].isna().sum())

    def per_example(self, tau: float) -> pd.DataFrame:
        """run, step, example_id, acc, memorized, premem — one row per trained example and checkpoint.

        acc is NaN on an unsampled pair; premem too where it is undefined (premem_accuracy)."""
        self.check_tau(tau)
        f = self.frame
        return f[["run", "step", "example_id", "acc"]].assign(
            memorized=f["loglog"].to_numpy() < tau,
            premem=premem_accuracy(f["acc"].to_numpy(), f["loglog"].to_numpy(), self.group, tau),
        )

    def points(self, tau: float) -> pd.DataFrame:
        """One row per (run, step): every feature of FEATURES, and test_acc (NaN when not scored)."""
        ex = self.per_example(tau)
        ex = ex.assign(log_ppl=self.frame["log_ppl"].to_numpy(), unsampled=ex["acc"].isna(),
                       undefined=ex["premem"].isna())
        pts = ex.groupby(["run", "step"], as_index=False).agg(
            premem=("premem", "mean"),
            train_acc=("acc", "mean"),
            train_log_ppl=("log_ppl", "mean"),
            frac_memorized=("memorized", "mean"),
            n_examples=("example_id", "size"),
            n_unsampled=("unsampled", "sum"),
            n_premem_undefined=("undefined", "sum"),
        )
        return pts.merge(self.test, on=["run", "step"], how="left")


def _refuse_unsampled(table: str, df: pd.DataFrame, allow_skipped: bool = False) -> None:
    """A row with n_samples = 0 has no accuracy; averaging around it would quietly change the figure. Only a
    train pair premem score skipped on purpose (train_scores.skipped names why) is read, as unsampled."""
    zero = (df["n_samples"] == 0).to_numpy()
    if allow_skipped and "skipped" in df.columns:
        zero = zero & df["skipped"].fillna("").eq("").to_numpy()
    if zero.any():
        row = df.iloc[int(np.argmax(zero))]
        raise InputError(f"{table}: run {row['run']!r} step {int(row['step'])} example {int(row['example_id'])} "
                         "has n_samples = 0 and no skipped reason, so its accuracy is undefined")


def lowest_exact_tau(train: pd.DataFrame, runs: pd.DataFrame) -> float | None:
    """The lowest tau at which every skip in train is exact: the highest sample_tau of the runs with skipped
    pairs (None when every pair was sampled); a run with skips but no recorded sample_tau is refused."""
    if "skipped" not in train.columns:
        return None
    skipping = sorted(train.loc[train["skipped"].fillna("").ne(""), "run"].unique())
    if not skipping:
        return None
    taus = runs.set_index("run")["sample_tau"] if "sample_tau" in runs.columns else pd.Series(dtype=float)
    values = taus.reindex(skipping)
    if values.isna().any():
        run = values.index[int(np.argmax(values.isna().to_numpy()))]
        raise InputError(f"runs.parquet: run {run!r} has unsampled train pairs (train_scores.skipped) but no "
                         "sample_tau: the tau they were skipped at is unknown")
    return float(values.max())


def warn_unmatched_test(test_acc: pd.DataFrame, frame: pd.DataFrame) -> list[str]:
    """Test scores no training point matches are left out of every fit; say so, never silently
    (a typo in a run name would change R² with no word). Returns the runs left out whole."""
    if test_acc.empty:
        return []
    trained = frame[["run", "step"]].drop_duplicates()
    dropped = sorted(set(test_acc["run"]) - set(trained["run"]))
    if dropped:
        log.warning("test_scores: left out the test scores of %s: no run with train scores has that name",
                    ", ".join(map(repr, dropped)))
    kept = test_acc[test_acc["run"].isin(trained["run"])]
    lone = kept.merge(trained, on=["run", "step"], how="left", indicator=True)
    lone = lone[lone["_merge"] == "left_only"]
    if len(lone):
        first = lone.iloc[0]
        log.warning("test_scores: %d checkpoint(s) have test scores but no train scores and are left out "
                    "(first: run %r step %d)", len(lone), first["run"], int(first["step"]))
    return dropped


def restrict_to_trained(train: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Keep each run's rows for the examples it trained on (runs.train_example_ids; absent = all)."""
    unknown = sorted(set(train["run"].unique()) - set(runs["run"]))
    if unknown:
        raise InputError(f"train_scores: run {unknown[0]!r} is not in runs.parquet")
    if "train_example_ids" not in runs.columns:
        return train
    keep = np.ones(len(train), dtype=bool)
    for run, ids in zip(runs["run"], runs["train_example_ids"]):
        if ids is None or (isinstance(ids, float) and np.isnan(ids)):
            continue
        rows = (train["run"] == run).to_numpy()
        keep[rows] = train.loc[rows, "example_id"].isin(np.asarray(ids)).to_numpy()
    out = train[keep]
    empty = sorted(set(train["run"]) - set(out["run"]))
    if empty:
        raise InputError(f"runs.parquet: run {empty[0]!r} has no train scores for any of its train_example_ids")
    return out
