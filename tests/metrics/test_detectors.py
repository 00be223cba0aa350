import json

import numpy as np
import pandas as pd
import pytest

from premem.cli import VERBS, main
from premem.errors import InputError
from premem.metrics.detectors import DETECTORS, Evaluator, best_fixed_tau, nested_loro, predict_with, weighted_premem
from premem.metrics.predict import predict
from premem.metrics.premem import TrainingCurves, premem_accuracy
from premem.store import ScoreStore
from tests.conftest import shared, synthetic_tables
from tests.metrics.test_premem import SAMPLE_TAU, skipped_as_premem_score_would


@pytest.fixture(scope="module")
def paper():
    return Evaluator(TrainingCurves.from_store(ScoreStore(shared("paper_runs", "gsm8k"))))


def curves_of(runs, train, test=None):
    return TrainingCurves.from_tables(train, runs, test)


def test_a_step_weight_is_premems_own_rule_on_the_paper_runs(paper):
    f = paper.curves.frame
    for tau in (-2.3, -1.0):
        step = (f["loglog"].to_numpy() >= tau).astype(float)
        expected = premem_accuracy(f["acc"].to_numpy(), f["loglog"].to_numpy(), paper.curves.group, tau)
        np.testing.assert_array_equal(weighted_premem(f["acc"].to_numpy(), step, paper.curves.group), expected)


def test_the_harness_reproduces_auto_tau_on_the_paper_runs_and_relative_beats_it(paper):
    """The `tau` detector is tau=auto run through the harness: same taus per held-out run, same LORO R²."""
    auto = predict(paper.curves, "auto")
    step = nested_loro(paper, DETECTORS["tau"])
    assert {r: p[0] for r, p in step.params_per_run.items()} == auto.tau_per_run
    assert step.r2_loro == pytest.approx(auto.r2_loro, abs=1e-12) == pytest.approx(0.921, abs=0.001)
    assert best_fixed_tau(paper) == (-2.5, pytest.approx(0.949, abs=0.001))
    relative = nested_loro(paper, DETECTORS["relative"])  # the figure the benchmark reports (benchmarks/detectors.py)
    assert relative.r2_loro > 0.96 > auto.r2_loro and relative.mae_loro < auto.mae_loro


def perturbed(train, run, seed=0):
    """train_scores with one run's perplexities replaced by others (still > 1)."""
    out = train.copy()
    rows = out["run"] == run
    out.loc[rows, "perplexity"] = 1.0 + np.random.default_rng(seed).random(int(rows.sum())) * 3
    return out


@pytest.mark.parametrize("name", ["soft", "relative", "gmm"])
def test_parameters_are_chosen_without_the_held_out_runs_perplexities_or_test_scores(name):
    runs, train, test = synthetic_tables(n_runs=5, n_steps=4, n_examples=15, seed=3)
    scrambled = test.copy()
    held = scrambled["run"] == "run2"
    scrambled.loc[held, "n_correct"] = 5 - scrambled.loc[held, "n_correct"]
    base = nested_loro(Evaluator(curves_of(runs, train, test)), DETECTORS[name])
    other_ppl = nested_loro(Evaluator(curves_of(runs, perturbed(train, "run2"), test)), DETECTORS[name])
    other_test = nested_loro(Evaluator(curves_of(runs, train, scrambled)), DETECTORS[name])
    assert base.params_per_run["run2"] == other_ppl.params_per_run["run2"] == other_test.params_per_run["run2"]
    # ... while the held-out run's own perplexities do move its prediction: the test can fail
    ev = Evaluator(curves_of(runs, train, test))
    rows = ev.runs == "run2"
    assert not np.allclose(base.held_out[rows], other_ppl.held_out[rows])


def one_run(ppl, acc):
    """One run, one example, a checkpoint per value (steps 1, 2, ...), 10 samples each."""
    n = len(ppl)
    train = pd.DataFrame({"run": "r", "step": np.arange(1, n + 1), "example_id": 0, "n_samples": 10,
                          "n_correct": np.round(np.asarray(acc) * 10).astype(int), "perplexity": ppl})
    return curves_of(pd.DataFrame({"run": ["r"]}), train)


@pytest.mark.parametrize("name, params", [("relative", (0.1,)), ("soft", (-2.3, 0.1)), ("tau", (-2.3,))])
def test_an_example_whose_perplexity_collapses_is_memorized_from_that_checkpoint(name, params):
    ev = Evaluator(one_run(ppl=[3.0, 2.8, 1.01, 1.005], acc=[0.4, 0.6, 1.0, 1.0]))
    weight, premem = ev.per_row(DETECTORS[name], params)
    assert weight[:2] == pytest.approx([1.0, 1.0], abs=1e-3) and weight[2:] == pytest.approx([0.0, 0.0], abs=1e-3)
    # the accuracy it reached while not memorized, capped by the accuracy now: not the 1.0 of recall
    assert premem == pytest.approx([0.4, 0.6, 0.6, 0.6], abs=1e-3)


def test_relative_sets_each_examples_threshold_by_where_it_started():
    """The same perplexity is memorized for an example that started high and not for one that started low."""
    train = pd.DataFrame({"run": "r", "step": [1, 2, 1, 2], "example_id": [0, 0, 1, 1], "n_samples": 10,
                          "n_correct": [5, 5, 5, 5], "perplexity": [50.0, 1.2, 1.25, 1.2]})
    ev = Evaluator(curves_of(pd.DataFrame({"run": ["r"]}), train))
    weight, _ = ev.per_row(DETECTORS["relative"], (0.3,))
    assert list(weight) == [1.0, 0.0, 1.0, 1.0]  # rows sorted by example, step


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_exact_skips_stay_exact_for_every_detector(name):
    """Pairs below the store's sample_tau count as memorized for every detector, so a sample=exact store gives
    the PreMem of the same store sampled in full, bit for bit (with the same floor)."""
    runs, train, test = synthetic_tables(n_steps=5)
    part = curves_of(*skipped_as_premem_score_would(train, runs)[::-1], test)
    full = curves_of(runs, train, test)
    full.min_tau = SAMPLE_TAU  # the same floor, on pairs that were all sampled
    assert part.n_unsampled > 0
    a, b = Evaluator(full), Evaluator(part)
    candidates = DETECTORS[name].candidates(full.frame, SAMPLE_TAU)
    params = candidates[len(candidates) // 2]  # a centre, factor or tau mid-grid; the mixture fitted on these pairs
    pa, pb = a.per_row(DETECTORS[name], params)[1], b.per_row(DETECTORS[name], params)[1]
    assert not np.isnan(pb).any() and (pa == pb).all()


def test_final_skips_leave_premem_undefined_not_wrong_and_are_noted():
    runs, train, test = synthetic_tables(n_runs=4, n_steps=3)
    # at -3.3 some pairs of the second checkpoint are memorized: sample=final skips them (the third is the last)
    part_train, part_runs = skipped_as_premem_score_would(train, runs, tau=-3.3, mode="final")
    pred = predict_with(curves_of(part_runs, part_train, test), "soft")
    assert pred.points["n_premem_undefined"].sum() > 0
    assert any("sampled pairs only" in n for n in pred.notes)
    assert pred.points["premem"].notna().all()  # each checkpoint's mean over its defined pairs
    # where every pair of a checkpoint is undefined there is no figure to fit: a one-line error, not a NaN fit
    part_train, part_runs = skipped_as_premem_score_would(train, runs, tau=SAMPLE_TAU, mode="final")
    with pytest.raises(InputError, match=r"^detector soft: run 'run\d' step 20 has no pair whose pre-memorization"):
        predict_with(curves_of(part_runs, part_train, test), "soft")
    # and the same for the tau rule itself (premem predict without --detector), which sklearn refused on NaN before
    with pytest.raises(InputError, match=r"^tau -?[\d.]+: run 'run\d' step 20 has no pair whose pre-memorization"):
        predict(curves_of(part_runs, part_train, test), SAMPLE_TAU)
    with pytest.raises(InputError, match=r"run 'run\d' step 20 has no pair whose pre-memorization"):
        predict(curves_of(part_runs, part_train, test), "auto")


def test_predict_with_needs_three_scored_runs_and_a_known_detector():
    runs, train, test = synthetic_tables(n_runs=2)
    with pytest.raises(InputError, match="detector soft: needs test scores for at least 3 runs"):
        predict_with(curves_of(runs, train, test), "soft")
    with pytest.raises(InputError, match="detector: expected one of tau, soft, relative, gmm, got 'hard'"):
        predict_with(curves_of(runs, train, test), "hard")


def test_the_cli_offers_every_detector_and_keeps_tau_the_default(synthetic_store, capsys):
    detector_flag = next(f for f in VERBS["predict"].flags if f[0] == "--detector")
    assert detector_flag[3]["choices"] == list(DETECTORS) and detector_flag[3]["default"] == "tau"
    store = str(synthetic_store.root)
    assert main(["predict", "--store", store]) == 0
    default = capsys.readouterr().out
    assert main(["predict", "--store", store, "--detector", "tau"]) == 0
    assert capsys.readouterr().out == default and "tau = " in default.splitlines()[0]


def test_predict_detector_prints_its_table_and_json(synthetic_store, capsys):
    store = str(synthetic_store.root)
    assert main(["predict", "--store", store, "--detector", "relative"]) == 0
    text = capsys.readouterr().out
    assert "detector relative" in text.splitlines()[0] and "parameters chosen for each held-out run" in text
    assert main(["predict", "--store", store, "--detector", "relative", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = predict_with(store, "relative")
    assert out["detector"] == "relative" and out["tau"] is None and out["params"] == expected.params
    assert out["r2_loro"] == pytest.approx(expected.r2_loro)
    assert set(out["params_per_run"]) == {f"run{i}" for i in range(4)}
    assert len(out["points"]) == len(expected.points)


@pytest.mark.parametrize("extra", [["--tau", "0"], ["--plot", "x.png"], ["--save-fit", "f.json"], ["--fit", "f.json"]])
def test_a_detector_refuses_the_flags_of_a_tau_fit(synthetic_store, capsys, tmp_path, extra):
    assert main(["predict", "--store", str(synthetic_store.root), "--detector", "soft", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"premem: error: {extra[0]}: not with --detector soft, which sets no tau (use --detector tau)"
    assert not any(tmp_path.glob("*.png")) and not any(tmp_path.glob("*.json"))
