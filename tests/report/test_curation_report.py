"""The curation experiment's HTML report, opened in a real headless Chromium (see test_report.py)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from premem.errors import InputError
from premem.recipes.curation import curves, efficiency
from premem.report.curation import build_curation_report
from tests.report.test_report import Opened, assert_self_contained, browser, check_page  # noqa: F401 (browser: fixture)

START, BUDGETS, IID = 64, [128, 256], [512]
SKILL = {"random": 0.0, "premem_low": 0.06, "loss": -0.02}  # premem_low at 256 beats i.i.d. at 512


def make_rounds(seeds=(0, 1, 2), strategies=tuple(SKILL), iid=True) -> pd.DataFrame:
    """A rounds.parquet as the experiment writes it: round 0 repeated per strategy, round -1 i.i.d. only."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        start_acc = 0.05 + 0.01 * seed
        for name in strategies:
            for k, n in enumerate([START, *BUDGETS]):
                acc = start_acc if k == 0 else 0.1 * np.log2(n / START) + k * SKILL[name] * 2 + rng.normal(0, 0.01)
                rows.append({"seed": seed, "strategy": name, "round": k, "examples": n, "test_acc": float(acc)})
        if iid:
            for n in IID:
                rows.append({"seed": seed, "strategy": "random", "round": -1, "examples": n,
                             "test_acc": 0.1 * np.log2(n / START) + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


def write_rounds(out_dir, rounds: pd.DataFrame):
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds.to_parquet(out_dir / "rounds.parquet", index=False)
    return out_dir


def test_report_in_chromium(browser, tmp_path):  # noqa: F811
    rounds = make_rounds()
    exp = write_rounds(tmp_path / "exp", rounds)
    out = build_curation_report(exp)
    assert out == exp / "report.html"
    html = out.read_text()
    assert_self_contained(html)
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=1)  # no errors, nothing fetched, the learning curves decode

    facts = opened.page.locator("table.facts").inner_text()
    assert "random, loss, premem_low" in facts and "3 (0, 1, 2)" in facts
    assert "64 i.i.d. examples" in facts and "128, 256" in facts and "512 examples" in facts

    curve = curves(rounds)
    cells = opened.page.locator("table.curve").inner_text()
    for r in curve.itertuples():
        assert f"{r.mean:.3f} ± {r.std:.3f} {r.n_seeds}" in cells, r

    eff = efficiency(curve)
    assert (eff["bound"] == ">").any() and eff.loc[eff["bound"] == ">", "strategy"].tolist() == ["premem_low"]
    rows = opened.page.locator("table.efficiency tr")
    shown = {}
    for i in range(1, rows.count()):
        strategy, examples, acc, needed, ratio = rows.nth(i).inner_text().split("\t")
        bold = rows.nth(i).locator("td").first.evaluate("td => getComputedStyle(td).fontWeight")
        shown[(strategy, int(examples))] = (acc, needed, ratio, int(bold) >= 700)
    assert len(shown) == len(eff)
    for r in eff.itertuples():
        acc, needed, ratio, _ = shown[(r.strategy, r.examples)]
        expected = (f"{r.test_acc:.3f}", f"{r.bound}{r.iid_examples_needed:.0f}", f"{r.bound}{r.ratio:.2f}")
        assert (acc, needed, ratio) == expected, r
    assert shown[("premem_low", 256)][2] == f">{IID[-1] / 256:.2f}"  # beyond the i.i.d. curve: a lower bound
    # bold: the best curation strategy (highest ratio, then accuracy) at each size, and nothing else
    cur = eff[eff["strategy"] != "random"].sort_values(["ratio", "test_acc"])
    best = set(cur.groupby("examples").tail(1)[["strategy", "examples"]].itertuples(index=False, name=None))
    assert {k for k, v in shown.items() if v[3]} == best

    per_seed = opened.page.locator("table.rounds tr")
    assert per_seed.count() == 1 + 3 * len(SKILL)
    assert f"{rounds['test_acc'].iloc[-1]:.3f}" in per_seed.nth(3).inner_text()  # random, seed 2, its i.i.d. 512
    assert "nan" not in text.lower()
    opened.page.close()


def test_one_seed_partial_and_no_iid(tmp_path):
    """One seed has no std; a just-started experiment has no ratios yet; without random there is no i.i.d. curve."""
    html = build_curation_report(write_rounds(tmp_path / "a", make_rounds(seeds=(0,)))).read_text()
    html = re.sub(r"data:image/png;base64,[^\"]*", "", html)  # base64 may spell anything
    assert "nan" not in html.lower() and "no error bars" in html and "&gt;" in html
    started = make_rounds(strategies=("random",), iid=False).query("round == 0")
    html = build_curation_report(write_rounds(tmp_path / "b", started), tmp_path / "b.html").read_text()
    assert "No sizes beyond the smallest i.i.d. one yet" in html
    no_iid = make_rounds(strategies=("premem_low",), iid=False)
    assert "No i.i.d. (random) rounds" in build_curation_report(write_rounds(tmp_path / "c", no_iid)).read_text()


def test_missing_or_bad_rounds_is_one_line_naming_the_file(tmp_path):
    exp = tmp_path / "exp"
    with pytest.raises(InputError, match=r"exp/rounds.parquet: not found") as e:
        build_curation_report(exp)
    assert "\n" not in str(e.value) and not exp.exists()
    exp.mkdir()
    (exp / "rounds.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"rounds.parquet: not a readable parquet file") as e:
        build_curation_report(exp)
    assert "\n" not in str(e.value)
    write_rounds(exp, make_rounds().drop(columns=["test_acc"]))
    with pytest.raises(InputError, match=r"rounds.parquet: missing column test_acc"):
        build_curation_report(exp)
    assert sorted(p.name for p in exp.iterdir()) == ["rounds.parquet"]  # no report, no stray temporary file


def test_experiment_command_writes_the_report(tmp_path, monkeypatch, capsys):
    """`premem experiment curation` writes report.html beside curves.png (the experiment itself stubbed out)."""
    import premem.recipes.curation as recipe
    from premem.cli import main

    def experiment(cfg):
        rounds = make_rounds()
        write_rounds(tmp_path / "exp", rounds)
        return rounds

    monkeypatch.setattr(recipe, "experiment", experiment)
    assert main(["experiment", "curation", "--out", str(tmp_path / "exp")]) == 0
    assert f"report: {tmp_path / 'exp' / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "exp" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "exp" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
