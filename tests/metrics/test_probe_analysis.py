"""The learning-dynamics experiment's analyses on synthetic probe_scores of two seeds: the moves table,
SFT's moves over seeds, the verdicts and the extend comparison (the numbers moves.csv, report.html and
`premem experiment probes` show)."""

from __future__ import annotations

import pandas as pd
import pytest

from premem.metrics.probe_analysis import SeedScores, extend_comparison, moves_table, sft_moves, tables_text, verdicts
from tests.metrics.test_probes import scores

RUNS = ["sft", "dpo-e1", "extend-dpo-e1"]


def seed(s: int) -> SeedScores:
    """sft raises chosen (more in seed 1), its first epoch lifting everything; DPO squeezes; extend's DPO less."""
    lift = 2.0 * s
    frames = [
        scores({"chosen": 6.0 + lift, "rejected": 1.0, "greedy": 4.0}, run="sft", steps=(0, 2, 4, 8)),
        scores({"chosen": -6.0, "rejected": -9.0, "greedy": 3.0}, run="dpo-e1", spread={"chosen": [1.0, -1.0, 0.0]}),
        scores({"chosen": -2.0 + s, "rejected": -9.0, "greedy": 3.0}, run="extend-dpo-e1"),
    ]
    return SeedScores(s, RUNS, pd.concat(frames, ignore_index=True))


SEEDS = [seed(0), seed(1)]


def test_moves_table_has_every_seed_run_type_and_the_trained_span_of_sft_runs():
    moves = moves_table(SEEDS)
    assert len(moves) == 2 * (2 * 3 + 3 + 3)  # sft: spans all and trained
    sft = moves[(moves["seed"] == 1) & (moves["run"] == "sft") & (moves["type"] == "chosen")].set_index("span")
    # the synthetic curves move linearly over the checkpoint index: 0, 2, 4, 8 -> fractions 0, 1/3, 2/3, 1
    assert sft.loc["all", "mean"] == pytest.approx(8.0)
    assert sft.loc["all", ["first_step", "last_step"]].tolist() == [0, 8]
    assert sft.loc["trained", "mean"] == pytest.approx(8.0 * 2 / 3) and sft.loc["trained", "first_step"] == 2
    dpo = moves[(moves["run"] == "dpo-e1") & (moves["type"] == "chosen")]
    assert set(dpo["span"]) == {"all"} and dpo["mean"].tolist() == pytest.approx([-6.0, -6.0])
    assert dpo["sem"].tolist() == pytest.approx([1 / 3**0.5] * 2) and dpo["up"].tolist() == [0, 0]


def test_sft_moves_are_the_mean_over_seeds_in_type_order():
    table = sft_moves(moves_table(SEEDS))
    assert list(table.index) == ["chosen", "rejected", "greedy"]
    assert list(table.columns) == ["sft all (step 0 → 8)", "sft trained (step 2 → 8)"]
    assert table.loc["chosen", "sft all (step 0 → 8)"] == pytest.approx(7.0)  # seeds 6 and 8
    assert sft_moves(moves_table([SeedScores(0, ["dpo-e1"], SEEDS[0].scores)])).empty


def test_verdicts_and_the_extend_comparison():
    v = verdicts(SEEDS).set_index(["seed", "run"])
    assert list(v.columns) == ["squeezing", "greedy", "chosen", "rejected"]
    assert v.loc[(0, "dpo-e1"), "squeezing"] == "yes" and v.loc[(0, "sft"), "squeezing"] == "no"
    assert v.loc[(0, "dpo-e1"), "chosen"] == "-6.00 ± 0.58 (0/3 up)"
    ext = extend_comparison(SEEDS, [1]).set_index("seed")
    # extend's chosen falls 2 (seed 0) or 1 (seed 1) against dpo's 6: prompt by prompt +3, +5, +4 in seed 0
    assert ext["difference"].tolist() == pytest.approx([4.0, 5.0])
    assert ext["dpo_chosen"].tolist() == pytest.approx([-6.0, -6.0])
    assert ext["extend_chosen"].tolist() == pytest.approx([-2.0, -1.0])
    assert ext.loc[0, "prompts_less_fall"] == 3 and ext.loc[0, "n"] == 3
    assert ext.loc[0, "sem"] == pytest.approx(1 / 3**0.5)


def test_tables_text_has_each_seed_and_run():
    text = tables_text(SEEDS)
    assert text.index("== seed 0 ==") < text.index("== seed 1 ==") and text.endswith("\n")
    assert text.count("mean summed log π(response | prompt) over 3 probe prompts") == 6
    assert text.count("\ndpo-e1: squeezing yes") == 2 and text.count("extend-dpo-e1: squeezing yes") == 2
