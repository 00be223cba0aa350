"""Per-example pre-memorization accuracy across runs: what the premem_low strategy ranks by.

The paper's curation rule (Algorithm 1, DESIGN.md §1): examples the model could not solve
before it memorized them are the ones to collect more data like. An example's score here is
its PreMem at the last checkpoint of each run that trained on it, averaged over those runs:
PreMem_T is the best accuracy the example reached while not memorized (capped by the final
accuracy), so it already summarizes the whole run.
"""

from __future__ import annotations

import pandas as pd

from premem.metrics.premem import TrainingCurves


def example_scores(curves: TrainingCurves, tau: float, factor: float | None = None) -> pd.DataFrame:
    """example_id, premem, train_acc, memorized (fraction of runs), n_runs; sorted by premem, then id.

    factor: memorized by the relative detector (premem.metrics.detectors: once log(ppl) falls below factor times
    the example's own log(ppl) at its run's first checkpoint) instead of at one global tau."""
    if factor is None:
        ex = curves.per_example(tau)
    else:
        from premem.metrics.detectors import relative_per_example  # sklearn and scipy: only when asked for

        ex = relative_per_example(curves, factor)
    last = ex[ex["step"] == ex.groupby("run")["step"].transform("max")]
    out = last.groupby("example_id", as_index=False).agg(
        premem=("premem", "mean"), train_acc=("acc", "mean"), memorized=("memorized", "mean"), n_runs=("run", "size")
    )
    return out.sort_values(["premem", "example_id"], kind="stable", ignore_index=True)

