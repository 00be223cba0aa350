import json
import math

import numpy as np
import pandas as pd
import pytest

import premem
from premem.cli import main
from premem.errors import InputError
from premem.metrics.calibration import (FORMAT, _SharedCurves, calibrate, half_width, load_fit, loro_coverage,
                                        predict_from_fit, save_fit)
from premem.metrics.predict import predict
from premem.metrics.premem import TrainingCurves
from premem.store import ScoreStore
from tests.conftest import shared, synthetic_tables
from tests.metrics.test_premem import SAMPLE_TAU, skipped_as_premem_score_would


def _store(path, runs, train, test=None) -> ScoreStore:
    store = ScoreStore(path, create=True)
    store.write("runs", runs)
    store.write("train_scores", train)
    if test is not None:
        store.write("test_scores", test)
    return store


def _split(tables, held: str, tmp_path):
    """A store of every run but `held` (with test scores) and one of `held` alone, its test scores left out."""
    runs, train, test = tables
    fit = _store(tmp_path / "fit", runs[runs.run != held], train[train.run != held], test[test.run != held])
    new = _store(tmp_path / "new", runs[runs.run == held], train[train.run == held])
    return fit, new


# -- the band ------------------------------------------------------------------------------------


def test_the_band_is_the_split_conformal_quantile_of_the_held_out_errors():
    r = np.array([0.05, -0.01, 0.02, -0.09, 0.03, 0.04, -0.06, 0.07, -0.08])  # |r| sorted: .01 .02 ... .09
    assert half_width(r, 0.9) == pytest.approx(0.09)  # ceil(10 * 0.9) = 9th smallest: the largest
    assert half_width(r, 0.5) == pytest.approx(0.05)  # ceil(10 * 0.5) = 5th
    assert half_width(np.arange(19) / 100, 0.9) == pytest.approx(0.17)  # 18th of 19
    with pytest.raises(InputError, match=r"a 90% band needs at least 9 checkpoints .* \(the fit has 8\)"):
        half_width(r[:8], 0.9)
    with pytest.raises(InputError, match="level: expected a number between 0 and 1"):
        half_width(r, 1.0)


def test_predictions_from_a_fit_are_its_line_and_band_on_runs_without_test_scores(tmp_path):
    tables = synthetic_tables(n_runs=5, n_steps=4)
    fit_store, new_store = _split(tables, "run2", tmp_path)
    fit = calibrate(fit_store, -2.3)
    pred = predict(fit_store, -2.3)
    assert (fit.tau, fit.slope, fit.intercept, fit.r2_loro) == (-2.3, pred.slope, pred.intercept, pred.r2_loro)
    assert fit.runs == ["run0", "run1", "run3", "run4"] and fit.n_points == 16
    errors = pred.points["test_acc"] - pred.points["predicted_loro"]
    assert fit.half_width == half_width(errors, 0.9)  # from the held-out errors, not the in-sample ones

    table = predict_from_fit(new_store, fit)
    premem_x = TrainingCurves.from_store(new_store).points(-2.3)["premem"].to_numpy()
    np.testing.assert_allclose(table["predicted"], fit.slope * premem_x + fit.intercept)
    np.testing.assert_allclose(table["lower"], np.clip(table["predicted"] - fit.half_width, 0, 1))
    np.testing.assert_allclose(table["upper"], np.clip(table["predicted"] + fit.half_width, 0, 1))
    assert list(table["run"]) == ["run2"] * 4 and table["test_acc"].isna().all() and not table["in_fit"].any()
    narrower = predict_from_fit(new_store, fit, level=0.8)  # another level: from the same held-out errors
    assert (narrower["upper"] - narrower["predicted"]).max() == pytest.approx(half_width(errors, 0.8))


def test_the_coverage_check_refits_without_each_run_as_a_store_without_its_test_scores_would():
    runs, train, test = synthetic_tables(n_runs=5, n_steps=3, seed=3)
    curves = TrainingCurves.from_tables(train, runs, test)
    grid = (-3.0, -2.0, -1.0)
    shared_curves = _SharedCurves.of(curves)
    for run in ["run0", "run3"]:  # one per-tau cache, each copy hiding one run's test scores: as if it had none
        hidden = predict(shared_curves.hide(run), "auto", grid=grid)
        plain = predict(TrainingCurves.from_tables(train, runs, test[test.run != run]), "auto", grid=grid)
        assert (hidden.tau, hidden.slope, hidden.r2_loro) == (plain.tau, plain.slope, plain.r2_loro)
        pd.testing.assert_frame_equal(hidden.points, plain.points)
    cov = loro_coverage(curves, -2.3)
    assert cov["points"] == 15 and cov["runs"] == 5 and len(cov["per_run"]) == 5
    assert cov["covered"] == sum(r["covered"] for r in cov["per_run"]) and cov["fraction"] == cov["covered"] / 15
    assert loro_coverage(TrainingCurves.from_tables(*_drop_runs((runs, train, test), 3)), -2.3) is None  # 2 runs


def _drop_runs(tables, n: int):
    runs, train, test = tables
    keep = runs.run.iloc[:-n] if n else runs.run
    return train[train.run.isin(keep)], runs[runs.run.isin(keep)], test[test.run.isin(keep)]


# -- the file ------------------------------------------------------------------------------------


def test_a_fit_file_is_versioned_json_that_reads_back_the_same(tmp_path):
    runs, train, test = synthetic_tables(n_runs=4)
    test = test.assign(n_correct=2)  # constant test accuracy: R2 undefined, written null
    fit = calibrate(TrainingCurves.from_tables(train, runs, test), -2.3)
    path = save_fit(fit, tmp_path / "fit.json")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["premem_version"] == premem.__version__
    assert data["r2"] is None and data["tau"] == -2.3 and data["band"]["level"] == 0.9
    assert len(data["residuals"]) == data["n_points"] == 12 and data["runs"] == ["run0", "run1", "run2", "run3"]
    back = load_fit(path)
    assert math.isnan(back.r2) and back.to_dict() == fit.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]  # written atomically: no temporary left


@pytest.mark.parametrize("edit, message", [
    (lambda d: "not json", r"not a fit file: Expecting value"),
    (lambda d: [1], r"not a fit file: expected a JSON object, got list"),
    (lambda d: {**d, "format": "premem.fit/9"}, r"format 'premem.fit/9' is not premem.fit/1"),
    (lambda d: {k: v for k, v in d.items() if k != "slope"}, r"field slope: missing"),
    (lambda d: {**d, "tau": "auto"}, r"field tau: 'auto' is not a finite number"),
    (lambda d: {**d, "band": {**d["band"], "half_width": "wide"}}, r"field band.half_width: 'wide' is not a finite"),
    (lambda d: {**d, "band": {**d["band"], "level": 90}}, r"band: level must be in \(0, 1\)"),
    (lambda d: {**d, "residuals": d["residuals"][:1] + [{"run": "r", "step": 1.5}]},
     r"field residuals\[1\].step: 1.5 is not an integer"),
    (lambda d: {**d, "sample_tau": -1.0}, r"tau -2.3 is below sample_tau -1, which no fit can be made at"),
])
def test_a_bad_fit_file_is_one_line_naming_the_file_and_the_field(tmp_path, edit, message):
    runs, train, test = synthetic_tables(n_runs=4)
    good = calibrate(TrainingCurves.from_tables(train, runs, test), -2.3).to_dict()
    path = tmp_path / "fit.json"
    bad = edit(good)
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(InputError, match=f"^{path}: {message}") as e:
        load_fit(path)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no such fit file"):
        load_fit(tmp_path / "missing.json")


def test_a_store_sampled_at_a_higher_sample_tau_than_the_fits_tau_is_refused(tmp_path):
    runs, train, test = synthetic_tables(n_steps=5)
    low = calibrate(TrainingCurves.from_tables(train, runs, test), -3.5)  # below the store's sample_tau -3
    part_train, part_runs = skipped_as_premem_score_would(train, runs)
    skipped = TrainingCurves.from_tables(part_train, part_runs)
    with pytest.raises(InputError, match=r"the fit's tau -3.5 is below -3, the sample_tau this store's"):
        predict_from_fit(skipped, low)
    fit = calibrate(TrainingCurves.from_tables(part_train, part_runs, test), -2.5)  # the fit records its own
    assert fit.sample_tau == SAMPLE_TAU and load_fit(save_fit(fit, tmp_path / "f.json")).sample_tau == SAMPLE_TAU
    assert predict_from_fit(skipped, fit)["predicted"].notna().all()


# -- premem predict --save-fit / --fit ---------------------------------------------------------


def test_the_cli_saves_a_fit_and_predicts_a_run_without_test_scores(tmp_path, capsys):
    fit_store, new_store = _split(synthetic_tables(n_runs=5, n_steps=4), "run2", tmp_path)
    out = tmp_path / "fit.json"
    assert main(["predict", "--store", str(fit_store.root), "--save-fit", str(out)]) == 0  # the default tau: auto
    text = capsys.readouterr().out
    assert f"fit saved: {out}" in text and "band: 90% prediction interval, predicted +/- " in text
    fit = load_fit(out)
    assert fit.tau_mode == "auto" and fit.coverage_loro["runs"] == 4

    assert main(["predict", "--store", str(new_store.root), "--fit", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.lstrip().startswith("run "))
    assert header.split() == ["run", "step", "premem", "predicted", "lower", "upper"]  # no test_acc to compare with
    assert [line.split()[:2] for line in text.splitlines()[-4:]] == [["run2", s] for s in ("10", "20", "30", "40")]
    assert main(["predict", "--store", str(new_store.root), "--fit", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tau"] == fit.tau and [p["step"] for p in result["points"]] == [10, 20, 30, 40]
    assert all(p["test_acc"] is None and p["lower"] <= p["predicted"] <= p["upper"] for p in result["points"])


@pytest.mark.parametrize("extra, message", [
    (["--tau", "-2"], "--tau: not with --fit"), (["--plot", "p.png"], "--plot: not with --fit"),
])
def test_the_cli_refuses_what_a_saved_fit_cannot_do(synthetic_store, tmp_path, capsys, extra, message):
    out = tmp_path / "fit.json"
    assert main(["predict", "--store", str(synthetic_store.root), "--tau", "-2.3", "--save-fit", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", "--store", str(synthetic_store.root), "--fit", str(out), *extra]) == 2
    assert capsys.readouterr().err.startswith(f"premem: error: {message}")


def test_the_cli_checks_the_fit_file_before_any_work(synthetic_store, tmp_path, capsys):
    root = str(synthetic_store.root)
    for out, message in [(root, "is a directory"), (str(synthetic_store.path("runs")), "lies inside")]:
        assert main(["predict", "--store", root, "--save-fit", out]) == 2
        assert f"premem: error: --save-fit {out}: {message}" in capsys.readouterr().err
    plot = str(tmp_path / "p.png")
    assert main(["predict", "--store", root, "--plot", plot, "--save-fit", plot]) == 2
    assert "is also an input" in capsys.readouterr().err and not (tmp_path / "p.png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["predict", "--store", str(tmp_path / "no-store"), "--fit", str(bad)]) == 2  # the file first
    assert capsys.readouterr().err == f"premem: error: {bad}: field format: missing\n"


def test_too_few_checkpoints_for_a_band_write_no_fit_file(tmp_path, capsys):
    store = _store(tmp_path / "s", *synthetic_tables(n_runs=2, n_steps=3))  # 6 checkpoints: a 90% band needs 9
    out = tmp_path / "fit.json"
    assert main(["predict", "--store", str(store.root), "--save-fit", str(out)]) == 2
    assert "a 90% band needs at least 9 checkpoints" in capsys.readouterr().err and not out.exists()


def test_the_python_api_exports_the_calibration():
    assert premem.save_fit is save_fit and premem.load_fit is load_fit and premem.calibrate is calibrate
    assert premem.predict_from_fit is predict_from_fit and "Fit" in dir(premem)


# -- a real store: the paper's runs --------------------------------------------------------------


HELD = "gsm8k_orig_6epochs_full_lr2e-05_bs128"


def test_a_fit_on_the_papers_runs_predicts_a_held_out_run_inside_its_band(tmp_path, capsys):
    """Calibrate on 12 of the paper's 13 runs, then predict the 13th as if it had no test scores; its real
    test accuracy, read after, lies inside the band at every checkpoint."""
    paper = ScoreStore(shared("paper_runs", "gsm8k"))
    tables = (paper.runs(), paper.read("train_scores"), paper.read("test_scores"))
    fit_store, new_store = _split(tables, HELD, tmp_path)
    out = tmp_path / "fit.json"
    assert main(["predict", "--store", str(fit_store.root), "--tau", "-2.5", "--save-fit", str(out)]) == 0
    fit = load_fit(out)
    assert fit.n_points == 45 and 0.02 < fit.half_width < 0.1 and fit.coverage_loro["fraction"] >= 0.75
    capsys.readouterr()
    assert main(["predict", "--store", str(new_store.root), "--fit", str(out)]) == 0
    assert HELD in capsys.readouterr().out
    # the same run with its test scores: the real accuracy printed beside the prediction, inside the band
    real = _store(tmp_path / "real", *(t[t.run == HELD] for t in tables))
    assert main(["predict", "--store", str(real.root), "--fit", str(out)]) == 0
    assert "6 of 6 checkpoints of runs the fit was not made on have test accuracy inside the 90% band" in \
        capsys.readouterr().out
    table = predict_from_fit(real, fit)
    assert table["test_acc"].between(table["lower"], table["upper"]).all()
