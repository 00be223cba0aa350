import json

import pandas as pd
import pytest

from premem.curate import example_scores, lowest_premem, write_subset
from premem.data import DataConfig, load_example_set
from premem.errors import InputError
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


def test_lowest_premem_takes_the_fraction_with_ties_broken_by_id():
    scores = pd.DataFrame({"example_id": [5, 3, 9, 1], "premem": [0.2, 0.0, 0.2, 0.9]})
    assert list(lowest_premem(scores, 0.5)["example_id"]) == [3, 5]
    assert list(lowest_premem(scores, 0.01)["example_id"]) == [3]  # never empty
    with pytest.raises(InputError, match="fraction"):
        lowest_premem(scores, 0)


def test_write_subset_keeps_the_examples_and_refuses_unknown_ids(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"s {i} #### {i}"}) + "\n" for i in range(4)))
    ds = load_example_set(DataConfig(path=str(data)))
    out = write_subset(pd.DataFrame({"example_id": [2, 0], "premem": [0.0, 0.25]}), ds, tmp_path / "c.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["question"], r["answer"], r["premem"]) for r in rows] == [
        (2, "q2", "s 2 #### 2", 0.0), (0, "q0", "s 0 #### 0", 0.25)]
    assert load_example_set(DataConfig(path=str(out))).examples[0].answer == "2"  # reads back as GSM8K
    with pytest.raises(InputError, match="example 7"):
        write_subset(pd.DataFrame({"example_id": [7], "premem": [0.0]}), ds, tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
