"""The curation experiment's HTML report from its loops' records, opened in a real headless Chromium
(see test_report.py)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from premem.errors import InputError
from premem.metrics.curves import IID_LOOP, comparisons, curves, efficiency
from premem.report.curation import build_curation_report
from premem.store import ScoreStore
from tests.report.test_report import Opened, assert_self_contained, browser, check_page  # noqa: F401 (browser: fixture)

START, BUDGETS, IID = 64, [128, 256], [512]
SKILL = {"random": 0.0, "premem_low": 0.06, "loss": -0.02}  # premem_low at 256 beats i.i.d. at 512


def make_rounds(seeds=(0, 1, 2), strategies=tuple(SKILL), iid=True) -> pd.DataFrame:
    """The experiment's rounds: round 0 repeated per strategy, round -1 i.i.d. only."""
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
    """The rounds as the experiment's loops record them: one curation_rounds per (seed, strategy) in
    out_dir/seed<s>/<strategy>/store, and the i.i.d.-only sizes (round -1) as the rounds of the seed's iid loop."""
    for (seed, name), g in rounds.groupby(["seed", "strategy"]):
        own, beyond = g[g["round"] >= 0], g[g["round"] < 0].sort_values("examples")
        loops = [(name, own)]
        if len(beyond):  # the iid loop starts from the seed's shared start too
            loops.append((IID_LOOP, pd.concat([own[own["round"] == 0], beyond.assign(round=range(1, len(beyond) + 1))])))
        for loop_name, table in loops:
            record = table.assign(loop=loop_name, added=table["examples"], generator="arith", data_sha256="x",
                                  run_dir="r", store_dir="s")
            ScoreStore(out_dir / f"seed{seed}" / loop_name / "store", create=True).append("curation_rounds", record)
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
        assert f"{r.mean:.3f} ± {r.se:.3f} {r.n_seeds}" in cells, r

    eff = efficiency(curve, rounds)
    assert (eff["bound"] == ">").any() and eff.loc[eff["bound"] == ">", "strategy"].tolist() == ["premem_low"]
    rows = opened.page.locator("table.efficiency tr")
    shown = {}
    for i in range(1, rows.count()):
        strategy, examples, acc, needed, ratio, per_seed = rows.nth(i).inner_text().split("\t")
        r = eff[(eff["strategy"] == strategy) & (eff["examples"] == int(examples))].iloc[0]
        assert per_seed == f"{r.ratio_mean:.2f} ± {r.ratio_se:.2f}"
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

    compare = opened.page.locator("table.compare tr")
    expected = comparisons(rounds)
    assert compare.count() == 1 + len(expected)
    for i, r in enumerate(expected.itertuples(), start=1):
        assert compare.nth(i).inner_text().split("\t") == [
            str(r.examples), r.strategy, f"{r.diff:+.3f} ± {r.se:.3f}", "3", "yes" if r.ahead else "no"]

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


def test_no_or_bad_records_is_one_line_naming_the_file(tmp_path):
    exp = tmp_path / "exp"
    with pytest.raises(InputError, match=r"exp: no curation loop records") as e:
        build_curation_report(exp)
    assert "\n" not in str(e.value) and not exp.exists()
    write_rounds(exp, make_rounds(seeds=(0,), strategies=("random",)))
    path = exp / "seed0" / "random" / "store" / "curation_rounds.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"curation_rounds.parquet: not a readable parquet file") as e:
        build_curation_report(exp)
    assert "\n" not in str(e.value)
    make_rounds(seeds=(0,), strategies=("random",)).to_parquet(path)  # no loop column: not a loop's record
    with pytest.raises(InputError, match=r"random/store/curation_rounds.parquet: missing column loop"):
        build_curation_report(exp)
    assert not (exp / "report.html").exists() and not list(exp.glob("*.tmp*"))  # no report, no stray temporary


def test_the_experiment_writes_its_artifacts_from_the_records(tmp_path):
    """What `premem experiment curation` leaves beside the loops: curves.csv, efficiency.csv, curves.png, report."""
    from premem.recipes.curation import summary, write_results

    rounds = make_rounds()
    result = write_results(write_rounds(tmp_path / "exp", rounds))
    pd.testing.assert_frame_equal(result.rounds, rounds.sort_values(["seed", "strategy", "round", "examples"],
                                                                     ignore_index=True), check_dtype=False)
    assert result.report == tmp_path / "exp" / "report.html"
    assert result.report.read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "exp" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "exp" / "efficiency.csv", keep_default_na=False,
                                              na_values={"ratio_mean": [""], "ratio_se": [""]}),
                                  result.efficiency, check_dtype=False)
    assert f"report: {result.report}" in summary(result)
