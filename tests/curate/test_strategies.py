"""Each strategy selects what its docstring says, deterministically for a seed."""

import numpy as np
import pandas as pd
import pytest

from premem.curate import STRATEGIES, describe, get_strategy
from premem.curate.strategies import ranked
from premem.errors import InputError
from tests.curate.conftest import curation_input

FRESH = 3.0  # log(log(3)) = 0.09, far above tau = -2.3: never memorized


def constant(n_correct: list[int], steps=(1, 2, 3), run="a", ppl=FRESH) -> list[tuple]:
    """Rows where example i has n_correct[i]/4 correct at every step, never memorized: PreMem = n_correct[i]/4."""
    return [(run, s, i, 4, c, ppl) for s in steps for i, c in enumerate(n_correct)]


def chosen(sel) -> list[int]:
    return sorted(sel.scores.loc[sel.scores["selected"], "example_id"])


def test_registry_names_and_one_paragraph_docs():
    assert list(STRATEGIES) == ["premem_low", "random", "loss", "difficulty", "cartography", "s2l"]
    for name in STRATEGIES:
        assert len(describe(name)) > 150 and "\n" not in describe(name)


def test_premem_low_takes_the_low_region_lowest_first_and_fills_above_it():
    inp = curation_input(constant([4, 0, 3, 1, 2, 0]))  # premem 1, 0, .75, .25, .5, 0; below 0.75: 1, 5, 3, 4
    s = get_strategy("premem_low")
    assert chosen(s.select(inp, 2, seed=0)) == [1, 5]
    sel = s.select(inp, 5, seed=0)
    assert chosen(sel) == [1, 2, 3, 4, 5] and sel.info == {"n_low": 4, "threshold": 0.75, "n_filled_above_threshold": 1}
    assert sel.rows == [1, 2, 3, 4, 5]  # written in the data's order
    ranks = sel.scores.set_index("example_id")["rank"]
    assert set(ranks[[1, 5]]) == {1, 2} and ranks[3] == 3 and ranks[4] == 4 and ranks[2] == 5 and ranks[0] == 6
    assert sel.scores.set_index("example_id").loc[3, "score"] == 0.25


def test_premem_low_ties_are_seeded_not_by_id():
    inp = curation_input(constant([0] * 40))
    s = get_strategy("premem_low")
    picks = {tuple(chosen(s.select(inp, 5, seed=seed))) for seed in range(4)}
    assert len(picks) > 1 and (0, 1, 2, 3, 4) not in picks
    assert chosen(s.select(inp, 5, seed=7)) == chosen(s.select(inp, 5, seed=7))


def test_premem_low_upsample_keeps_everything_and_repeats_the_low_region():
    inp = curation_input(constant([4, 0, 3, 1, 2, 0]))
    sel = get_strategy("premem_low", {"mode": "upsample"}).select(inp, 6, seed=0)
    assert sel.rows[:6] == [0, 1, 2, 3, 4, 5]
    extra = sel.rows[6:]
    assert len(extra) == 6 and set(extra) == {1, 3, 4, 5} and set(extra[:2]) == {1, 5}  # lowest first, then cycling
    copies = sel.scores.set_index("example_id")["copies"]
    assert copies.sum() == 12 and copies[0] == 1 and copies[2] == 1 and copies[1] == 3 and copies[4] == 2


def test_premem_low_uses_pre_memorization_not_final_accuracy():
    memorized = 1.0001
    rows = [("a", 1, 0, 4, 1, FRESH), ("a", 2, 0, 4, 4, memorized),  # right only once memorized: PreMem 0.25
            ("a", 1, 1, 4, 3, FRESH), ("a", 2, 1, 4, 3, FRESH)]      # solved its own way: PreMem 0.75
    sel = get_strategy("premem_low").select(curation_input(rows), 1, seed=0)
    assert chosen(sel) == [0]
    assert sel.scores.set_index("example_id").loc[0, "train_acc"] == 1.0


def test_premem_low_with_the_relative_detector_reads_each_examples_own_start():
    # example 0 starts at ppl 1.3 and stays there: a short, easy trace, below a global tau of -1 (ppl 1.44) from
    # the start, so tau -1 calls it memorized at once: PreMem 0 though it was right.
    # Relative to its own start it never falls: not memorized, PreMem = its accuracy 0.75.
    # example 1 starts at ppl 9 and collapses to 1.2 at step 2 (below 0.15 * log 9): memorized there; PreMem is
    # its accuracy before the collapse, 0.25, though it is right at step 2.
    rows = [("a", 1, 0, 4, 3, 1.3), ("a", 2, 0, 4, 3, 1.3),
            ("a", 1, 1, 4, 1, 9.0), ("a", 2, 1, 4, 4, 1.2)]
    by_tau = get_strategy("premem_low").select(curation_input(rows, tau=-1.0), 1, seed=0)
    assert chosen(by_tau) == [0]  # the global threshold takes the easy, short trace for memorized
    rel = get_strategy("premem_low", {"factor": 0.15}).select(curation_input(rows, tau=-1.0), 1, seed=0)
    assert chosen(rel) == [1]
    scores = rel.scores.set_index("example_id")["score"]
    assert scores[0] == 0.75 and scores[1] == 0.25
    assert "relative detector, factor 0.15" in rel.score
    assert get_strategy("premem_low").uses_tau and not get_strategy("premem_low", {"factor": 0.15}).uses_tau
    with pytest.raises(InputError, match=r"strategy premem_low factor: expected a number in \(0, 1\), got 1.5"):
        get_strategy("premem_low", {"factor": 1.5})


def test_loss_takes_the_highest_final_perplexity_mean_over_runs():
    rows = [("a", s, i, 4, 2, ppl) for s, ppls in [(1, [9, 9, 9]), (2, [1.5, 3.0, 2.0])] for i, ppl in enumerate(ppls)]
    rows += [("b", 5, i, 4, 2, ppl) for i, ppl in enumerate([1.5, 1.1, 2.0])]
    sel = get_strategy("loss").select(curation_input(rows), 2, seed=0)  # final means: 1.5, 2.05, 2.0
    assert list(sel.scores["example_id"]) == [1, 2, 0] and chosen(sel) == [1, 2]
    assert sel.scores["score"].iloc[0] == pytest.approx(2.05)


def test_difficulty_takes_the_lowest_first_checkpoint_accuracy_or_a_named_base_run():
    rows = [("a", 1, i, 4, c, FRESH) for i, c in enumerate([0, 4, 2])] + [("a", 2, i, 4, 4, FRESH) for i in range(3)]
    rows += [("base", 0, i, 4, c, FRESH) for i, c in enumerate([4, 3, 0])]
    inp = curation_input(rows)
    inp.runs = ["a"]
    assert chosen(get_strategy("difficulty").select(inp, 1, seed=0)) == [0]
    assert chosen(get_strategy("difficulty", {"base_run": "base"}).select(inp, 1, seed=0)) == [2]
    with pytest.raises(InputError, match="base_run: run 'nope' is not in the store's runs.parquet; runs: a, base"):
        get_strategy("difficulty", {"base_run": "nope"}).select(inp, 1, seed=0)


def test_cartography_regions():
    # per-token probability 1/ppl over three checkpoints
    traj = {0: [2.0, 2.0, 2.0],      # p .5 .5 .5: confidence .5, variability 0
            1: [4.0, 2.0, 4 / 3],    # p .25 .5 .75: confidence .5, variability .204 (most ambiguous)
            2: [10.0, 10.0, 5.0],    # p .1 .1 .2: confidence .133 (hard)
            3: [1.05, 1.05, 1.05]}   # p .95: easy
    rows = [("a", s + 1, i, 4, 2, ppl[s]) for i, ppl in traj.items() for s in range(3)]
    rows += [("one", 1, i, 4, 2, 1.5) for i in traj]  # a run with one checkpoint has no variability: left out
    inp = curation_input(rows)
    amb = get_strategy("cartography").select(inp, 1, seed=0)
    assert chosen(amb) == [1] and amb.info == {"runs_used": ["a"], "runs_skipped": ["one"]}
    row = amb.scores.set_index("example_id").loc[1]
    assert row["confidence"] == pytest.approx(0.5) and row["variability"] == pytest.approx(np.std([0.25, 0.5, 0.75]))
    assert chosen(get_strategy("cartography", {"region": "hard"}).select(inp, 1, seed=0)) == [2]
    assert chosen(get_strategy("cartography", {"region": "easy"}).select(inp, 1, seed=0)) == [3]
    inp.runs = ["one"]
    with pytest.raises(InputError, match="at least 2 checkpoints"):
        get_strategy("cartography").select(inp, 1, seed=0)


def test_s2l_samples_evenly_across_trajectory_clusters():
    # two kinds of trajectories: 2 examples stay high, 6 fall fast; k=2
    rows = [("a", s, i, 4, 2, (3.0 if i < 2 else 1.5 / s) + 0.01 * i + 1) for s in (1, 2, 3) for i in range(8)]
    inp = curation_input(rows)
    s2l = get_strategy("s2l", {"k": 2})
    sel = s2l.select(inp, 2, seed=0)
    assert len(set(chosen(sel)) & {0, 1}) == 1  # one of each cluster
    assert sel.info["cluster_sizes"] == [2, 6] and sel.info["selected_per_cluster"] == [1, 1]
    sel = s2l.select(inp, 4, seed=0)
    assert set(chosen(sel)) >= {0, 1} and sel.info["selected_per_cluster"] == [2, 2]  # small cluster exhausted
    assert chosen(s2l.select(inp, 3, seed=3)) == chosen(s2l.select(inp, 3, seed=3))
    with pytest.raises(InputError, match="k: 9 clusters for 8 examples"):
        get_strategy("s2l", {"k": 9}).select(inp, 2, seed=0)


def test_s2l_leaves_out_runs_that_did_not_score_every_example():
    rows = [("a", s, i, 4, 2, 1.0 + s + i) for s in (1, 2) for i in range(4)] + [("q", 1, 0, 4, 2, 2.0)]
    runs = pd.DataFrame({"run": ["a", "q"], "train_example_ids": [None, [0]]})
    sel = get_strategy("s2l", {"k": 2}).select(curation_input(rows, runs), 2, seed=0)
    assert sel.info["runs_used"] == ["a"] and sel.info["runs_skipped"] == ["q"] and sel.info["features"] == 2


def test_random_is_seeded_and_covers_the_pool():
    inp = curation_input(constant([1] * 30))
    r = get_strategy("random")
    assert chosen(r.select(inp, 10, seed=1)) == chosen(r.select(inp, 10, seed=1))
    assert chosen(r.select(inp, 10, seed=1)) != chosen(r.select(inp, 10, seed=2))
    assert sorted(r.select(inp, 30, seed=0).rows) == list(range(30))


def test_ranked_puts_missing_scores_last():
    assert list(ranked([5, 6, 7], [np.nan, 0.2, 0.1], seed=0)) == [7, 6, 5]
    assert list(ranked([5, 6, 7], [np.nan, 0.2, 0.1], seed=0, descending=True)) == [6, 7, 5]


def test_unknown_strategy_parameters_and_values():
    with pytest.raises(InputError, match=r"unknown strategy; known: premem_low, random, loss, difficulty, cartography, s2l"):
        get_strategy("lowest")
    with pytest.raises(InputError, match="ifd.*not available.*without the instruction.*cannot be computed from a store"):
        get_strategy("ifd")
    with pytest.raises(InputError, match="unknown field.*regoin.*known: region"):
        get_strategy("cartography", {"regoin": "hard"})
    with pytest.raises(InputError, match="strategy random: takes no parameters, got k"):
        get_strategy("random", {"k": 3})
    with pytest.raises(InputError, match="mode: expected one of select, upsample"):
        get_strategy("premem_low", {"mode": "up"})
    with pytest.raises(InputError, match="threshold: expected a number"):
        get_strategy("premem_low", {"threshold": "high"})
