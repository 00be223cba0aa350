"""Squeezing detection on synthetic probe_scores tables: flagged, not flagged, undetermined;
the per-type table premem probe track and show print."""

from __future__ import annotations

import pandas as pd
import pytest

from premem.errors import InputError
from premem.metrics.probes import SIGNIFICANT, Move, compare, report, squeezing, type_curves
from premem.tables import validate


def scores(moves: dict[str, float], run: str = "r", steps=(0, 5, 10), n_probes: int = 3,
           spread: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """Rows of probe_scores whose per-type mean moves linearly by moves[type] from first to last step;
    probe pid's move is moves[type] + spread[type][pid] (default: every prompt moves alike)."""
    rows = []
    for k, step in enumerate(steps):
        frac = k / (len(steps) - 1) if len(steps) > 1 else 0
        for t, move in moves.items():
            for pid in range(n_probes):
                s = -20.0 - 5 * pid + (move + (spread or {}).get(t, [0.0] * n_probes)[pid]) * frac
                rows.append((run, step, pid, t, s, 10, s / 10, "x" if t == "greedy" else None))
    df = pd.DataFrame(rows, columns=["run", "step", "probe_id", "type", "sum_logprob", "n_tokens", "mean_logprob", "text"])
    validate("probe_scores", df, "synthetic")
    return df


def test_dpo_like_run_is_flagged_with_the_size_of_each_move():
    v = squeezing(scores({"chosen": -4.0, "rejected": -9.0, "greedy": 3.0, "random_sentence": -1.0}), "r")
    assert v.squeezing is True and (v.first_step, v.last_step) == (0, 10)
    assert v.deltas == pytest.approx({"chosen": -4.0, "rejected": -9.0, "greedy": 3.0, "random_sentence": -1.0})
    assert v.moves["greedy"] == Move(3.0, 0.0, 3, 3) and v.moves["chosen"].up == 0
    assert v.describe() == ("r: squeezing yes: greedy +3.00 ± 0.00 (3/3 up), chosen -4.00 ± 0.00 (0/3 up), "
                            "rejected -9.00 ± 0.00 (0/3 up) "
                            "(change of summed log-prob, mean ± s.e. over prompts, step 0 -> 10)")


def test_a_greedy_rise_within_the_noise_of_the_prompts_is_not_flagged():
    # greedy's mean rise is +1 but its prompts move +7, -5, +1: one standard error is 3.5 nats
    noisy = scores({"chosen": -4.0, "rejected": -9.0, "greedy": 1.0}, spread={"greedy": [6.0, -6.0, 0.0]})
    v = squeezing(noisy, "r")
    assert v.squeezing is False
    assert v.moves["greedy"].mean == pytest.approx(1.0) and v.moves["greedy"].sem == pytest.approx(12 ** 0.5)
    assert v.moves["greedy"].up == 2 and abs(v.moves["greedy"].z) < SIGNIFICANT
    # the same mean with a spread small enough is two standard errors from zero
    tight = scores({"chosen": -4.0, "rejected": -9.0, "greedy": 1.0}, spread={"greedy": [0.3, -0.3, 0.0]})
    assert squeezing(tight, "r").squeezing is True


def test_compare_pairs_the_prompts_of_two_runs():
    df = pd.concat([scores({"chosen": -10.0, "rejected": -9.0}, run="dpo", spread={"chosen": [1.0, -1.0, 0.0]}),
                    scores({"chosen": -4.0, "rejected": -9.0}, run="extend-dpo")])
    d = compare(df, "extend-dpo", "dpo")  # extend's fall minus dpo's, prompt by prompt: +5, +7, +6
    assert d.mean == pytest.approx(6.0) and d.sem == pytest.approx(1 / 3 ** 0.5) and d.up == 3 and d.n == 3
    assert compare(df, "dpo", "extend-dpo").mean == pytest.approx(-6.0)
    with pytest.raises(InputError, match="compare: no greedy scores in both 'extend-dpo' and 'dpo'"):
        compare(df, "extend-dpo", "dpo", "greedy")


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
    assert "s: squeezing no: greedy +1.00 ± 0.00 (3/3 up), chosen +2.00 ± 0.00 (3/3 up), rejected -1.00" in text
    with pytest.raises(InputError, match=r"run 'nope': no probe scores for it \(runs: r, s\)"):
        report(df, ["nope"])
