import math

import numpy as np
import pandas as pd
import pytest

from premem.errors import InputError
from premem.metrics.premem import TrainingCurves, log_log_perplexity

TAU = -2.3
NOT_MEMORIZED = 1.5  # log(log(1.5)) = -0.90 >= tau
MEMORIZED = 1.01  # log(log(1.01)) = -4.6 < tau


def curves_for(accs, ppls, run="r", example_id=0):
    n = len(accs)
    train = pd.DataFrame(
        {
            "run": [run] * n,
            "step": [10 * (t + 1) for t in range(n)],
            "example_id": [example_id] * n,
            "n_samples": [5] * n,
            "n_correct": [round(5 * a) for a in accs],
            "perplexity": ppls,
        }
    )
    return TrainingCurves.from_tables(train, pd.DataFrame({"run": [run]}))


def premem_of(accs, ppls):
    return curves_for(accs, ppls).per_example(TAU)["premem"].round(6).tolist()


def test_threshold_matches_the_paper():
    # tau = -2.3 <=> ppl = exp(exp(-2.3)) = 1.1055
    assert log_log_perplexity(np.array([1.1056]))[0] >= TAU > log_log_perplexity(np.array([1.1054]))[0]
    assert log_log_perplexity(np.array([1.0, 0.99]))[0] == -math.inf  # exact reproduction counts as memorized


def test_premem_follows_accuracy_while_not_memorized():
    assert premem_of([0.4, 0.8, 0.6], [NOT_MEMORIZED] * 3) == [0.4, 0.8, 0.6]


def test_accuracy_gained_after_memorization_does_not_count():
    # memorized from the second checkpoint on: the later perfect accuracy is copying, not solving
    assert premem_of([0.2, 1.0, 1.0], [NOT_MEMORIZED, MEMORIZED, MEMORIZED]) == [0.2, 0.2, 0.2]


def test_premem_keeps_best_pre_memorization_accuracy_capped_by_current():
    accs = [0.6, 0.8, 1.0, 0.4]
    ppls = [NOT_MEMORIZED, NOT_MEMORIZED, MEMORIZED, MEMORIZED]
    assert premem_of(accs, ppls) == [0.6, 0.8, 0.8, 0.4]


def test_memorized_from_the_start_scores_zero():
    assert premem_of([1.0, 1.0], [MEMORIZED, MEMORIZED]) == [0.0, 0.0]


def test_examples_and_runs_do_not_leak_into_each_other():
    a = curves_for([0.8, 0.8], [NOT_MEMORIZED, MEMORIZED], run="a", example_id=0).frame
    b = curves_for([0.2, 1.0], [MEMORIZED, MEMORIZED], run="b", example_id=0).frame
    raw = pd.concat([a, b])
    train = pd.DataFrame(
        {"run": raw.run, "step": raw.step, "example_id": raw.example_id, "n_samples": 5,
         "n_correct": (raw.acc * 5).round().astype(int), "perplexity": np.exp(np.exp(raw.loglog))}
    )
    ex = TrainingCurves.from_tables(train, pd.DataFrame({"run": ["a", "b"]})).per_example(TAU)
    assert ex[ex.run == "a"].premem.round(6).tolist() == [0.8, 0.8]
    assert ex[ex.run == "b"].premem.round(6).tolist() == [0.0, 0.0]


def test_points_restrict_to_each_runs_training_examples():
    rows = []
    for ex_id, acc in [(0, 1.0), (1, 0.0), (2, 0.0)]:
        rows.append(("half", 10, ex_id, 5, int(5 * acc), NOT_MEMORIZED))
        rows.append(("full", 10, ex_id, 5, int(5 * acc), NOT_MEMORIZED))
    train = pd.DataFrame(rows, columns=["run", "step", "example_id", "n_samples", "n_correct", "perplexity"])
    runs = pd.DataFrame({"run": ["half", "full"], "train_example_ids": [[0], None]})
    pts = TrainingCurves.from_tables(train, runs).points(TAU).set_index("run")
    assert pts.loc["half", "premem"] == 1.0 and pts.loc["half", "n_examples"] == 1
    assert pts.loc["full", "premem"] == pytest.approx(1 / 3) and pts.loc["full", "n_examples"] == 3
    assert np.isnan(pts.loc["full", "test_acc"])  # no test scores given


def test_run_missing_from_runs_table_is_an_error():
    train = curves_for([0.5], [NOT_MEMORIZED]).frame  # noqa: F841 (builds fine)
    raw = pd.DataFrame({"run": ["x"], "step": [1], "example_id": [0], "n_samples": [5], "n_correct": [1], "perplexity": [1.5]})
    with pytest.raises(InputError, match="run 'x' is not in runs.parquet"):
        TrainingCurves.from_tables(raw, pd.DataFrame({"run": ["y"]}))


@pytest.mark.parametrize("value, message", [
    (0.93, r"row 7: perplexity is 0.93, below 1: impossible for exp of a mean token NLL"),
    (float("nan"), r"row 7: perplexity is NaN"),
    (float("inf"), r"row 7: perplexity must be a positive number, got inf"),
])
def test_impossible_perplexities_are_refused_when_read(synthetic_store, value, message):
    """exp of a mean NLL >= 0 is >= 1: a table dropped into a store with less (or NaN) is refused, naming it."""
    from premem.store import ScoreStore

    train = synthetic_store.read("train_scores")
    train.loc[7, "perplexity"] = value
    train.to_parquet(synthetic_store.path("train_scores"))  # as a tool other than premem would write it
    with pytest.raises(InputError, match=f"train_scores.parquet {message}"):
        TrainingCurves.from_store(ScoreStore(synthetic_store.root))


def test_unsampled_test_rows_are_refused_not_averaged_around(synthetic_store):
    runs, train, test = (synthetic_store.read(t) for t in ("runs", "train_scores", "test_scores"))
    test.loc[3, ["n_samples", "n_correct"]] = 0
    with pytest.raises(InputError, match="test_scores: run 'run0' step 10 example 3 has n_samples = 0"):
        TrainingCurves.from_tables(train, runs, test)


# -- pairs premem score left unsampled (sample=exact|final, premem.store) ------------------------

SAMPLE_TAU = -3.0  # synthetic_tables: unmemorized at the first checkpoint, memorized from the second on


def skipped_as_premem_score_would(train, runs, tau=SAMPLE_TAU, mode="exact"):
    """train_scores and runs as premem score writes them with this sample mode: the pairs it would not
    sample (premem.sampling.skipping.replay, the rule its actors apply) have no samples and a reason."""
    from premem.sampling.skipping import replay

    reasons = replay(train, tau, mode)
    out = train.assign(skipped=reasons)
    out.loc[reasons != "", ["n_samples", "n_correct"]] = 0
    return out, runs.assign(sample=mode, sample_tau=tau)


@pytest.mark.parametrize("tau", [SAMPLE_TAU, -2.5, -1.0])
def test_exact_skips_give_the_same_premem_bit_for_bit(tau):
    from tests.conftest import synthetic_tables

    runs, train, test = synthetic_tables(n_steps=5)
    full = TrainingCurves.from_tables(train, runs, test)
    part_train, part_runs = skipped_as_premem_score_would(train, runs)
    n_skipped = int((part_train["skipped"] != "").sum())
    assert 0 < n_skipped < len(train)
    part = TrainingCurves.from_tables(part_train, part_runs, test)
    a, b = full.per_example(tau), part.per_example(tau)
    assert not b["premem"].isna().any()
    assert (a["premem"].to_numpy() == b["premem"].to_numpy()).all()  # every example, every checkpoint
    pa, pb = full.points(tau), part.points(tau)
    assert (pa["premem"].to_numpy() == pb["premem"].to_numpy()).all()  # the run means too
    # train accuracy is what skipping gives up: computed on the sampled pairs only, and counted as such
    assert int(pb["n_unsampled"].sum()) == n_skipped == part.n_unsampled and int(pa["n_unsampled"].sum()) == 0
    assert (pb["n_premem_undefined"] == 0).all()


def test_final_skips_keep_the_final_premem_and_leave_earlier_ones_undefined_not_wrong():
    from tests.conftest import synthetic_tables

    runs, train, test = synthetic_tables(n_steps=5)
    full = TrainingCurves.from_tables(train, runs, test).per_example(SAMPLE_TAU)
    part_train, part_runs = skipped_as_premem_score_would(train, runs, mode="final")
    assert (part_train["skipped"] == "final").any()
    part = TrainingCurves.from_tables(part_train, part_runs, test).per_example(SAMPLE_TAU)
    last = full["step"] == full.groupby("run")["step"].transform("max")
    assert (full.loc[last, "premem"].to_numpy() == part.loc[last, "premem"].to_numpy()).all()
    known = part["premem"].notna()
    assert (~known).any() and (part.loc[known, "premem"] == full.loc[known, "premem"]).all()


def test_a_tau_below_the_one_pairs_were_skipped_at_is_refused():
    from tests.conftest import synthetic_tables

    runs, train, _ = synthetic_tables(n_steps=5)
    curves = TrainingCurves.from_tables(*skipped_as_premem_score_would(train, runs))
    with pytest.raises(InputError, match=r"^tau -3.5: below -3, the sample_tau this store's unsampled pairs"):
        curves.per_example(-3.5)
    # a store whose pairs were all sampled takes any tau
    TrainingCurves.from_tables(train, runs).per_example(-3.5)


def test_unsampled_pairs_need_their_reason_and_their_runs_sample_tau():
    from tests.conftest import synthetic_tables

    runs, train, _ = synthetic_tables()
    no_reason = train.copy()
    no_reason.loc[4, ["n_samples", "n_correct"]] = 0
    with pytest.raises(InputError, match="train_scores: run 'run0' step 10 example 4 has n_samples = 0 and no skipped"):
        TrainingCurves.from_tables(no_reason, runs)
    part_train, _ = skipped_as_premem_score_would(train, runs)
    with pytest.raises(InputError, match="run 'run0' has unsampled train pairs .* but no sample_tau"):
        TrainingCurves.from_tables(part_train, runs)
