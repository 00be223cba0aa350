import numpy as np
import pandas as pd
import pytest

from premem.errors import InputError
from premem.metrics.predict import choose_tau, predict
from premem.metrics.premem import TrainingCurves
from premem.store import ScoreStore
from tests.conftest import PAPER_STORE, synthetic_tables


@pytest.fixture(scope="module")
def paper_curves():
    return TrainingCurves.from_store(ScoreStore(PAPER_STORE))


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
