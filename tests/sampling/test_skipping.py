"""The skip rule of memorization-aware sampling, without actors: the chains premem score releases tasks from,
and the SkipRule each carries, skip exactly the pairs the whole-table replay names (what the metrics assume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from premem.errors import InputError
from premem.runs import Checkpoint
from premem.sampling.actors import Task
from premem.sampling.backend import TargetLogprob
from premem.sampling.skipping import Chains, SkipRule, replay
from tests.conftest import synthetic_tables

TAU = -3.0


def tasks_of(train: pd.DataFrame, shard_size: int = 7) -> list[Task]:
    out = []
    for (run, step), rows in train.groupby(["run", "step"]):
        ids = sorted(rows["example_id"])
        for shard, start in enumerate(range(0, len(ids), shard_size)):
            chunk = ids[start : start + shard_size]
            out.append(Task(Checkpoint(run, int(step), Path(f"/{run}/{step}"), "full"), "train", shard, chunk,
                            [[1]] * len(chunk), [[2]] * len(chunk), [0] * len(chunk)))
    return out


def run_chains(train: pd.DataFrame, mode: str, stored: pd.DataFrame | None = None) -> pd.Series:
    """What premem score would skip: tasks released by Chains in any order it allows, each rule applied to the
    perplexities its actor would measure, the finished rows fed back."""
    done = stored if stored is not None else train.iloc[:0]
    todo = [t for t in tasks_of(train) if not done.merge(pd.DataFrame(
        {"run": t.checkpoint.run, "step": t.checkpoint.step, "example_id": t.example_ids})).shape[0]]
    last = train.groupby("run")["step"].max().to_dict()
    chains = Chains(mode, TAU, todo, last, done)
    queue, reasons = chains.first(), {}
    rng = np.random.default_rng(0)
    by_key = train.set_index(["run", "step", "example_id"])
    while queue:
        task = queue.pop(int(rng.integers(len(queue))))  # any order the chains allow
        c = task.checkpoint
        rows = by_key.loc[[(c.run, c.step, e) for e in task.example_ids]].reset_index()
        why = task.skip.reasons(rows["perplexity"].to_numpy())
        rows.loc[[bool(r) for r in why], ["n_samples", "n_correct"]] = 0
        reasons.update({(c.run, c.step, e): r for e, r in zip(task.example_ids, why)})
        queue += chains.done(task, rows)
    return pd.Series([reasons.get(k, "") for k in zip(train["run"], train["step"], train["example_id"])])


@pytest.mark.parametrize("mode", ["exact", "final"])
def test_the_chains_skip_what_the_replay_names(mode):
    _, train, _ = synthetic_tables(n_runs=3, n_steps=5, n_examples=20)
    expected = replay(train, TAU, mode)
    assert (expected != "").any() and (expected == "").any()
    assert run_chains(train, mode).tolist() == list(expected)


def test_a_resumed_job_rebuilds_the_state_from_the_stored_rows():
    _, train, _ = synthetic_tables(n_runs=2, n_steps=5, n_examples=20)
    expected = replay(train, TAU, "exact")
    stored = train[train["step"] <= 20].copy()  # killed after two checkpoints: their rows as premem wrote them
    skipped = expected[(train["step"] <= 20).to_numpy()] != ""
    stored.loc[skipped, ["n_samples", "n_correct"]] = 0
    later = (train["step"] > 20).to_numpy()
    assert run_chains(train, "exact", stored)[later].tolist() == list(expected[later])


def test_the_rule_samples_unmemorized_and_once_accurate_pairs():
    ppl = [TargetLogprob(-0.001, 10).perplexity, TargetLogprob(-30.0, 10).perplexity]  # memorized, not
    assert SkipRule(TAU, (0.0, 0.0), False).reasons(ppl) == ["exact", ""]
    assert SkipRule(TAU, (0.4, 0.0), False).reasons(ppl) == ["", ""]  # M_{t-1} > 0: PreMem_t needs acc_t
    assert SkipRule(TAU, (0.4, 0.0), True).reasons(ppl) == ["final", ""]  # unless no later PreMem reads it


def test_an_unsampled_pair_that_is_not_memorized_at_sample_tau_is_refused():
    _, train, _ = synthetic_tables(n_runs=1, n_steps=2, n_examples=3)
    train.loc[0, ["n_samples", "n_correct"]] = 0  # step 10: not memorized at TAU
    with pytest.raises(InputError, match="has no samples but is not memorized at sample_tau=-3"):
        Chains("exact", TAU, [], {"run0": 20}, train)
