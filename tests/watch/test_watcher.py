"""premem watch end to end: a real TRL SFT run trained beside it, real Ray actors, the transformers backend.

Every test compares whole tables with a `premem score` of the finished run: the watcher's checkpoints scored one
by one, as they appear, must give exactly the rows of scoring the run once it is done, none lost, none duplicated.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from premem.report.live import LIVE_START, strip_live
from premem.sampling.job import score
from premem.store import ScoreStore
from premem.watch.watcher import Watcher
from tests.watch.conftest import STEPS, assert_same_tables, tables, train_settings, watch_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.fixture(scope="module")
def reference(trained, gsm8k_file, test_file, tmp_path_factory) -> dict:
    """`premem score` of the finished run: the tables every watch must reproduce."""
    store = tmp_path_factory.mktemp("reference") / "store"
    score(watch_config([trained], store, gsm8k_file, test_file).score_config(trained))
    return tables(store)


def scored_steps(store: Path) -> set[int]:
    """Steps with test scores: score writes each checkpoint's test tasks after starting its train ones."""
    if not store.is_dir() or not ScoreStore(store).has("train_scores"):
        return set()
    return set(ScoreStore(store).read("train_scores")["step"])


def test_the_watcher_scores_every_checkpoint_of_a_run_training_beside_it(tiny_model, gsm8k_file, test_file, tmp_path):
    run, store = tmp_path / "run", tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen([sys.executable, "-m", "premem.cli", *train_settings(tiny_model, gsm8k_file, run)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, report = [], tmp_path / "report.html"
    pages = []  # the live page after each scoring pass, as a browser would reload it
    watcher = Watcher(watch_config([run], store, gsm8k_file, test_file, report=str(report)),
                      on_scored=lambda rows: seen.append(rows))
    after = watcher._after_scoring
    watcher._after_scoring = lambda new: (after(new), pages.append(report.read_text()))
    summary = watcher.run()  # returns once premem_run.json says finished and every checkpoint is scored
    assert trainer.wait(timeout=120) == 0, trainer.stdout.read().decode()
    assert summary.reason == "finished" and summary.scored == {"run": STEPS}
    assert sorted(int(s) for rows in seen for s in rows["step"]) == STEPS  # each handed on once
    assert set(summary.metrics["step"]) == set(STEPS) and summary.metrics["premem"].between(0, 1).all()
    assert pages and all(LIVE_START in page for page in pages)  # each rewrite reloads itself in the browser
    assert strip_live(pages[-1]) == report.read_text()  # the last page: the live one, less its live blocks
    assert LIVE_START not in report.read_text()
    watched = tables(store)
    posthoc = tmp_path / "posthoc"
    score(watch_config([run], posthoc, gsm8k_file, test_file).score_config(run))
    assert_same_tables(watched, tables(posthoc))


def test_a_half_written_checkpoint_is_scored_only_once_complete(trained, reference, gsm8k_file, test_file, tmp_path):
    """The test plays the trainer: it writes the finished run's checkpoints into a new run directory one by one,
    the weights cut short first, then whole, the trainer state last."""
    run, store = tmp_path / "replay" / "run", tmp_path / "store"
    run.mkdir(parents=True)
    record = json.loads((trained / "premem_run.json").read_text())
    (run / "premem_run.json").write_text(json.dumps({**record, "finished": False}))  # premem train's first write
    watcher = Watcher(watch_config([run], store, gsm8k_file, test_file))
    thread = threading.Thread(target=lambda: setattr(watcher, "result", watcher.run()))
    thread.start()
    try:
        for step in STEPS:
            src, dst = trained / f"checkpoint-{step}", run / f"checkpoint-{step}"
            dst.mkdir()
            for f in src.iterdir():
                if f.name not in ("trainer_state.json", "model.safetensors"):
                    shutil.copy(f, dst / f.name)
            whole = (src / "model.safetensors").read_bytes()
            (dst / "model.safetensors").write_bytes(whole[: len(whole) // 2])  # the weights half written
            time.sleep(1.0)  # five looks at the run: none may score it
            assert step not in scored_steps(store) and thread.is_alive()
            (dst / "model.safetensors").write_bytes(whole)
            time.sleep(1.0)  # weights whole, the trainer state not yet written: still not complete
            assert step not in scored_steps(store)
            shutil.copy(src / "trainer_state.json", dst / "trainer_state.json")
            deadline = time.time() + 120
            while step not in scored_steps(store) and time.time() < deadline:
                time.sleep(0.2)
            assert step in scored_steps(store)
        shutil.copy(trained / "premem_run.json", run / "premem_run.json")  # the trainer's finished marker
        thread.join(120)
    finally:
        watcher.stop()
        thread.join(120)
    assert watcher.result.reason == "finished" and watcher.result.scored == {"run": STEPS}
    where = ("path",)  # the run directory's path in runs.parquet: the replay lies elsewhere
    assert_same_tables(tables(store, drop=where), {t: df.drop(columns=[c for c in where if c in df.columns])
                                                   for t, df in reference.items()})


def test_a_watch_interrupted_or_killed_mid_run_and_started_again_loses_and_duplicates_no_row(
        trained, reference, gsm8k_file, test_file, tmp_path):
    """Ctrl-C part-way (a clean stop: exit 130), then SIGKILL part-way, then to the end: the reference's tables."""
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "premem.cli", "watch", "--run", str(trained), "--store", str(store), "--train",
           str(gsm8k_file), "--test", str(test_file), "--samples", "2", "sampling.max_new_tokens=12", "shard_size=10",
           "exec.options.threads=1", "exec.options.batch_size=8", "exec.progress=false", "--poll", "0.2"]
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # its own Ray (short: socket paths have a length limit)
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    parts = store / "parts" / "train_scores"

    def stop_after(n_parts: int, sig: int) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and not (parts.exists() and len(list(parts.glob("*.parquet"))) >= n_parts):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        os.kill(proc.pid, sig) if sig == signal.SIGINT else os.killpg(proc.pid, sig)
        proc.wait(60)
        if sig == signal.SIGINT:  # any Ray process left behind (none should be)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return proc

    interrupted = stop_after(2, signal.SIGINT)
    assert interrupted.returncode == 130 and interrupted.stderr.read().endswith("premem: interrupted\n")
    stop_after(len(list(parts.glob("*.parquet"))) + 2, signal.SIGKILL)  # the watcher and every Ray process it started
    before = len(list(parts.glob("*.parquet")))
    assert 4 <= before < 4 * len(STEPS), "the watch should have been stopped part-way"

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "watch stopped (finished)" in again.stdout and "run: 3 checkpoints scored (steps 5, 10, 15)" in again.stdout
    assert_same_tables(tables(store), reference)
    shutil.rmtree(ray_tmp, ignore_errors=True)
