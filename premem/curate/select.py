"""Per-example pre-memorization accuracy across runs, and the subset of examples where it is lowest.

The paper's curation rule (Algorithm 1, DESIGN.md §1): examples the model could not solve
before it memorized them are the ones to collect more data like. An example's score here is
its PreMem at the last checkpoint of each run that trained on it, averaged over those runs:
PreMem_T is the best accuracy the example reached while not memorized (capped by the final
accuracy), so it already summarizes the whole run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from premem.data import ExampleSet
from premem.errors import InputError
from premem.files import atomic_path
from premem.metrics.premem import TrainingCurves


def example_scores(curves: TrainingCurves, tau: float) -> pd.DataFrame:
    """example_id, premem, train_acc, memorized (fraction of runs), n_runs; sorted by premem, then id."""
    ex = curves.per_example(tau)
    last = ex[ex["step"] == ex.groupby("run")["step"].transform("max")]
    out = last.groupby("example_id", as_index=False).agg(
        premem=("premem", "mean"), train_acc=("acc", "mean"), memorized=("memorized", "mean"), n_runs=("run", "size")
    )
    return out.sort_values(["premem", "example_id"], kind="stable", ignore_index=True)


def lowest_premem(scores: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The `fraction` of examples with the lowest pre-memorization accuracy (at least one)."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    n = max(1, round(fraction * len(scores)))
    return scores.sort_values(["premem", "example_id"], kind="stable", ignore_index=True).head(n)


def write_subset(selected: pd.DataFrame, data: ExampleSet, out: str | Path) -> Path:
    """The selected examples as GSM8K-form JSONL (id, question, answer, premem), written atomically."""
    by_id = {ex.example_id: ex for ex in data.examples}
    missing = [i for i in selected["example_id"] if i not in by_id]
    if missing:
        raise InputError(f"{data.path}: example {missing[0]} was scored but is not in the data")
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for row in selected.itertuples():
            ex = by_id[row.example_id]
            f.write(json.dumps({"id": ex.example_id, "question": ex.question, "answer": ex.solution,
                                "premem": round(float(row.premem), 4)}) + "\n")
    return Path(out)
