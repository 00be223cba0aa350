"""The score store's tables: which columns each must have, and the checks a table must pass.

DESIGN.md §3 fixes runs, train_scores and test_scores; samples and datasets are premem
score's own (see premem.store), probe_scores premem probe track's. Every table has a key,
the columns that identify a row; `validate` raises InputError with one line naming the
file (or what was being written) and the first bad row.

Memorization-aware sampling (premem score sample=exact|final) leaves some training pairs
unsampled; how such a row is recorded is part of the contract (premem.store's docstring):
train_scores.skipped names the reason (SKIP_REASONS), n_samples = n_correct = 0, and the
run's row of runs.parquet records `sample` and `sample_tau`, the tau the skips were decided at.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from premem.errors import InputError


@dataclass(frozen=True)
class TableSpec:
    key: tuple[str, ...]  # columns that identify a row; unique within the table
    ints: tuple[str, ...] = ()  # required non-negative integer columns
    floats: tuple[str, ...] = ()  # required positive float columns
    reals: tuple[str, ...] = ()  # required finite float columns, any sign (log-probabilities)
    counts: bool = False  # has n_samples / n_correct to check against each other
    strs: tuple[str, ...] = ("run",)  # required string columns
    nullable_strs: tuple[str, ...] = ()  # required columns holding a string or null
    bools: tuple[str, ...] = ()  # required true/false columns
    floors: tuple[tuple[str, float, str], ...] = ()  # (column, least possible value, why): values below are impossible

    @property
    def required(self) -> list[str]:
        cols = self.key + self.ints + self.floats + self.reals + self.strs + self.nullable_strs + self.bools
        return list(dict.fromkeys(cols))


SCORE_KEY = ("run", "step", "example_id")
SCORE_INTS = ("step", "example_id", "n_samples", "n_correct")
TABLES: dict[str, TableSpec] = {
    "runs": TableSpec(key=("run",)),
    "train_scores": TableSpec(SCORE_KEY, ints=SCORE_INTS, floats=("perplexity",), counts=True,
                              floors=(("perplexity", 1.0, "exp of a mean token NLL (>= 0)"),)),
    "test_scores": TableSpec(SCORE_KEY, ints=SCORE_INTS, counts=True),
    "samples": TableSpec(
        ("run", "step", "split", "example_id", "sample"),
        ints=("step", "example_id", "sample", "n_tokens"),
        strs=("run", "split", "text"),
        nullable_strs=("answer_strict", "answer_flexible"),
        bools=("correct_strict", "correct_flexible"),
    ),
    "datasets": TableSpec(
        ("split",), ints=("n_examples",), strs=("split", "path", "fingerprint", "example_ids_sha256", "format", "grader")
    ),
    # the curation loop's record (premem.curate.loop): one row per round, and every example by the round
    # that added it (template_id: the example of the round before it was made like; -1 for the start data)
    "curation_rounds": TableSpec(
        ("round",), ints=("round", "examples", "added"),
        strs=("strategy", "generator", "data_sha256", "run_dir", "store_dir"),
    ),
    "curation_examples": TableSpec(("round", "example_id"), ints=("round", "example_id"), strs=("question",)),
    # premem probe track (premem.sampling.probes): log π(response | prompt) of every probe response at every
    # checkpoint; text holds the greedy response y* (type greedy), which changes with the checkpoint, else null
    "probe_scores": TableSpec(
        ("run", "step", "probe_id", "type"), ints=("step", "probe_id", "n_tokens"),
        reals=("sum_logprob", "mean_logprob"), strs=("run", "type"), nullable_strs=("text",),
    ),
    # premem score perturbations=[...] (premem.sampling.perturb): k graded samples per training query whose prompt
    # is followed by each perturbation, at every checkpoint (Kang et al.'s per-example robustness), and the samples
    "robustness_scores": TableSpec(SCORE_KEY + ("perturbation",), ints=SCORE_INTS, counts=True,
                                   strs=("run", "perturbation")),
    "robustness_samples": TableSpec(
        ("run", "step", "example_id", "perturbation", "sample"),
        ints=("step", "example_id", "sample", "n_tokens"),
        strs=("run", "perturbation", "text"),
        nullable_strs=("answer_strict", "answer_flexible"),
        bools=("correct_strict", "correct_flexible"),
    ),
}


# -- memorization-aware sampling: the pairs premem score does not sample ------------------------

SAMPLE_MODES = ("exact", "final", "all")  # premem score's sample= (premem.sampling.skipping)
SKIP_REASONS = {
    "exact": "memorized at this checkpoint (log(log(ppl)) < sample_tau) and accuracy 0 at every earlier unmemorized "
             "one: PreMem_t is 0 whatever acc_t is",
    "final": "memorized at a checkpoint before the run's last (sample=final): the final PreMem never reads acc_t",
}
LOWEST_AUTO_TAU = -4.0
"""The low end of premem predict's tau=auto grid (premem.metrics.predict.TAU_GRID starts here), and so the
default sample_tau of premem score: every tau auto may choose is at or above it, where skipping stays exact."""


def log_log_perplexity(perplexity) -> np.ndarray:
    """log(log(ppl)); -inf where ppl <= 1 (a trace reproduced exactly is memorized).

    u_t = [log(log(ppl_t)) >= tau] of DESIGN.md §1. Written once here, below both stages that read it: the
    sampler decides a skip with it and the metrics recompute the same value from the stored perplexity."""
    ppl = np.asarray(perplexity, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.log(ppl))
    return np.where(ppl > 1.0, out, -np.inf)


def example_ids_sha256(ids) -> str:
    """sha256 of the sorted example ids, one per line: the datasets table's example_ids_sha256."""
    return hashlib.sha256("".join(f"{int(i)}\n" for i in sorted(ids)).encode()).hexdigest()


def validate(table: str, df: pd.DataFrame, where: str) -> None:
    """Check a table against the contract; raise InputError naming `where` and the row."""
    spec = TABLES.get(table)
    if spec is None:
        return  # further tables without a spec (probes) carry their own checks
    required = spec.required
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing required column {missing[0]!r} (has: {', '.join(map(str, df.columns))})")
    for col in required:
        bad = df[col].isna().to_numpy()
        if bad.any() and col not in spec.nullable_strs:
            row = int(np.argmax(bad))
            what = "NaN" if pd.api.types.is_float_dtype(df[col]) else "empty"  # NaN: a number that is not one
            raise InputError(f"{where} row {row}: {col} is {what}")
    for col in spec.strs + spec.nullable_strs:
        bad = _not_str(df[col]) & (df[col].notna().to_numpy() if col in spec.nullable_strs else True)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{where} row {row}: {col} must be a string, got {df[col].iloc[row]!r}")
    for col in spec.bools:
        if not pd.api.types.is_bool_dtype(df[col]):
            bad = ~df[col].map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(f"{where} row {row}: {col} must be true or false, got {df[col].iloc[row]!r}")
    for col in spec.ints:
        values = df[col].to_numpy()
        if not pd.api.types.is_integer_dtype(df[col]):
            as_float = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(f"{where} row {row}: {col} must be an integer, got {values[row]!r}")
        neg = pd.to_numeric(df[col]).to_numpy() < 0
        if neg.any():
            row = int(np.argmax(neg))
            raise InputError(f"{where} row {row}: {col} is negative ({values[row]})")
    for col in spec.floats:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{where} row {row}: {col} must be a positive number, got {_py(df[col].iloc[row])!r}")
    for col, least, why in spec.floors:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        below = values < least - 1e-6  # float rounding of a perfectly memorized trace may land a hair under
        if below.any():
            row = int(np.argmax(below))
            raise InputError(f"{where} row {row}: {col} is {_py(df[col].iloc[row])!r}, below {least:g}: impossible "
                             f"for {why}")
    for col in spec.reals:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{where} row {row}: {col} must be a finite number, got {_py(df[col].iloc[row])!r}")
    if spec.counts:
        over = df["n_correct"].to_numpy() > df["n_samples"].to_numpy()
        if over.any():
            row = int(np.argmax(over))
            raise InputError(
                f"{where} row {row}: n_correct ({df['n_correct'].iloc[row]}) > n_samples ({df['n_samples'].iloc[row]})"
            )
    dup = df.duplicated(list(spec.key), keep="first").to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        key = ", ".join(f"{c}={_py(df[c].iloc[row])!r}" for c in spec.key)
        raise InputError(f"{where} row {row}: duplicate key ({key})")
    if table == "train_scores" and "skipped" in df.columns:
        _check_skipped(df, where)
    if table == "runs":
        _check_sample_settings(df, where)
    if table == "runs" and "train_example_ids" in df.columns:
        for row, ids in enumerate(df["train_example_ids"]):
            if ids is None or (isinstance(ids, float) and np.isnan(ids)):
                continue
            arr = np.asarray(ids)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise InputError(f"{where} row {row}: train_example_ids must be a list of integers")


def _check_skipped(df: pd.DataFrame, where: str) -> None:
    """train_scores.skipped: null or "" for a sampled pair, else a reason of SKIP_REASONS with no samples."""
    reason = df["skipped"].fillna("")
    known = reason.isin(["", *SKIP_REASONS]).to_numpy()
    if not known.all():
        row = int(np.argmax(~known))
        raise InputError(f"{where} row {row}: skipped must be empty or one of {', '.join(SKIP_REASONS)}, "
                         f"got {_py(df['skipped'].iloc[row])!r}")
    sampled = (reason.ne("") & df["n_samples"].ne(0)).to_numpy()
    if sampled.any():
        row = int(np.argmax(sampled))
        raise InputError(f"{where} row {row}: skipped is {reason.iloc[row]!r} but n_samples is "
                         f"{_py(df['n_samples'].iloc[row])} (an unsampled pair has n_samples = 0)")


def _check_sample_settings(df: pd.DataFrame, where: str) -> None:
    """runs.sample / runs.sample_tau (optional): how premem score chose the pairs it sampled."""
    if "sample" in df.columns:
        bad = ~df["sample"].isna().to_numpy() & ~df["sample"].isin(SAMPLE_MODES).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{where} row {row}: sample must be one of {', '.join(SAMPLE_MODES)}, "
                             f"got {_py(df['sample'].iloc[row])!r}")
    if "sample_tau" in df.columns:
        values = pd.to_numeric(df["sample_tau"], errors="coerce").to_numpy(dtype=float)
        bad = np.isinf(values) | (np.isnan(values) & df["sample_tau"].notna().to_numpy())
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{where} row {row}: sample_tau must be a finite number, got "
                             f"{_py(df['sample_tau'].iloc[row])!r}")


def _not_str(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.StringDtype):
        return np.zeros(len(col), dtype=bool)  # every non-null value is a str
    return ~col.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)


def _py(value):
    """A numpy scalar as the Python value it holds, for messages (10, not np.int64(10))."""
    return value.item() if isinstance(value, np.generic) else value
