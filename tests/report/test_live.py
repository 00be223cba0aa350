"""The live report (issue 15 item 4): the page `premem watch` rewrites after each checkpoint, opened in a real
headless Chromium while the runs grow, reloading itself, and equal to `premem report` once they are done.

The stores are cut from the paper's real store (shared data): five runs with all their checkpoints (finished),
with only their first one or two (mid-run), with train scores and no test scores yet; and two runs watched
without test scores, predicted from a fit saved on the eight others. PREMEM_LIVE_SHOTS=DIR keeps a full-page
screenshot of each page for a person to look at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from premem.errors import InputError
from premem.files import atomic_path
from premem.metrics.calibration import calibrate, load_fit, predict_from_fit, save_fit
from premem.report import build_report, live
from premem.report.live import LIVE_END, LIVE_START, last_checkpoint, strip_live
from premem.store import ScoreStore
from tests.conftest import shared
from tests.report.test_report import Opened, browser, check_page  # noqa: F401  (browser: the fixture)

RUNS = ["gsm8k_orig_3epochs_full_lr0.0002_bs128", "gsm8k_orig_3epochs_full_lr2e-05_bs128",
        "gsm8k_orig_3epochs_full_lr5e-05_bs128", "gsm8k_orig_3epochs_full_lr5e-07_bs128",
        "gsm8k_orig_6epochs_full_lr2e-05_bs128"]
WATCHED = RUNS[:2]
SHOTS = os.environ.get("PREMEM_LIVE_SHOTS")


def cut(src: ScoreStore, dst: Path, runs: list[str], first: int | None = None, test: bool = True) -> Path:
    """A copy of `runs` of the store, with only each run's `first` checkpoints (all: None), test scores or not."""
    out = ScoreStore(dst, create=True)
    out.write("runs", src.read("runs").loc[lambda f: f["run"].isin(runs)])
    for table in ("train_scores", "test_scores") if test else ("train_scores",):
        rows = src.read(table).loc[lambda f: f["run"].isin(runs)]
        if first is not None:
            kept = rows[["run", "step"]].drop_duplicates().sort_values("step").groupby("run").head(first)
            rows = rows.merge(kept, on=["run", "step"])
        out.write(table, rows)
    return dst


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    paper = ScoreStore(shared("paper_runs", "gsm8k"))
    root = tmp_path_factory.mktemp("stores")
    others = [r for r in paper.runs()["run"] if r not in RUNS]
    fit = save_fit(calibrate(cut(paper, root / "calibration", others), tau=-2.3), root / "fit.json")
    return {
        "finished": cut(paper, root / "finished", RUNS),
        "two": cut(paper, root / "two", RUNS, first=2),
        "one": cut(paper, root / "one", RUNS, first=1),
        "no_test": cut(paper, root / "no_test", RUNS, first=2, test=False),
        "watched": cut(paper, root / "watched", WATCHED, first=2, test=False),
        "fit": fit,
    }


def shot(opened: Opened, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        opened.page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def forecast_text(opened: Opened) -> str:
    return opened.page.locator("section", has_text="Predicted test accuracy").last.inner_text()


# -- a finished run's live page is its report --------------------------------------------------------


def test_a_finished_runs_live_page_less_its_live_blocks_is_premem_report(stores, tmp_path):
    from premem.cli import main

    plain = tmp_path / "report.html"
    assert main(["report", "--store", str(stores["finished"]), "--out", str(plain)]) == 0
    page = build_report(stores["finished"], tmp_path / "live.html", live=True).read_text()
    assert strip_live(page) == plain.read_text()  # byte for byte: the plain page holds no time
    assert page != plain.read_text() and page.count(LIVE_START) == page.count(LIVE_END) == 2
    assert "<script" in page and "<script" not in plain.read_text() and "premem:live" not in plain.read_text()
    assert build_report(stores["finished"], tmp_path / "again.html").read_text() == plain.read_text()


def test_the_banner_names_the_newest_part_then_the_last_row(stores, tmp_path):
    store = ScoreStore(cut(ScoreStore(stores["two"]), tmp_path / "s", RUNS[:1]))
    train = store.read("train_scores")
    assert last_checkpoint(store) == (RUNS[0], int(train["step"].iloc[-1]))  # compacted: the table's last row
    one = train[train["step"] == train["step"].max()]  # one checkpoint's rows, stored again at later steps
    store.write_part("train_scores", "run=b.step=2000", one.assign(step=2000))
    store.write_part("train_scores", "run=a.step=1500", one.assign(step=1500))  # named first, written last
    os.utime(store.part_path("train_scores", "run=b.step=2000"), ns=(1, 1))
    assert last_checkpoint(store) == (RUNS[0], 1500)
    page = build_report(store.root, tmp_path / "r.html", tau=-2.3, live=True).read_text()
    assert f"last checkpoint {RUNS[0]} step 1500;" in page


# -- growing runs, in the browser ------------------------------------------------------------------


@pytest.mark.parametrize("name, fit, figures, says", [
    ("two", False, 5, ["a fit calibrated on this store's runs", "90% band", "in the fit"]),
    ("one", False, 4, ["Not drawn: no band: a 90% band needs at least 9 checkpoints"]),
    ("one", True, 5, ["the saved fit fit.json", "90% band"]),  # a band around a single point
    ("no_test", False, 3, ["Not drawn: the store has no test scores"]),
    ("finished", False, 5, ["a fit calibrated on this store's runs"]),
])
def test_the_live_page_renders_as_runs_grow(browser, stores, tmp_path, name, fit, figures, says):  # noqa: F811
    out = build_report(stores[name], tmp_path / "live.html", fit=stores["fit"] if fit else None, live=True)
    opened = Opened(browser, out)
    text = check_page(opened, n_figures=figures)
    shot(opened, f"live_{name}{'_fit' * fit}")
    banner = opened.page.inner_text("#premem-live")
    run, step = last_checkpoint(ScoreStore(stores[name]))
    assert banner.startswith("live: updated ") and f"last checkpoint {run} step {step};" in banner
    assert opened.page.evaluate("document.querySelector('#premem-live') === document.body.firstElementChild")
    for words in says:
        assert words in forecast_text(opened), (words, forecast_text(opened))
    assert "premem report" in text
    opened.page.close()


def test_a_saved_fit_predicts_runs_without_test_scores(browser, stores, tmp_path):  # noqa: F811
    from premem.cli import main

    out = tmp_path / "watched.html"
    assert main(["report", "--store", str(stores["watched"]), "--out", str(out), "--fit", str(stores["fit"])]) == 0
    opened = Opened(browser, out)
    check_page(opened, n_figures=4)  # no scatter: no test scores; the forecast from the fit instead
    shot(opened, "watched_with_fit")
    rows = opened.page.locator("section", has_text="Predicted test accuracy").last.locator("table tr").all_inner_texts()
    table = predict_from_fit(ScoreStore(stores["watched"]), load_fit(stores["fit"]))
    last = table.sort_values("step").groupby("run").tail(1).set_index("run")
    for run in WATCHED:
        cells = next(r for r in rows if r.startswith(run)).split("\t")
        r = last.loc[run]
        assert cells[3:] == [f"{r['predicted']:.3f}", f"{r['lower']:.3f} – {r['upper']:.3f}", "not scored", "no"]
    assert "the saved fit fit.json" in forecast_text(opened) and "predicts it from the saved fit" in opened.text()
    opened.page.close()


def test_a_bad_fit_is_one_error_and_writes_nothing(stores, tmp_path):
    bad = tmp_path / "fit.json"
    bad.write_text(json.dumps({"format": "premem.fit/1"}))
    out = tmp_path / "out" / "r.html"
    with pytest.raises(InputError, match=r"fit: .*fit.json: field feature: missing"):
        build_report(stores["two"], out, fit=bad, live=True)
    proc = subprocess.run([sys.executable, "-m", "premem.cli", "report", "--store", str(stores["two"]), "--out",
                           str(out), "--fit", str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such fit file" in proc.stderr, proc.stderr
    assert not out.parent.exists()


# -- reloading -------------------------------------------------------------------------------------


def wait_for(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def banner(opened: Opened) -> str:
    try:
        return opened.page.inner_text("#premem-live", timeout=500)
    except Exception:  # between two documents while reloading
        return ""


def test_the_page_reloads_itself_keeping_the_scroll_position(browser, stores, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(live, "REFRESH_S", 1)
    out = build_report(stores["two"], tmp_path / "live.html", live=True)
    opened = Opened(browser, out)
    assert "reloads every 1 s" in banner(opened)
    opened.page.evaluate("window.scrollTo(0, 1500); window.stale = true")
    build_report(stores["finished"], out, live=True)  # the runs went on: the watcher rewrote the page
    run, step = last_checkpoint(ScoreStore(stores["finished"]))
    wait_for(lambda: f"step {step};" in banner(opened), 5, "the browser shows the new page")
    assert opened.page.evaluate("window.stale === undefined")  # a new document, not an edited one
    wait_for(lambda: opened.page.evaluate("window.scrollY") == 1500, 3, "the scroll position is kept")
    assert "18 (18 with test scores)" in opened.text()  # the finished runs' checkpoints
    assert opened.errors == [] and opened.requests == []
    opened.page.close()


RECORD_LOADS = """window.addEventListener("load", () => {
  const seen = JSON.parse(sessionStorage.getItem("loads") || "[]"), imgs = [...document.images];
  seen.push([imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length, !!document.querySelector("footer")]);
  sessionStorage.setItem("loads", JSON.stringify(seen));
});"""


def loads(opened: Opened) -> list:
    """What each document the tab loaded had: its figures, those decoded, its footer (the page's end)."""
    try:
        return json.loads(opened.page.evaluate("sessionStorage.getItem('loads') || '[]'"))
    except Exception:  # between two documents
        return []


@pytest.mark.slow
def test_reloading_keeps_working_while_the_file_is_replaced(browser, stores, tmp_path, monkeypatch):  # noqa: F811
    """The watcher rewrites the page while the browser reloads it: every document the browser loads is whole."""
    monkeypatch.setattr(live, "REFRESH_S", 1)
    out = build_report(stores["one"], tmp_path / "live.html", live=True)
    opened = Opened(browser, out)
    opened.page.add_init_script(RECORD_LOADS)  # from the next document on
    stop = threading.Event()

    def rewrite():  # as fast as it can, two different pages in turn, for a few of the browser's reloads
        while not stop.is_set():
            for name in ("two", "no_test"):
                build_report(stores[name], out, live=True)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        wait_for(lambda: len(loads(opened)) >= 5 and {3, 5} <= {n for n, _, _ in loads(opened)}, 60,
                 "five reloads, both rewritten pages among them, while the page is being rewritten")
    finally:
        stop.set()
        writer.join()
    build_report(stores["finished"], out, live=True)
    wait_for(lambda: "18 (18 with test scores)" in opened.text(), 5, "the last page is shown")
    seen = loads(opened)
    # the first page (4 figures), the two rewritten in turn (5 and 3), the last (5): each whole, each figure decoded
    assert all(footer and n_img in (3, 4, 5) and complete == n_img for n_img, complete, footer in seen), seen
    assert opened.errors == [], opened.errors
    opened.page.close()


# -- the file is replaced atomically ----------------------------------------------------------------

READER = """
import sys, json, pathlib
path, stop = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
reads, bad, versions = 0, [], set()
while not stop.exists():
    try:
        text = path.read_text()
    except FileNotFoundError:
        bad.append("missing")
        continue
    reads += 1
    if not (text.startswith("<!DOCTYPE html>") and text.endswith("</html>\\n")):
        bad.append(len(text))
    versions.add(hash(text))
print(json.dumps({"reads": reads, "bad": bad[:10], "n_bad": len(bad), "versions": len(versions)}))
"""


@pytest.mark.slow
def test_a_reader_never_sees_half_a_page(stores, tmp_path):
    """A reader polling the page while it is rewritten reads the old page or the new one, every time."""
    out = build_report(stores["one"], tmp_path / "live.html", live=True)
    pages = [out.read_text(), build_report(stores["two"], tmp_path / "other.html", live=True).read_text()]
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        for name in ("two", "one"):  # the real writer
            build_report(stores[name], out, live=True)
        for i in range(200):  # and its write, many times, with pages of different sizes
            with atomic_path(out) as tmp:
                tmp.write_text(pages[i % 2])
    finally:
        stop.touch()
    seen = json.loads(reader.communicate(timeout=60)[0])
    assert seen["n_bad"] == 0, seen
    assert seen["reads"] > 50 and seen["versions"] >= 2, seen  # it did read while the page changed
