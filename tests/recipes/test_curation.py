"""The curation experiment: its arithmetic (curves, efficiency ratios) and one tiny end-to-end pass."""

import dataclasses

import pandas as pd
import pytest

from premem.config import load_config
from premem.recipes.curation import CurationConfig, curves, efficiency, experiment


def test_efficiency_reads_the_iid_curve_in_log_examples():
    rounds = pd.DataFrame(
        [
            # seed, strategy, round, examples, test_acc: two seeds, i.i.d. 0.1 -> 0.2 -> 0.3 at 64/128/256
            (s, "random", r, n, a) for s in (0, 1) for r, n, a in ((0, 64, 0.1), (1, 128, 0.2), (2, 256, 0.3))
        ]
        + [(s, "premem_low", r, n, a) for s in (0, 1) for r, n, a in ((1, 128, 0.3), (2, 256, 0.5))],
        columns=["seed", "strategy", "round", "examples", "test_acc"],
    )
    c = curves(rounds)
    low = c[c["strategy"] == "premem_low"].set_index("examples")
    assert low.loc[64, "mean"] == pytest.approx(0.1)  # the shared start counts for every strategy
    assert low.loc[128, "mean"] == pytest.approx(0.3) and low.loc[128, "n_seeds"] == 2
    e = efficiency(c).set_index(["strategy", "examples"])
    assert e.loc[("premem_low", 128), "iid_examples_needed"] == pytest.approx(256)  # i.i.d. needs 256 for 0.3
    assert e.loc[("premem_low", 128), "ratio"] == pytest.approx(2.0)
    assert e.loc[("random", 128), "ratio"] == pytest.approx(1.0)
    # 0.15 lies halfway between 64 and 128 in accuracy: log-linear gives sqrt(64 * 128)
    mid = efficiency(pd.concat([c, pd.DataFrame([{"strategy": "x", "examples": 100, "mean": 0.15, "std": 0, "n_seeds": 1}])]))
    assert mid.set_index("strategy").loc["x", "iid_examples_needed"] == pytest.approx((64 * 128) ** 0.5)
    assert e.loc[("premem_low", 256), "bound"] == ">"  # beyond the i.i.d. curve: a lower bound only


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
    cfg = load_config(CurationConfig, None, [
        f"out={tmp_path / 'cur'}", "seeds=[0]", "strategies=[random,premem_low]", "start=12", "budgets=[24]",
        "iid_budgets=[36]", "benchmark.n_test=12", "model.pretrain_steps=20", "model.pretrain_problems=60",
        "model.vocab_size=512", "train.epochs=2", "sampling.samples=2", "sampling.max_new_tokens=32", "actors=1",
        "progress=false",
    ])
    rounds = experiment(cfg)
    assert sorted(map(tuple, rounds[["strategy", "examples"]].to_numpy())) == [
        ("premem_low", 12), ("premem_low", 24), ("random", 12), ("random", 24), ("random", 36)]
    out = tmp_path / "cur"
    assert (out / "rounds.parquet").exists()
    # premem_low collected 12 new problems like its lowest-premem quarter (3 examples), none seen before
    collected = pd.read_json(out / "seed0" / "premem_low" / "round1" / "collected.jsonl", lines=True)
    start = pd.read_json(out / "seed0" / "start" / "data.jsonl", lines=True)
    assert len(collected) == 12 and not set(collected["question"]) & set(start["question"])
    assert collected["template_id"].nunique() == 3 and collected["template_id"].value_counts().tolist() == [4, 4, 4]
    again = experiment(cfg)  # everything reused: same table
    pd.testing.assert_frame_equal(again, rounds)

    # half of each round's new problems i.i.d.: a strategy of its own, added to the table beside the others
    mixed = experiment(dataclasses.replace(cfg, strategies=["premem_low"], iid_budgets=[], iid_mix=0.5))
    assert set(mixed["strategy"]) == {"random", "premem_low", "premem_low-mix0.5"}
    collected = pd.read_json(out / "seed0" / "premem_low-mix0.5" / "round1" / "collected.jsonl", lines=True)
    assert (collected["template_id"] == -1).sum() == 6 and len(collected) == 12


@pytest.mark.parametrize("override, message", [
    ("start=0", "start: expected an integer >= 1, got 0"),
    ("budgets=[]", "budgets: expected a non-empty list of training-set sizes, got []"),
    ("budgets=[256,128]", "budgets: expected sizes growing from start (128), got [256, 128]"),
    ("budgets=[-5]", "budgets[0]: expected an integer >= 1, got -5"),
    ("iid_budgets=[400]", "iid_budgets: expected sizes growing from the last budget (512), got [400]"),
    ("strategies=[]", "strategies: expected a non-empty list of strategy names"),
    ("strategies=[nosuch]", "unknown strategy"),
    ("seeds=[]", "seeds: expected a non-empty list of seeds"),
    ("seeds=[0,0]", "seeds: [0, 0] lists a seed twice"),
    ("template_fraction=0", "template_fraction: expected a fraction in (0, 1], got 0.0"),
    ("near=-1", "near: expected an integer >= 0, got -1"),
    ("iid_mix=1.5", "iid_mix: expected a share in [0, 1], got 1.5"),
    ("benchmark.n_test=0", "benchmark.n_test: expected an integer >= 1, got 0"),
    ("model.layers=0", "model.layers: expected an integer >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size: expected a value at least 1, got 0"),
    ("sampling.top_p=0", "sampling.top_p: expected a number in (0, 1]"),
    ("actors=-1", "actors: expected an integer >= 1, got -1"),
])
def test_every_setting_is_checked_before_anything_is_written(tmp_path, override, message):
    from premem.errors import InputError

    cfg = load_config(CurationConfig, None, [f"out={tmp_path / 'cur'}", override])
    with pytest.raises(InputError) as e:
        experiment(cfg)  # validate() runs first: an error here has written nothing
    assert message in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tau", [float("inf"), float("nan")])
def test_a_non_finite_tau_from_python_is_refused(tmp_path, tau):
    from premem.errors import InputError

    with pytest.raises(InputError, match="tau: expected a finite number"):
        experiment(CurationConfig(out=str(tmp_path / "cur"), tau=tau))
    assert list(tmp_path.iterdir()) == []
