import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from premem.cli import main
from premem.errors import InputError
from premem.metrics.predict import TAU_MODES, choose_tau, fit_table, predict, resolve_tau
from premem.metrics.premem import TrainingCurves
from premem.store import ScoreStore
from tests.conftest import shared, synthetic_tables


@pytest.fixture(scope="module")
def paper_curves():
    return TrainingCurves.from_store(ScoreStore(shared("paper_runs", "gsm8k")))


def test_paper_reference_figures_at_tau_minus_2_3(paper_curves):
    """DESIGN.md §1: R² 0.939, leave-one-run-out 0.917, train acc 0.398, log-ppl 0.219 — from the paper's data."""
    pred = predict(paper_curves, -2.3)
    assert pred.n_points == 51 and pred.n_runs == 13
    assert pred.r2 == pytest.approx(0.939, abs=0.002)
    assert pred.r2_loro == pytest.approx(0.917, abs=0.002)
    assert pred.baselines["train_acc"].r2 == pytest.approx(0.398, abs=0.002)
    assert pred.baselines["train_log_ppl"].r2 == pytest.approx(0.219, abs=0.002)
    assert pred.r2 > max(b.r2 for b in pred.baselines.values())


def test_tau_sensitivity_matches_the_paper(paper_curves):
    # DESIGN.md §1: 0.949 at -2.5, 0.840 at -2.0, 0.641 at -1.7
    for tau, r2 in [(-2.5, 0.949), (-2.0, 0.840), (-1.7, 0.641)]:
        assert predict(paper_curves, tau).r2 == pytest.approx(r2, abs=0.002)


@pytest.mark.slow
def test_auto_tau_generalises_on_paper_runs(paper_curves):
    pred = predict(paper_curves, "auto")
    assert pred.tau_mode == "auto" and -4.0 <= pred.tau <= -0.5
    assert pred.r2_loro >= 0.92
    assert set(pred.tau_per_run) == set(pred.points["run"])


def _xy(tables, tau):
    runs, train, test = tables
    pts = TrainingCurves.from_tables(train, runs, test).points(tau)
    return pts["premem"].to_numpy(), pts["test_acc"].to_numpy(), pts["run"].to_numpy()


def test_auto_tau_never_sees_the_held_out_runs_test_scores():
    """Scrambling one run's test scores must not change the tau chosen when that run is held out."""
    runs, train, test = synthetic_tables(n_runs=5, n_steps=3, n_examples=15, seed=1)
    scrambled = test.copy()
    held = scrambled["run"] == "run2"
    scrambled.loc[held, "n_correct"] = 5 - scrambled.loc[held, "n_correct"]
    grid = (-3.0, -2.0, -1.0, 0.0)
    a = predict(TrainingCurves.from_tables(train, runs, test), "auto", grid=grid)
    b = predict(TrainingCurves.from_tables(train, runs, scrambled), "auto", grid=grid)
    assert a.tau_per_run["run2"] == b.tau_per_run["run2"]
    # ... while the held-out prediction for run2 is the same, its error is not
    pa, pb = (p.points.set_index(["run", "step"]) for p in (a, b))
    np.testing.assert_allclose(pa.loc["run2", "predicted_loro"], pb.loc["run2", "predicted_loro"])


def test_choose_tau_picks_the_informative_threshold():
    runs, train, test = synthetic_tables(n_runs=5, seed=2)
    curves = TrainingCurves.from_tables(train, runs, test)
    feats, y, r = {}, None, None
    for tau in (-8.0, -2.0, 5.0):  # -8: nothing memorized; 5: everything memorized (premem = 0)
        x, y, r = _xy((runs, train, test), tau)
        feats[tau] = x
    assert choose_tau(feats, y, r) != 5.0
    assert curves.points(5.0)["premem"].eq(0).all()


def test_unscored_runs_get_predictions(tmp_path):
    runs, train, test = synthetic_tables(n_runs=4)
    test = test[test.run != "run3"]
    pred = predict(TrainingCurves.from_tables(train, runs, test), -2.3)
    pts = pred.points.set_index("run")
    assert pred.n_points == 9 and pred.n_runs == 3
    assert pts.loc["run3", "test_acc"].isna().all()
    np.testing.assert_allclose(pts.loc["run3", "predicted"], pred.intercept + pred.slope * pts.loc["run3", "premem"])


def test_prediction_needs_two_scored_runs():
    runs, train, test = synthetic_tables(n_runs=2)
    with pytest.raises(InputError, match="at least 2 runs"):
        predict(TrainingCurves.from_tables(train, runs, test[test.run == "run0"]), -2.3)


# -- issue 12: no silent wrong numbers ----------------------------------------------------------


def _curves(n_runs=4, n_steps=3, test_edit=None):
    runs, train, test = synthetic_tables(n_runs=n_runs, n_steps=n_steps)
    return TrainingCurves.from_tables(train, runs, test_edit(test) if test_edit else test)


@pytest.mark.parametrize("tau", [float("nan"), float("inf"), -float("inf"), True, "high", [1.0]])
def test_a_tau_that_is_not_a_finite_number_is_refused(tau):
    with pytest.raises(InputError, match="tau: expected a finite number or 'auto'"):
        predict(_curves(), tau)


@pytest.mark.parametrize("tau", ["nan", "inf", "-inf", "NaN", "high"])
def test_the_cli_refuses_a_non_finite_tau(synthetic_store, capsys, tau):
    with pytest.raises(SystemExit) as e:
        main(["predict", "--store", str(synthetic_store.root), f"--tau={tau}"])
    assert e.value.code == 2
    assert f"argument --tau: expected a finite number or 'auto', got {tau!r}" in capsys.readouterr().err


def test_test_scores_of_an_unknown_run_are_named_not_dropped_silently(synthetic_store, caplog, capsys):
    test = synthetic_store.read("test_scores")
    test.loc[test.run == "run3", "run"] = "run_3"  # a typo
    synthetic_store.write("test_scores", test)
    with caplog.at_level(logging.WARNING):
        curves = TrainingCurves.from_store(synthetic_store)
    assert "left out the test scores of 'run_3': no run with train scores has that name" in caplog.text
    pred = predict(curves, -2.3)
    assert pred.n_runs == 3 and pred.dropped_test_runs == ["run_3"]
    assert main(["predict", "--store", str(synthetic_store.root), "--tau", "-2.3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dropped_test_runs"] == ["run_3"]
    assert main(["predict", "--store", str(synthetic_store.root), "--tau", "-2.3"]) == 0
    assert "left out: test scores of run_3" in capsys.readouterr().out
    # with nothing left to fit, the error says where the test scores went
    only_typo = synthetic_store.read("test_scores").assign(run="rnu0")
    with pytest.raises(InputError, match=r"the store has 0\); test scores of 'rnu0' match no run with train scores"):
        predict(TrainingCurves.from_tables(synthetic_store.read("train_scores"), synthetic_store.runs(), only_typo))


def test_constant_test_accuracy_leaves_r2_undefined(synthetic_store, capsys):
    pred = predict(_curves(test_edit=lambda t: t.assign(n_correct=2)), -2.3)  # test accuracy 0.4 everywhere
    for scores in [pred, *pred.baselines.values()]:
        assert math.isnan(scores.r2) and math.isnan(scores.r2_loro)  # sklearn would say 1.0: a perfect flat fit
    out = json.loads(json.dumps(pred.to_dict(), allow_nan=False))  # valid JSON: null, never NaN
    assert out["r2"] is None and out["r2_loro"] is None and out["baselines"]["train_acc"]["r2"] is None
    assert "test accuracy is 0.400 at every checkpoint" in out["r2_note"]
    rows = fit_table(pred).splitlines()[4:8]  # one per predictor: R2 and LORO R2 say so, MAE is still a number
    assert all(r.split()[-4:-2] == ["undefined", "undefined"] for r in rows), rows


def test_two_points_leave_r2_undefined_and_one_run_is_refused():
    pred = predict(_curves(n_runs=2, n_steps=1), -2.3)
    assert pred.n_points == 2 and math.isnan(pred.r2) and math.isnan(pred.r2_loro)
    assert "a line fits any 2 points exactly" in fit_table(pred)
    with pytest.raises(InputError, match="at least 2 runs \\(the store has 1\\)"):
        predict(_curves(n_runs=1), -2.3)
    with pytest.raises(InputError, match="tau=auto needs test scores for at least 3 runs \\(the store has 2\\)"):
        predict(_curves(n_runs=2), "auto")


# -- one default tau across verbs -------------------------------------------------------------


def test_the_default_tau_is_auto_from_three_scored_runs_else_the_papers():
    assert resolve_tau(None, 3) == ("auto", "auto") and resolve_tau(None, 2) == (-2.3, "default")
    assert resolve_tau(-2.0, 9) == (-2.0, "fixed") and resolve_tau("auto", 2) == ("auto", "auto")
    grid = (-3.0, -2.3, -1.0)
    four = predict(_curves(n_runs=4), grid=grid)
    assert four.tau_mode == "auto" and four.to_dict() == predict(_curves(n_runs=4), "auto", grid=grid).to_dict()
    assert "(auto; memorized" in fit_table(four)
    # two scored runs (of four): the paper's value, and the header says why
    two = predict(_curves(n_runs=4, test_edit=lambda t: t[t.run.isin(["run0", "run1"])]))
    assert (two.tau, two.tau_mode) == (-2.3, "default")
    assert "tau = -2.3 (default, fewer than 3 runs with test scores; memorized" in fit_table(two)
    assert two.r2 == predict(_curves(n_runs=4, test_edit=lambda t: t[t.run.isin(["run0", "run1"])]), -2.3).r2


def test_predict_report_and_quickstart_share_the_default(tmp_path):
    """The same store, the same numbers: predict's and report's flags and quickstart's config all leave tau
    unset, and the report fits with predict's rule."""
    from premem.cli import build_parser
    from premem.recipes.quickstart import QuickstartConfig
    from premem.report import build_report

    parser = build_parser()
    for verb in ("predict", "report"):
        assert parser.parse_args([verb, "--store", "s"]).tau is None
    assert QuickstartConfig().tau is None
    for n_runs, mode in ((4, "auto"), (2, "default")):
        store = ScoreStore(tmp_path / f"s{n_runs}", create=True)
        runs, train, test = synthetic_tables(n_runs=n_runs)
        for name, table in (("runs", runs), ("train_scores", train), ("test_scores", test)):
            store.write(name, table)
        pred = predict(TrainingCurves.from_store(store))
        page = build_report(store.root, tmp_path / f"r{n_runs}.html").read_text()
        assert pred.tau_mode == mode and f"<b>{pred.tau:g}</b> ({TAU_MODES[mode]}" in page
        assert f'<td class="num">{pred.r2:.3f}</td><td class="num">{pred.r2_loro:.3f}</td>' in page


def test_paper_store_table_at_tau_minus_2_3_is_unchanged(paper_curves):
    assert fit_table(predict(paper_curves, -2.3)).splitlines() == [
        "13 runs, 51 checkpoints with test scores; tau = -2.3 (fixed; memorized when log(log(ppl)) < tau)",
        "test_acc ~ 1.054 * premem + -0.026",
        "",
        "predictor                               R2  LORO R2     MAE  LORO MAE",
        "pre-memorization train accuracy      0.939    0.917   0.027     0.032",
        "train accuracy                       0.398    0.234   0.082     0.094",
        "mean train log-perplexity            0.219   -0.054   0.092     0.107",
        "fraction of examples memorized       0.130   -0.144   0.098     0.112",
    ]


def test_test_scores_at_a_checkpoint_without_train_scores_are_named(caplog):
    runs, train, test = synthetic_tables(n_runs=3)
    train = train[~((train.run == "run1") & (train.step == 30))]  # run1's last checkpoint: test scores only
    with caplog.at_level(logging.WARNING):
        pred = predict(TrainingCurves.from_tables(train, runs, test), -2.3)
    assert "1 checkpoint(s) have test scores but no train scores and are left out (first: run 'run1' step 30)" \
        in caplog.text
    assert pred.n_points == 8 and pred.dropped_test_runs == []


def test_a_store_with_unsampled_pairs_fits_the_same_premem_and_says_what_covers_sampled_pairs_only(tmp_path):
    from tests.metrics.test_premem import SAMPLE_TAU, skipped_as_premem_score_would

    runs, train, test = synthetic_tables(n_steps=5)
    full = predict(TrainingCurves.from_tables(train, runs, test), -2.5)
    part_train, part_runs = skipped_as_premem_score_would(train, runs)
    curves = TrainingCurves.from_tables(part_train, part_runs, test)
    pred = predict(curves, -2.5)
    assert (pred.r2, pred.r2_loro, pred.slope) == (full.r2, full.r2_loro, full.slope)  # premem: exact
    assert not full.notes and pred.notes[0].startswith("train accuracy computed on sampled pairs only: ")
    assert f"note: {pred.notes[0]}" in fit_table(pred) and pred.to_dict()["notes"] == pred.notes
    with pytest.raises(InputError, match=r"^tau -3.2: below -3, the sample_tau"):
        predict(curves, -3.2)
    auto = predict(curves, "auto")  # the grid is searched at or above the recorded sample_tau only
    assert auto.tau >= SAMPLE_TAU and min(auto.tau_per_run.values()) >= SAMPLE_TAU
