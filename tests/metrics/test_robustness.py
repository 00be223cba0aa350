"""Per-example robustness and its correlations (premem.metrics.robustness), on small real tables in a real store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from premem.errors import InputError
from premem.metrics.premem import TrainingCurves
from premem.metrics.robustness import POOLED, binned, compare, correlations, examples
from premem.store import ScoreStore

TAU = -2.0
PERTURBATIONS = [" First", " We know that"]


def robustness_rows(train: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """Two perturbations of every train pair, 4 samples each, accuracy tied loosely to the train accuracy."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in train.itertuples():
        for p in PERTURBATIONS:
            rows.append((r.run, r.step, r.example_id, p, 4, int(rng.binomial(4, 0.8 * r.n_correct / r.n_samples))))
    return pd.DataFrame(rows, columns=["run", "step", "example_id", "perturbation", "n_samples", "n_correct"])


def train_rows(n_runs: int = 3, n_steps: int = 3, n_examples: int = 25, seed: int = 0) -> pd.DataFrame:
    """Train pairs of examples of mixed difficulty whose gold traces get memorized at different speeds."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_runs):
        # a third or so always answered right: the "solved" examples train accuracy cannot tell apart
        skill, speed = np.minimum(rng.uniform(0.1, 1.4, n_examples), 1.0), rng.uniform(0.5, 3.0, n_examples)
        for s in range(1, n_steps + 1):
            for i in range(n_examples):
                ppl = 1.0 + 2.0 * np.exp(-speed[i] * s) * (1 + 0.3 * rng.random())
                rows.append((f"run{r}", 10 * s, i, 5, int(rng.binomial(5, skill[i])), ppl))
    return pd.DataFrame(rows, columns=["run", "step", "example_id", "n_samples", "n_correct", "perplexity"])


@pytest.fixture
def store(tmp_path):
    store = ScoreStore(tmp_path / "store", create=True)
    train = train_rows()
    runs = pd.DataFrame({"run": sorted(train["run"].unique())})
    store.write("runs", runs)
    store.write("train_scores", train)
    store.write("robustness_scores", robustness_rows(train))
    return store


def expected_frame(store: ScoreStore) -> pd.DataFrame:
    """The join written out by hand: robustness pooled over perturbations, predictors from TrainingCurves."""
    rob = store.read("robustness_scores").groupby(["run", "step", "example_id"], as_index=False)[
        ["n_correct", "n_samples"]].sum()
    rob["robustness"] = rob["n_correct"] / rob["n_samples"]
    curves = TrainingCurves.from_store(store)
    ex = curves.per_example(TAU).assign(log_ppl=curves.frame["log_ppl"].to_numpy())
    return ex.merge(rob[["run", "step", "example_id", "robustness"]], on=["run", "step", "example_id"])


def test_each_example_gets_its_robustness_and_its_predictors_at_the_same_checkpoint(store):
    frame = examples(store, TAU)
    want = expected_frame(store).sort_values(["run", "step", "example_id"], ignore_index=True)
    assert len(frame) == 3 * 3 * 25 and (frame["n_perturbed"] == 8).all()
    np.testing.assert_allclose(frame["robustness"], want["robustness"])
    np.testing.assert_allclose(frame["premem"], want["premem"])
    np.testing.assert_allclose(frame["train_acc"], want["acc"])
    np.testing.assert_allclose(frame["log_ppl"], want["log_ppl"])
    assert set(frame.loc[frame["last"], "step"]) == {30} and frame["last"].sum() == 3 * 25


def test_the_relative_detector_decides_memorization_when_given_a_factor(store):
    from premem.metrics.detectors import relative_per_example

    frame = examples(store, TAU, factor=0.3)
    want = relative_per_example(TrainingCurves.from_store(store), 0.3).sort_values(["run", "step", "example_id"])
    np.testing.assert_allclose(frame["premem"], want["premem"])
    # nothing counts as memorized at a run's first checkpoint under the relative rule: PreMem is the accuracy there
    first = frame[frame["step"] == frame["step"].min()]
    np.testing.assert_allclose(first["premem"], first["train_acc"])
    assert not np.allclose(frame["premem"], examples(store, TAU)["premem"])  # a rule of its own, not tau's


def test_the_correlations_are_scipys_pooled_and_per_run(store):
    frame = examples(store, TAU)
    table = correlations(frame)
    assert len(table) == 3 * (1 + 3) * 3  # (last, all, solved) x (pooled + 3 runs) x 3 predictors
    last = frame[frame["last"]]
    for at, rows in (("last", last), ("all", frame), ("solved", last[last["train_acc"] == 1])):
        assert len(rows[rows["run"] == "run0"]) >= 5
        for runs, g in [(POOLED, rows), *rows.groupby("run")]:
            for p in ("premem", "train_acc", "log_ppl") if at != "solved" else ("premem", "log_ppl"):
                got = table.query("examples == @at and runs == @runs and predictor == @p").iloc[0]
                assert got["n"] == len(g)
                assert got["pearson"] == pytest.approx(stats.pearsonr(g[p], g["robustness"]).statistic)
                assert got["spearman"] == pytest.approx(stats.spearmanr(g[p], g["robustness"]).statistic)
                assert got["spearman_p"] == pytest.approx(stats.spearmanr(g[p], g["robustness"]).pvalue)
    # robustness here follows train accuracy: the pooled coefficient says so
    assert table.query("examples == 'all' and runs == @POOLED and predictor == 'train_acc'")["spearman"].item() > 0.5
    # train accuracy is 1 over the solved examples: no coefficient
    assert table.query("examples == 'solved' and predictor == 'train_acc'")["spearman"].isna().all()


def test_a_constant_side_gives_nan_and_undefined_premem_is_left_out(store):
    frame = examples(store, TAU)
    frame.loc[frame["run"] == "run0", "robustness"] = 0.5  # constant within run0
    frame.loc[frame.index[:5], "premem"] = np.nan  # undefined (an unsampled pair)
    table = correlations(frame).set_index(["examples", "runs", "predictor"])
    assert np.isnan(table.loc[("all", "run0", "premem"), "spearman"])
    assert table.loc[("all", POOLED, "premem"), "n"] == len(frame) - 5
    assert table.loc[("all", POOLED, "train_acc"), "n"] == len(frame)


def test_compare_bootstraps_the_difference_of_absolute_spearman(store):
    frame = examples(store, TAU)
    out = compare(frame, n_boot=200).set_index("predictor")
    last = frame[frame["last"]]
    rho = {p: abs(stats.spearmanr(last[p], last["robustness"]).statistic) for p in ("premem", "train_acc", "log_ppl")}
    for p in ("train_acc", "log_ppl"):
        assert out.loc[p, "difference"] == pytest.approx(rho["premem"] - rho[p])
        assert out.loc[p, "ci_low"] <= out.loc[p, "difference"] <= out.loc[p, "ci_high"]
        assert out.loc[p, "runs"] == 3 and 0 <= out.loc[p, "runs_ahead"] + out.loc[p, "runs_tied"] <= 3
    # where nothing is memorized premem is train accuracy: the run is a tie, not a win either way
    same = frame.assign(premem=frame["premem"].where(frame["run"] != "run0", frame["train_acc"]))
    ties = compare(same, n_boot=20).set_index("predictor")
    assert ties.loc["train_acc", "runs_tied"] == 1 + out.loc["train_acc", "runs_tied"]


def test_binned_means(store):
    frame = examples(store, TAU)
    b = binned(frame, "train_acc")  # an accuracy over 5 samples: its own values are the bins
    assert len(b) == frame["train_acc"].nunique() and b["n"].sum() == len(frame)
    top = frame[frame["train_acc"] == frame["train_acc"].max()]["robustness"]
    assert b["mean"].iloc[-1] == pytest.approx(top.mean())
    q = binned(frame, "log_ppl", bins=4)
    assert len(q) == 4 and q["n"].sum() == len(frame) and q["x"].is_monotonic_increasing


def test_a_store_without_the_probe_says_how_to_get_it(synthetic_store):
    with pytest.raises(InputError, match="robustness_scores.parquet: table missing; score the runs with perturbations"):
        examples(synthetic_store, TAU)


def test_accuracy_with_and_without_each_perturbation(store):
    from premem.metrics.robustness import by_perturbation

    frame = examples(store, TAU)
    table = by_perturbation(store, frame).set_index("perturbation")
    assert list(table.index) == ["(none)", *PERTURBATIONS] and (table["examples"] == 3 * 25).all()
    train, robust = store.read("train_scores"), store.read("robustness_scores")
    last_train = train[train["step"] == 30]
    assert table.loc["(none)", "accuracy"] == pytest.approx((last_train["n_correct"] / last_train["n_samples"]).mean())
    first = robust[(robust["step"] == 30) & (robust["perturbation"] == " First")]
    assert table.loc[" First", "accuracy"] == pytest.approx(first["n_correct"].sum() / first["n_samples"].sum())
