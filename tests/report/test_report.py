"""The HTML report, opened in a real headless Chromium: every figure decodes, nothing is fetched.

Chromium is required, not optional: without it these tests fail saying how to get it (CI installs
Debian's chromium; PREMEM_CHROMIUM points elsewhere). PREMEM_REPORT_SCREENSHOT=FILE.png keeps a
full-page screenshot of the paper-store report for a person to look at.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from premem.errors import InputError
from premem.metrics.predict import predict
from premem.metrics.premem import TrainingCurves
from premem.report import build_report
from premem.store import ScoreStore
from tests.conftest import shared, synthetic_tables

CHROMIUM = os.environ.get("PREMEM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the report tests need the playwright package: pip install -e '.[test]'")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"the report tests need Chromium at {CHROMIUM}: apt-get install chromium, or set PREMEM_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Opened:
    """A report loaded in a page, with what went wrong while loading it."""

    def __init__(self, browser, path: Path):
        self.errors: list[str] = []
        self.requests: list[str] = []  # anything not file:// or data: — a self-contained page makes none
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(path.resolve().as_uri(), wait_until="load")

    def _route(self, route):
        url = route.request.url
        if url.startswith(("file://", "data:")):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def images(self) -> list[dict]:
        return self.page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => ({src: i.src.slice(0, 22), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"
        )

    def text(self) -> str:
        return self.page.inner_text("body")


def check_page(opened: Opened, n_figures: int) -> str:
    """The checks every report must pass; returns the page text."""
    assert opened.errors == [], opened.errors
    assert opened.requests == [], f"the report fetched from the network: {opened.requests}"
    imgs = opened.images()
    assert len(imgs) == n_figures, imgs
    for img in imgs:
        assert img["src"] == "data:image/png;base64,", img
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, f"figure not decoded: {img}"
    return opened.text()


def assert_self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith("data:"), ref


def make_store(root: Path, n_runs=4, n_steps=3, test=True) -> Path:
    store = ScoreStore(root, create=True)
    runs, train, test_scores = synthetic_tables(n_runs=n_runs, n_steps=n_steps)
    store.write("runs", runs)
    store.write("train_scores", train)
    if test:
        store.write("test_scores", test_scores)
    return root


# -- the paper's store --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory):
    # tau fixed at the paper's value: DESIGN.md §1's reference figures hold there, and auto (the
    # default, covered on a small store below) would add seconds of tau search to this test.
    return build_report(shared("paper_runs", "gsm8k"), tmp_path_factory.mktemp("report") / "paper.html", tau=-2.3)


@pytest.mark.slow
def test_paper_store_report_in_chromium(browser, paper_report):
    html = paper_report.read_text()
    assert_self_contained(html)
    opened = Opened(browser, paper_report)
    text = check_page(opened, n_figures=5)  # curves, scatter, predicted test accuracy, histograms, memorized
    assert "13" in text and "51 (51 with test scores)" in text and "7473" in text
    tau_row = opened.page.locator("table.facts tr", has_text="tau").inner_text()
    assert "-2.3 (given)" in tau_row and "ppl < 1.1055" in tau_row  # DESIGN.md §1: PPL >= 1.1055 is not memorized
    # DESIGN.md §1: R² 0.939, leave-one-run-out 0.917, final train accuracy 0.398, log-perplexity 0.219
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in opened.page.locator("table.grid").first.inner_text().splitlines()}
    assert rows["pre-memorization train accuracy (this method)"][:2] == ["0.939", "0.917"]
    assert rows["train accuracy"][0] == "0.398"
    assert rows["mean train log-perplexity"][0] == "0.219"
    assert opened.page.locator("table.runs tr").count() == 1 + 13
    assert "gsm8k_orig_12epochs_quarter_lr2e-05_bs128" in text and "1868" in text  # train_example_ids as a count
    if os.environ.get("PREMEM_REPORT_SCREENSHOT"):
        opened.page.screenshot(path=os.environ["PREMEM_REPORT_SCREENSHOT"], full_page=True)
    opened.page.close()


# -- small synthetic stores -----------------------------------------------------------------------


def test_synthetic_store_report_shows_the_fit(browser, tmp_path):
    store = make_store(tmp_path / "store")
    out = build_report(store, tmp_path / "out" / "r.html")  # tau=auto
    pred = predict(TrainingCurves.from_store(ScoreStore(store)), "auto")
    assert_self_contained(out.read_text())
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=5)
    assert f"{pred.r2:.3f}" in text and f"{pred.r2_loro:.3f}" in text
    assert "12 (12 with test scores)" in text and f"{pred.tau:g} (auto" in text
    opened.page.close()


def test_store_without_test_scores(browser, tmp_path):
    out = build_report(make_store(tmp_path / "store", test=False), tmp_path / "r.html")
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=3)  # no scatter
    assert "no test scores" in text and "Not drawn" in text and "test accuracy not shown" in text
    assert "-2.3" in text  # auto falls back to the paper's value
    assert "R²" not in text
    opened.page.close()


def test_single_run_with_a_single_checkpoint(browser, tmp_path):
    out = build_report(make_store(tmp_path / "store", n_runs=1, n_steps=1), tmp_path / "r.html", tau=-2.0)
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=3)  # one run: no line across runs to fit
    assert "only 1 run" in text and "1 (1 with test scores)" in text
    opened.page.close()


def test_the_network_guard_sees_requests(browser, tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text('<img src="http://example.invalid/x.png">')
    opened = Opened(browser, page)
    assert opened.requests == ["http://example.invalid/x.png"]
    opened.page.close()


# -- bad input --------------------------------------------------------------------------------


def test_missing_store_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out" / "r.html"
    with pytest.raises(InputError, match="does not exist"):
        build_report(tmp_path / "missing", out)
    store = tmp_path / "empty"
    store.mkdir()
    with pytest.raises(InputError, match="train_scores.parquet: table missing"):
        build_report(store, out)
    with pytest.raises(InputError, match="tau"):
        build_report(store, out, tau="high")
    _, train, _ = synthetic_tables()
    ScoreStore(store).write("train_scores", train.iloc[:0])
    with pytest.raises(InputError, match="no train scores"):
        build_report(store, out)
    assert not out.parent.exists()


def test_failed_build_keeps_the_old_report(tmp_path, monkeypatch):
    from premem.report import plots

    out = tmp_path / "r.html"
    out.write_text("old")

    def boom(fig):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "png_base64", boom)
    with pytest.raises(RuntimeError):
        build_report(make_store(tmp_path / "store"), out, tau=-2.3)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "store"]


def test_cli_bad_store_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out" / "report.html"
    proc = subprocess.run([sys.executable, "-m", "premem.cli", "report", "--store", str(tmp_path / "missing"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("premem: error: ") and "missing" in lines[0], proc.stderr
    assert not out.parent.exists()


def test_cli_writes_the_report(tmp_path, capsys):
    from premem.cli import main

    out = tmp_path / "r.html"
    assert main(["report", "--store", str(make_store(tmp_path / "store")), "--out", str(out), "--tau", "-2.3"]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "r.pdf")]) == 2


@pytest.mark.slow
def test_drawing_uses_no_pyplot_and_keeps_the_callers_backend(tmp_path):
    """A notebook that builds a report keeps its matplotlib backend (inline plots) and pyplot's figure list:
    the figures are drawn on their own Agg canvases. In a fresh process, so no other test's pyplot counts."""
    make_store(tmp_path / "store")
    script = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')  # stands for a notebook's inline backend\n"
        "from premem.report import build_report\n"
        f"build_report({str(tmp_path / 'store')!r}, {str(tmp_path / 'r.html')!r}, tau=-2.3)\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg", "False"]
    assert (tmp_path / "r.html").read_text().count("<img") == 5


def test_a_store_with_unsampled_pairs_says_train_accuracy_covers_sampled_pairs_only(tmp_path):
    from tests.metrics.test_premem import skipped_as_premem_score_would

    root = make_store(tmp_path / "store")
    store = ScoreStore(root)
    train, runs = skipped_as_premem_score_would(store.read("train_scores"), store.read("runs"))
    store.write("train_scores", train)
    store.write("runs", runs)
    html = build_report(root, tmp_path / "report.html", tau=-2.3).read_text()
    n = int((train["skipped"] != "").sum())
    assert "pairs were skipped by memorization-aware sampling" in html and f"({n} of {len(train)} pairs" in html
    assert "train accuracy computed on sampled pairs only" in html  # the fit table's note
    with pytest.raises(InputError, match="below -3, the sample_tau"):
        build_report(root, tmp_path / "low.html", tau=-3.5)
    assert not (tmp_path / "low.html").exists()
