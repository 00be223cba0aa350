import pandas as pd
import pytest

from premem.curate import example_scores
from premem.metrics.premem import TrainingCurves


def curves(rows, runs=None):
    train = pd.DataFrame(rows, columns=["run", "step", "example_id", "n_samples", "n_correct", "perplexity"])
    runs = runs if runs is not None else pd.DataFrame({"run": sorted(set(train["run"]))})
    return TrainingCurves.from_tables(train, runs)


def test_scores_are_final_premem_averaged_over_the_runs_that_trained_on_the_example():
    memorized, fresh = 1.0001, 3.0  # log(log(ppl)) far below / above tau = -2.3
    c = curves(
        [
            # run a: example 0 reached 2/4 before memorizing, then 4/4 memorized -> PreMem 0.5
            ("a", 1, 0, 4, 2, fresh), ("a", 2, 0, 4, 4, memorized),
            ("a", 1, 1, 4, 1, fresh), ("a", 2, 1, 4, 3, fresh),   # never memorized: PreMem = last acc 0.75
            # run b trained on example 1 only (runs.train_example_ids), its row for 0 is ignored
            ("b", 5, 0, 4, 0, fresh), ("b", 5, 1, 4, 1, fresh),
        ],
        pd.DataFrame({"run": ["a", "b"], "train_example_ids": [None, [1]]}),
    )
    s = example_scores(c, tau=-2.3).set_index("example_id")
    assert s.loc[0, "premem"] == 0.5 and s.loc[0, "n_runs"] == 1 and s.loc[0, "memorized"] == 1.0
    assert s.loc[1, "premem"] == pytest.approx((0.75 + 0.25) / 2) and s.loc[1, "n_runs"] == 2
    assert s.loc[0, "train_acc"] == 1.0  # plain accuracy would call the memorized example solved
