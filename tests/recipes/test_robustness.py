"""premem experiment robustness end to end on a quickstart small enough for about two minutes: real training,
real Ray actors sampling perturbed prompts, the correlations, the figure and the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from premem.config import load_config
from premem.errors import InputError
from premem.recipes.robustness import RobustnessConfig, experiment
from premem.store import ScoreStore
from tests.recipes.test_quickstart import SMALL

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "experiment" / "robustness.yaml"


def settings(tmp: Path) -> list[str]:
    return [f"quickstart.{s}" for s in SMALL] + [f"quickstart.out={tmp / 'qs'}", f"out={tmp / 'robust'}",
                                                  "bootstrap=100"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    cfg = load_config(RobustnessConfig, CONFIG, settings(tmp))
    return cfg, experiment(cfg)


@pytest.mark.slow
def test_every_checkpoint_of_every_run_is_probed_under_both_perturbations(done):
    cfg, result = done
    assert cfg.perturbations == [" First", " We know that"]  # the config file's, the paper's
    store = ScoreStore(Path(cfg.out) / "store")
    train, robust = store.read("train_scores"), store.read("robustness_scores")
    assert len(result.runs) == 4 and set(robust["run"]) == set(result.runs)
    pairs = train[["run", "step", "example_id"]].drop_duplicates()
    assert len(robust) == 2 * len(pairs) and (robust["n_samples"] == 2).all()
    assert not store.has("test_scores")  # training queries only
    # the unperturbed samples are the quickstart's own: the same seeds, every pair sampled there too
    quick = ScoreStore(Path(cfg.quickstart.out) / "store").read("train_scores")
    key = ["run", "step", "example_id"]
    pd.testing.assert_frame_equal(train.sort_values(key, ignore_index=True)[quick.columns],
                                  quick.sort_values(key, ignore_index=True), check_exact=True)


@pytest.mark.slow
def test_the_table_is_scipys_over_the_written_examples(done):
    cfg, result = done
    out = Path(cfg.out)
    table, examples = pd.read_csv(out / "robustness.csv"), pd.read_csv(out / "examples.csv")
    last = examples[examples["last"]]
    assert set(table["predictor"]) == {"premem", "train_acc", "log_ppl"}
    assert set(table["runs"]) == {"all runs", *result.runs}
    for p in ("premem", "train_acc", "log_ppl"):
        row = table.query("examples == 'last' and runs == 'all runs' and predictor == @p").iloc[0]
        ok = last[[p, "robustness"]].dropna()
        assert row["n"] == len(ok)
        assert row["spearman"] == pytest.approx(stats.spearmanr(ok[p], ok["robustness"]).statistic, nan_ok=True)
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison["predictor"]) == ["train_acc", "log_ppl"]
    html = (out / "report.html").read_text()
    assert html.count("<img") == 1 and "http://" not in html and "https://" not in html
    assert (out / "robustness.png").stat().st_size > 10_000
    assert set(result.seconds) == {"quickstart", "probe", "analyse"}


@pytest.mark.slow
def test_the_command_reuses_everything_done(done, capsys):
    from premem.cli import main

    cfg, _ = done
    tmp = Path(cfg.out).parent
    before = ScoreStore(Path(cfg.out) / "store").read("robustness_samples")
    assert main(["experiment", "robustness", "--config", str(CONFIG), *settings(tmp)]) == 0
    printed = capsys.readouterr().out
    assert "correlation with per-example robustness at each run's last checkpoint" in printed
    after = ScoreStore(Path(cfg.out) / "store").read("robustness_samples")
    pd.testing.assert_frame_equal(after, before)


@pytest.mark.parametrize("override, error", [
    ("perturbations=[]", "perturbations: give at least one"),
    ("perturbations=[' First', ' First']", "perturbations: ' First' is listed twice"),
    ("bootstrap=0", "bootstrap: expected an integer >= 1"),
    ("detector=gmm", "detector: expected tau or relative, got 'gmm'"),
    ("quickstart.sweep.lr=[1e-3]", "quickstart.sweep: 1 run(s) is too few"),
])
def test_a_bad_setting_is_refused_before_anything_is_written(tmp_path, override, error):
    one_run = ["quickstart.sweep.epochs=[4]", "quickstart.sweep.data_fraction=[1.0]"]  # lr=[1e-3] leaves one
    cfg = load_config(RobustnessConfig, CONFIG, [f"quickstart.out={tmp_path / 'qs'}", f"out={tmp_path / 'r'}",
                                                 *one_run, override])
    with pytest.raises(InputError, match="^" + error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        experiment(cfg)
    assert list(tmp_path.iterdir()) == []


def test_the_quickstart_folder_is_not_an_output(tmp_path):
    cfg = load_config(RobustnessConfig, CONFIG, [f"quickstart.out={tmp_path}", f"out={tmp_path}"])
    with pytest.raises(InputError, match="^out: .* is quickstart.out too"):
        experiment(cfg)
