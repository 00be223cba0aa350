"""The watch loop's stops that need no scoring: idle, training ended, told to stop (no Ray is started)."""

from __future__ import annotations

import threading
import time

from premem.watch.watcher import Watcher, summary
from tests.watch.test_completeness import watch_config


def test_no_new_checkpoint_for_idle_seconds_stops_the_watch(tmp_path):
    started = time.monotonic()
    result = Watcher(watch_config(tmp_path, idle=0.3, poll=0.05)).run()
    assert result.reason == "idle" and result.scored == {"a": []} and time.monotonic() - started < 5
    assert summary(result).startswith("watch stopped (idle) after")


def test_training_ended_with_nothing_to_score_stops_the_watch(tmp_path):
    watcher = Watcher(watch_config(tmp_path, runs=[str(tmp_path / "runs" / "*")], idle=None, poll=10.0))
    thread = threading.Thread(target=lambda: setattr(watcher, "result", watcher.run()))
    thread.start()
    watcher.end()  # wakes the loop at once: no poll of 10 s waited out
    thread.join(5)
    assert not thread.is_alive() and watcher.result.reason == "finished"
    watcher = Watcher(watch_config(tmp_path, idle=None, poll=10.0))
    thread = threading.Thread(target=lambda: setattr(watcher, "result", watcher.run()))
    thread.start()
    watcher.stop()
    thread.join(5)
    assert not thread.is_alive() and watcher.result.reason == "stopped"
