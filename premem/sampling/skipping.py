"""Memorization-aware sampling: the training pairs `premem score` need not sample (ScoreConfig.sample).

With u_t = [log(log(ppl_t)) >= tau] and M_t = max_{t' <= t} u_t' * acc_t' (DESIGN.md §1,
premem.metrics.premem), PreMem_t = min(M_t, acc_t). When u_t = 0 (memorized) and M_{t-1} = 0,
M_t = 0 and PreMem_t = 0 whatever acc_t is; and the final PreMem_T never reads acc_t at a
non-final t with u_t = 0. Perplexity is one teacher-forced pass, sampling k answers is the cost, so:

    exact  per checkpoint, perplexities first; skip a pair when u_t = 0 and M_{t-1} = 0.
           PreMem at every checkpoint equals sampling everything.
    final  also skip every memorized pair before the run's last checkpoint: the final
           per-example PreMem (what curation reads) equals sampling everything.
    all    sample every pair (train accuracy, a baseline, needs every pair).

A skip decided at tau_s stays exact for every tau >= tau_s: a higher tau only marks more pairs
memorized (u_t falls) and so only lowers M_{t-1}. The run records tau_s (runs.sample_tau) and the
readers refuse a lower tau. M_{t-1} needs the earlier checkpoints of the same examples, so a
shard's train tasks run in step order (`Chains`): each is released when the one before it is
written, carrying a `SkipRule` the actor applies between the perplexities and the sampling.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from premem.errors import InputError
from premem.store import ScoreStore
from premem.tables import LOWEST_AUTO_TAU, SAMPLE_MODES, log_log_perplexity

__all__ = ["SAMPLE_MODES", "LOWEST_AUTO_TAU", "SkipRule", "Chains", "plan_skipping", "contributions", "replay"]


@dataclass(frozen=True)
class SkipRule:
    """Which queries of one train task to sample, decided on the actor once their perplexities are known."""

    tau: float  # sample_tau: memorized when log(log(ppl)) < tau
    best_before: tuple[float, ...]  # M_{t-1} at tau, per query of the task (0: never accurate while unmemorized)
    before_last: bool  # sample=final at a checkpoint before the run's last: a memorized pair is never read

    def reasons(self, perplexities) -> list[str]:
        """Per query: "" (sample it), "exact" or "final" (skip it, and why: premem.tables.SKIP_REASONS)."""
        memorized = log_log_perplexity(perplexities) < self.tau
        out = []
        for m, best in zip(memorized, self.best_before):
            if not m:
                out.append("")
            elif best == 0:
                out.append("exact")
            else:
                out.append("final" if self.before_last else "")
        return out

    def to_sample(self, targets) -> list[bool]:
        """What the actor asks (premem.sampling.actors): which queries to sample, given their TargetLogprobs."""
        return [r == "" for r in self.reasons([t.perplexity for t in targets])]


def contributions(rows: pd.DataFrame, tau: float, where: str) -> pd.DataFrame:
    """example_id, step, value = u_t * acc_t at tau of train score rows: what M_t is the running max of."""
    loglog = log_log_perplexity(rows["perplexity"].to_numpy())
    n = rows["n_samples"].to_numpy()
    unmemorized = loglog >= tau
    unknown = unmemorized & (n == 0)
    if unknown.any():  # an unsampled pair that is not memorized at tau: the store was scored at a higher tau
        r = rows.iloc[int(np.argmax(unknown))]
        raise InputError(f"{where}: run {r['run']!r} step {int(r['step'])} example {int(r['example_id'])} has no "
                         f"samples but is not memorized at sample_tau={tau:g}; score it with its recorded sample_tau")
    acc = np.divide(rows["n_correct"].to_numpy(dtype=float), n, out=np.zeros(len(n)), where=n > 0)
    return pd.DataFrame({"example_id": rows["example_id"].to_numpy(dtype=np.int64),
                         "step": rows["step"].to_numpy(dtype=np.int64), "value": np.where(unmemorized, acc, 0.0)})


class Chains:
    """The train tasks of one job, released per shard in step order, each with the SkipRule of its pairs.

    `stored` holds the train score rows already in the store for the runs scored; the tasks of a shard are
    released one at a time, when the one before it is written (`done`), so M_{t-1} is known for every task.
    """

    def __init__(self, mode: str, tau: float, tasks: list, last_step: dict[str, int], stored: pd.DataFrame):
        self.mode, self.tau, self.last_step = mode, tau, last_step
        self.values: dict[tuple[str, int], dict[int, float]] = {}  # (run, example) -> {step: u*acc}
        if len(stored):
            self._record(stored, "the score store")
        self.waiting: dict[tuple[str, int], deque] = {}
        for t in sorted(tasks, key=lambda t: (t.checkpoint.run, t.shard, t.checkpoint.step)):
            self.waiting.setdefault((t.checkpoint.run, t.shard), deque()).append(t)

    def first(self) -> list:
        """The first task of every shard, with its rule."""
        return [self._release(key) for key in list(self.waiting)]

    def done(self, task, scores: pd.DataFrame) -> list:
        """Record a finished train task's rows; the next task of its shard (none when it was the last)."""
        self._record(scores, task.part)
        key = (task.checkpoint.run, task.shard)
        return [self._release(key)] if self.waiting.get(key) else []

    def _record(self, rows: pd.DataFrame, where: str) -> None:
        for run, part in rows.groupby("run", sort=False):
            c = contributions(part, self.tau, where)
            for e, step, value in zip(c["example_id"], c["step"], c["value"]):
                self.values.setdefault((run, int(e)), {})[int(step)] = float(value)

    def _release(self, key):
        from dataclasses import replace

        task = self.waiting[key].popleft()
        c = task.checkpoint
        best = tuple(max((v for s, v in self.values.get((c.run, e), {}).items() if s < c.step), default=0.0)
                     for e in task.example_ids)
        before_last = self.mode == "final" and c.step < self.last_step[c.run]
        return replace(task, skip=SkipRule(self.tau, best, before_last))


def replay(train: pd.DataFrame, tau: float, mode: str) -> np.ndarray:
    """The skipped reason premem score would give each row of a fully sampled train_scores table ("" where it
    samples): the same rule as SkipRule, over a whole table at once (benchmarks, tests). Each run's last
    checkpoint is its last step in the table."""
    if mode == "all":
        return np.full(len(train), "", dtype=object)
    order = np.lexsort((train["step"].to_numpy(), train["example_id"].to_numpy(), pd.factorize(train["run"])[0]))
    rows = train.iloc[order]
    value = contributions(rows, tau, "train_scores")["value"].to_numpy()
    keys = [rows["run"].to_numpy(), rows["example_id"].to_numpy()]
    best = pd.Series(value).groupby(keys, sort=False).cummax()
    before = best.groupby(keys, sort=False).shift(1, fill_value=0.0).to_numpy()  # M_{t-1}
    memorized = log_log_perplexity(rows["perplexity"].to_numpy()) < tau
    last = rows["step"].to_numpy() == rows.groupby("run")["step"].transform("max").to_numpy()
    out = np.where(memorized & (before == 0), "exact", "")
    out = np.where(memorized & (before > 0) & (mode == "final") & ~last, "final", out).astype(object)
    reasons = np.empty(len(train), dtype=object)
    reasons[order] = out
    return reasons


def check_resumable(stored: pd.DataFrame, tasks: list, where: str) -> None:
    """Refuse to score a checkpoint before one whose skips are stored: those skips assumed its M_{t-1}
    without this checkpoint's accuracies (step order per shard is what makes skipping exact)."""
    if stored.empty or "skipped" not in stored.columns:
        return
    skipped = stored[stored["skipped"].fillna("").ne("")]
    for t in tasks:
        later = skipped[(skipped["run"] == t.checkpoint.run) & (skipped["step"] > t.checkpoint.step)
                        & skipped["example_id"].isin(t.example_ids)]
        if len(later):
            raise InputError(
                f"{where}: run {t.checkpoint.run!r} has pairs skipped at step {int(later['step'].iloc[0])} but step "
                f"{t.checkpoint.step} is not scored yet; skipping needs the checkpoints in step order: score into a "
                "new store, or with sample=all")


def plan_skipping(cfg, store: ScoreStore | None, run: str, checkpoints, todo) -> Chains | None:
    """The step-order chains of the train tasks to do (None: sample=all, or nothing to skip), after checking
    that the store's skips of this run were made as this job would make them."""
    tau = cfg.skip_tau
    if store is not None and store.has("runs"):
        check_recorded_sampling(store, run, cfg.sample, tau)
    train = [t for t in todo if t.split == "train"]
    if tau is None or not train:
        return None
    stored = pd.DataFrame(columns=["run", "step", "example_id", "n_samples", "n_correct", "perplexity"])
    if store is not None and store.has("train_scores"):
        rows = store.read("train_scores")
        stored = rows[rows["run"] == run]
    check_resumable(stored, train, str(cfg.store))
    return Chains(cfg.sample, tau, train, {run: max(c.step for c in checkpoints)}, stored)


def records_sampling(store: ScoreStore, run: str) -> bool:
    """Whether runs.parquet holds this run with its sample setting."""
    if not store.has("runs"):
        return False
    runs = store.read("runs")
    row = runs[runs["run"] == run]
    return not row.empty and "sample" in row.columns and not pd.isna(row["sample"].iloc[0])


def check_recorded_sampling(store: ScoreStore, run: str, sample: str, tau: float | None) -> None:
    """A run resumed must skip as it did: its recorded sample and sample_tau (runs.parquet) are this job's."""
    runs = store.read("runs")
    row = runs[runs["run"] == run]
    if row.empty or "sample" not in row.columns or pd.isna(row["sample"].iloc[0]):
        return  # not scored before, or before premem recorded it (every pair was sampled then)
    was = row["sample"].iloc[0]
    was_tau = row["sample_tau"].iloc[0] if "sample_tau" in row.columns else None
    was_tau = None if was_tau is None or pd.isna(was_tau) else float(was_tau)
    if was != sample or was_tau != tau:
        said = f"sample={was}" + (f" sample_tau={was_tau:g}" if was_tau is not None else "")
        raise InputError(f"sample: run {run!r} of {store.root} was scored with {said}; resume it with the same "
                         "settings or score into a new store")
