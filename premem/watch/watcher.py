"""The watch loop: score each run's checkpoints as they are completed, on one pool of actors kept warm.

Each pass looks at every run directory (premem.watch.completeness). A run with a complete checkpoint not yet scored,
and nothing half-written, is handed to `premem score` whole: score resumes, so only the new checkpoint's tasks run,
on the process's pool (premem.execution keeps its actors and their engines across calls and runs). Then the
figures of the new checkpoints are logged, a given fit predicts their test accuracy, and the report is rewritten.

It stops when every run has finished (premem train's premem_run.json says finished, or a final model stands in the
run directory itself, as `trainer.save_model(output_dir)` leaves it) and all its checkpoints are scored; when every
run has a scored checkpoint at or past `until`; after `idle` seconds without a new complete checkpoint; on
Ctrl-C (the actors killed; every part written is whole, so the store is consistent); or when told (Watcher.stop,
Watcher.end: what premem.callbacks does when training ends). Started again, it resumes as score does.
"""

from __future__ import annotations

import logging
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from premem.errors import InputError
from premem.watch import WatchConfig
from premem.watch.completeness import RunState, run_state

log = logging.getLogger(__name__)


@dataclass
class WatchSummary:
    scored: dict[str, list[int]]  # run -> steps scored by this watch (resumed ones included)
    reason: str  # why it stopped: finished, until, idle, stopped
    seconds: float
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # premem.watch.progress.COLUMNS, every checkpoint
    report: str | None = None
    lags: dict[tuple[str, int], float] = field(default_factory=dict)  # (run, step) -> s from complete to scored


class Watcher:
    """The loop of `premem watch`; run() in the foreground, or in a thread beside training (premem.callbacks).

    on_scored(rows): called after each pass that scored something, with the new checkpoints' rows of
    premem.watch.progress.checkpoint_metrics."""

    def __init__(self, cfg: WatchConfig, on_scored: Callable[[pd.DataFrame], None] | None = None):
        cfg.validate()
        from premem.data import load_example_set

        load_example_set(cfg.train)  # the data read (and refused) before any work, not at the first checkpoint
        if cfg.test is not None and cfg.test.path:
            load_example_set(cfg.test)
        self.cfg = cfg
        self.on_scored = on_scored
        self.fit = None
        if cfg.fit:
            from premem.metrics.calibration import load_fit

            self.fit = load_fit(cfg.fit)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ended = False
        self.scored: dict[Path, set[int]] = {}
        self._final_scored: set[Path] = set()
        self._seen: dict[tuple[Path, int], float] = {}  # (run dir, step) -> when it was first seen complete
        self.lags: dict[tuple[str, int], float] = {}
        self.metrics = pd.DataFrame()
        self._report_failed = False

    # -- what another thread may call ---------------------------------------------------------

    def notify(self) -> None:
        """Look now (a checkpoint was saved), not at the next poll."""
        self._wake.set()

    def end(self) -> None:
        """Training has ended: score what is complete, then stop."""
        self._ended = True
        self._wake.set()

    def stop(self) -> None:
        """Stop after the scoring in progress, if any."""
        self._stop.set()
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> WatchSummary:
        cfg, start = self.cfg, time.monotonic()
        last_new, reason = start, "stopped"
        while not self._stop.is_set():
            ended = self._ended  # read before the look: a save made before end() is seen by this pass
            states = {d: run_state(d, cfg.state_file) for d in cfg.run_dirs()}
            if self._note_new(states):
                last_new = time.monotonic()
            new = [rows for d, s in states.items() if (rows := self._score(d, s)) is not None]
            if new:
                last_new = time.monotonic()
                self._after_scoring(pd.concat(new, ignore_index=True))
            done = self._done(states, ended)
            if done:
                reason = done
                break
            if cfg.idle is not None and time.monotonic() - last_new > cfg.idle:
                reason = "idle"
                log.info("watch: no new checkpoint for %g s; stopping", cfg.idle)
                break
            self._wake.wait(cfg.poll)
            self._wake.clear()
        self._write_report(live=False)
        scored = {d.name: sorted(s) for d, s in self.scored.items()}
        return WatchSummary(scored, reason, time.monotonic() - start, self.metrics, cfg.report, dict(self.lags))

    def _note_new(self, states: dict[Path, RunState]) -> bool:
        now, new = time.monotonic(), False
        for d, s in states.items():
            for step in s.complete:
                if (d, step) not in self._seen:
                    self._seen[(d, step)], new = now, True
        return new

    def _score(self, run_dir: Path, state: RunState) -> pd.DataFrame | None:
        """Score the run if it has complete checkpoints not scored yet and nothing half-written; the new rows."""
        done = self.scored.setdefault(run_dir, set())
        todo = set(state.complete) - done
        final = state.final_model and run_dir not in self._final_scored
        if not (todo or final) or not state.ready:
            if todo and state.pending:
                log.debug("%s: waiting for %s", run_dir, "; ".join(f"{k}: {v}" for k, v in state.pending.items()))
            return None
        from premem.sampling.job import score

        try:
            summary = score(self.cfg.score_config(run_dir))
        except Exception:
            # a checkpoint begun between the look and score's own (score refuses a half-written one): next pass
            after = run_state(run_dir, self.cfg.state_file)
            if after.pending or after.complete != state.complete:
                log.info("%s: a checkpoint is being written; scoring it once complete", run_dir)
                return None
            raise
        now = time.monotonic()
        new = sorted(set(summary.checkpoints) - done)
        done.update(summary.checkpoints)
        if state.final_model:
            self._final_scored.add(run_dir)
        for step in new:
            self.lags[(run_dir.name, step)] = now - self._seen.get((run_dir, step), now)
        return pd.DataFrame({"run": run_dir.name, "step": new})

    def _after_scoring(self, new: pd.DataFrame) -> None:
        """Figures for every checkpoint, the new ones logged and handed on; the report rewritten."""
        from premem.watch.progress import checkpoint_metrics, describe

        self.metrics = checkpoint_metrics(self.cfg.store, self.fit, self.cfg.tau)
        rows = self.metrics.merge(new, on=["run", "step"])
        for _, row in rows.iterrows():
            log.info("watch: %s", describe(row))
        if self.on_scored is not None and len(rows):
            self.on_scored(rows)
        self._write_report(live=True)

    def _done(self, states: dict[Path, RunState], ended: bool) -> str | None:
        """Why the watch is over (finished, until), or None while a run still has work to come."""
        cfg = self.cfg
        if cfg.until is not None and states and all(max(self.scored.get(d) or {-1}) >= cfg.until for d in states):
            return "until"
        over = all((s.finished or ended) and s.ready and not set(s.complete) - self.scored.get(d, set())
                   and not (s.final_model and d not in self._final_scored) for d, s in states.items())
        return "finished" if over and (states or ended) else None

    def _write_report(self, live: bool) -> None:
        if not self.cfg.report or not self.scored or not any(self.scored.values()):
            return
        from premem.report.html import build_report

        try:  # live: the page reloads itself; the last one (live=False) is `premem report --fit` on the store
            build_report(self.cfg.store, self.cfg.report, self.cfg.tau, fit=self.fit, live=live)
        except InputError as e:  # too little scored yet for a figure the report needs: the next pass tries again
            if not self._report_failed:
                log.warning("watch: report not written yet: %s", e)
            self._report_failed = True


def watch(cfg: WatchConfig) -> WatchSummary:
    """`premem watch`: run the loop in the foreground; Ctrl-C kills the actors (the store stays consistent)."""
    watcher = Watcher(cfg)
    try:
        return watcher.run()
    except KeyboardInterrupt:
        release_actors()
        raise


def release_actors() -> None:
    """Kill the process's pool, if it started one (never imports Ray to find out)."""
    if "premem.execution.actor_pool" in sys.modules:
        from premem.execution import release

        release()


def summary(result: WatchSummary, cfg: WatchConfig | None = None) -> str:
    """What `premem watch` prints when it stops: the checkpoints scored per run, the last figures, why it stopped."""
    lines = [f"watch stopped ({result.reason}) after {result.seconds:.0f} s"]
    from premem.watch.progress import describe

    for run, steps in result.scored.items():
        lags = [lag for (r, _), lag in result.lags.items() if r == run]
        lag = f"; {statistics.median(lags):.1f} s median from complete to scored" if lags else ""
        lines.append(f"{run}: {len(steps)} checkpoints scored (steps {', '.join(map(str, steps)) or 'none'}){lag}")
        rows = result.metrics[result.metrics["run"] == run] if len(result.metrics) else result.metrics
        if len(rows):
            lines.append("  last: " + describe(rows.sort_values("step").iloc[-1]))
    if result.report:
        lines.append(f"report: {result.report}")
    return "\n".join(lines)
