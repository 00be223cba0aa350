"""Squeezing detection on synthetic probe_scores tables: flagged, not flagged, undetermined;
the per-type table premem probe track and show print."""

from __future__ import annotations

import pandas as pd
import pytest

from premem.errors import InputError
from premem.metrics.probes import report, squeezing, type_curves
from premem.tables import validate


def scores(moves: dict[str, float], run: str = "r", steps=(0, 5, 10), n_probes: int = 3) -> pd.DataFrame:
    """Rows of probe_scores whose per-type mean moves linearly by moves[type] from first to last step."""
    rows = []
    for k, step in enumerate(steps):
        frac = k / (len(steps) - 1) if len(steps) > 1 else 0
        for t, move in moves.items():
            for pid in range(n_probes):
                s = -20.0 - 5 * pid + move * frac
                rows.append((run, step, pid, t, s, 10, s / 10, "x" if t == "greedy" else None))
    df = pd.DataFrame(rows, columns=["run", "step", "probe_id", "type", "sum_logprob", "n_tokens", "mean_logprob", "text"])
    validate("probe_scores", df, "synthetic")
    return df


def test_dpo_like_run_is_flagged_with_the_size_of_each_move():
    v = squeezing(scores({"chosen": -4.0, "rejected": -9.0, "greedy": 3.0, "random_sentence": -1.0}), "r")
    assert v.squeezing is True and (v.first_step, v.last_step) == (0, 10)
    assert v.deltas == pytest.approx({"chosen": -4.0, "rejected": -9.0, "greedy": 3.0, "random_sentence": -1.0})
    assert v.describe() == ("r: squeezing yes: greedy +3.00, chosen -4.00, rejected -9.00 "
                            "(change of the mean summed log-prob, step 0 -> 10)")


@pytest.mark.parametrize(
    "moves",
    [
        {"chosen": 5.0, "rejected": -2.0, "greedy": 4.0},  # SFT-like: chosen rises
        {"chosen": -1.0, "rejected": -2.0, "greedy": -0.5},  # everything falls, greedy too
        {"chosen": -1.0, "rejected": 0.5, "greedy": 2.0},  # rejected rises
    ],
)
def test_runs_without_the_pattern_are_not_flagged(moves):
    v = squeezing(scores(moves), "r")
    assert v.squeezing is False and "squeezing no:" in v.describe()


def test_undetermined_with_one_checkpoint_or_without_greedy():
    assert squeezing(scores({"chosen": -1.0, "rejected": -1.0, "greedy": 1.0}, steps=(7,)), "r").squeezing is None
    v = squeezing(scores({"chosen": -1.0, "rejected": -1.0}), "r")
    assert v.squeezing is None and v.describe() == "r: squeezing undetermined (no greedy scores at both ends)"


def test_table_rows_are_checkpoints_columns_types_in_order():
    df = pd.concat([scores({"greedy": 3.0, "rejected": -9.0, "chosen": -4.0}),
                    scores({"chosen": 2.0, "rejected": -1.0, "greedy": 1.0}, run="s", steps=(1, 2))])
    curves = type_curves(df, "r")
    assert list(curves.index) == [0, 5, 10] and list(curves.columns) == ["chosen", "rejected", "greedy"]
    assert curves.loc[0, "chosen"] == pytest.approx(-25.0) and curves.loc[10, "chosen"] == pytest.approx(-29.0)
    text = report(df)
    assert text.index("r: mean summed") < text.index("r: squeezing yes") < text.index("s: mean summed")
    assert "s: squeezing no: greedy +1.00, chosen +2.00, rejected -1.00" in text
    with pytest.raises(InputError, match=r"run 'nope': no probe scores for it \(runs: r, s\)"):
        report(df, ["nope"])
