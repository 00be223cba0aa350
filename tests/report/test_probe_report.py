"""The report's "Learning dynamics (probes)" section, opened in headless Chromium (see test_report.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from premem.errors import InputError
from premem.metrics.probes import squeezing
from premem.report import build_report
from premem.store import ScoreStore
from tests.report.test_report import Opened, assert_self_contained, browser, check_page, make_store  # noqa: F401 (browser: fixture)

TYPES = ("chosen", "rejected", "greedy", "random_sentence")
STEPS = (0, 5, 10)
# per run and type: the drift of the summed log-prob per step. "squeeze": greedy up, chosen and rejected down
DRIFT = {
    "squeeze": {"chosen": -0.3, "rejected": -0.8, "greedy": 0.5, "random_sentence": -0.1},
    "plain": {"chosen": 0.6, "rejected": 0.4, "greedy": 0.5, "random_sentence": 0.05},
}


def probe_scores(runs=tuple(DRIFT), n_probes: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for run in runs:
        for step in STEPS:
            for pid in range(n_probes):
                for t in TYPES:
                    n = int(rng.integers(5, 30))
                    s = -40.0 - 3 * pid + DRIFT[run][t] * step + rng.normal(0, 0.2)
                    rows.append({"run": run, "step": step, "probe_id": pid, "type": t, "sum_logprob": s,
                                 "n_tokens": n, "mean_logprob": s / n,
                                 "text": "model text <b>&" if t == "greedy" else None})
    return pd.DataFrame(rows)


def verdict_rows(opened: Opened) -> dict[str, list[str]]:
    rows = opened.page.locator("table.verdicts tr.verdict").all_inner_texts()
    return {r.split("\t")[0]: r.split("\t")[1:] for r in rows}


def check_verdicts(opened: Opened, scores: pd.DataFrame) -> None:
    """Each run's verdict and moves, as premem.metrics.probes computes them, are on the page."""
    rows = verdict_rows(opened)
    assert sorted(rows) == sorted(scores["run"].unique())
    text = opened.text()
    for run in rows:
        v = squeezing(scores, run)
        assert v.squeezing is not None
        word = "yes" if v.squeezing else "no"
        assert rows[run] == [word, f"{v.first_step} → {v.last_step}",
                             *(v.moves[t].describe() for t in ("greedy", "chosen", "rejected"))], rows[run]
        assert f"{run}: squeezing {word}" in text


def test_store_with_train_and_probe_scores(browser, tmp_path):  # noqa: F811
    store = make_store(tmp_path / "store")
    scores = probe_scores()
    ScoreStore(store).write("probe_scores", scores)
    assert squeezing(scores, "squeeze").squeezing and not squeezing(scores, "plain").squeezing  # the fixture is as meant
    out = build_report(store, tmp_path / "r.html", tau=-2.3)
    html = out.read_text()
    assert_self_contained(html)
    assert "<b>&" not in html  # probe texts never reach the page unescaped (they are not shown at all)
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=5 + 2)  # the five of test_report, the probe curves and their changes
    assert "Learning dynamics (probes)" in text and "4 probe prompts, 2 runs" in text
    check_verdicts(opened, scores)
    headings = opened.page.locator("h2").all_inner_texts()
    assert headings.index("Learning dynamics (probes)") == headings.index("Runs") - 1
    opened.page.close()


def test_probe_only_store(browser, tmp_path):  # noqa: F811
    store = ScoreStore(tmp_path / "store", create=True)
    scores = probe_scores()
    store.write("probe_scores", scores)
    out = build_report(store.root, tmp_path / "r.html")
    assert_self_contained(out.read_text())
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=2)
    assert "no train scores" in text and "only the probes' learning dynamics" in text
    assert "Predicted vs actual" not in text and "Runs\n" not in text
    check_verdicts(opened, scores)
    opened.page.close()


def test_probe_only_store_with_empty_train_scores_and_an_undetermined_run(browser, tmp_path):  # noqa: F811
    from tests.conftest import synthetic_tables

    store = ScoreStore(tmp_path / "store", create=True)
    _, train, _ = synthetic_tables()
    store.write("train_scores", train.iloc[:0])
    scores = probe_scores(runs=("squeeze",))
    one = scores[scores["step"] == 0].assign(run="one_checkpoint")
    store.write("probe_scores", pd.concat([scores, one], ignore_index=True))
    out = build_report(store.root, tmp_path / "r.html")
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=2)
    rows = verdict_rows(opened)
    assert rows["one_checkpoint"][0] == "undetermined (one checkpoint, step 0)"
    assert rows["squeeze"][0] == "yes" and "no train scores" in text
    opened.page.close()


def test_store_with_neither_table_is_one_line(tmp_path):
    store = ScoreStore(tmp_path / "store", create=True)
    with pytest.raises(InputError, match="train_scores.parquet: table missing.*no probe_scores") as e:
        build_report(store.root, tmp_path / "r.html")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r.html").exists()
