"""PrememCallback: premem's figures next to the loss, scored while the transformers / TRL trainer goes on training.

Two lines in a training script:

    from premem.callbacks import PrememCallback
    trainer.add_callback(PrememCallback(train="train.jsonl", test="test.jsonl", store="scores/"))

On each save the checkpoint goes to a watcher (premem.watch.Watcher) running in a thread of the training process:
it drives Ray actors in their own processes, so the training loop never waits for scoring. Or, with attach=True, a
`premem watch` already running on the same run directory and store scores it, and the callback only reads the
store. When a checkpoint's scores are in, its figures are logged through the trainer's own `log` (at the trainer's
step then, with the checkpoint's step as premem/checkpoint_step), so they land in state.log_history and in every
report_to integration (TensorBoard, W&B, MLflow, ...) as the loss does:

    premem/pre_memorization_acc       pre-memorization train accuracy
    premem/memorized_fraction         share of the training examples memorized (at the fit's tau, else -2.3)
    premem/train_acc, premem/test_acc train accuracy; test accuracy where a test set is scored
    premem/predicted_test_acc         with fit=FILE (premem predict --save-fit): predicted test accuracy, and its
    premem/predicted_test_acc_lower/_upper   band

The callback finds the trainer it was added to when training begins (or pass trainer=); it puts itself first among
the trainer's callbacks, so that at the end of training it logs the last checkpoint's figures (waiting for them at
most `wait` seconds) before the integrations close their writers.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from pathlib import Path

from premem.data import DataConfig
from premem.errors import InputError
from premem.execution import ExecConfig
from premem.watch import WatchConfig

log = logging.getLogger(__name__)


def __getattr__(name: str):
    """PrememCallback, made when first named: it subclasses transformers' TrainerCallback, and importing that writes
    torch's compile cache directory, which importing premem must never do (tests/test_side_effects.py)."""
    if name == "PrememCallback":
        from transformers import TrainerCallback

        cls = type("PrememCallback", (Callback, TrainerCallback), {"__module__": __name__, "__doc__": Callback.__doc__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Callback:
    """Score each checkpoint beside training and log premem's figures through the trainer's loggers.

    (PrememCallback is this class on top of transformers' TrainerCallback, which supplies the events it ignores.)

    train, test: data paths (or DataConfigs); store: the score store; fit: a saved fit file; attach: read the
    scores of a running `premem watch` instead of scoring; wait: seconds to wait at the end for the last
    checkpoint's scores; poll: seconds between looks at the store (attach) or the run directory; trainer: the
    trainer, when it is not found on its own; settings: any other WatchConfig field (sampling, exec, shard_size...).
    """

    def __init__(self, trainer=None, *, train: str | DataConfig, store: str,
                 test: str | DataConfig | None = None, fit: str | None = None, attach: bool = False,
                 wait: float = 600.0, poll: float = 2.0, **settings):
        as_data = (lambda d: d if isinstance(d, DataConfig) else DataConfig(path=str(d)))
        settings.setdefault("exec", ExecConfig(progress=False))
        try:
            self.cfg = WatchConfig(store=str(store), train=as_data(train), test=None if test is None else as_data(test),
                                   fit=None if fit is None else str(fit), poll=poll, idle=None, **settings)
        except TypeError as e:  # an unknown keyword: name it as the other settings are named
            raise InputError(f"PrememCallback: {e}") from None
        self.cfg.validate(runs=False)  # every setting but the run directory, which training names later
        if not (isinstance(wait, (int, float)) and wait >= 0):
            raise InputError(f"wait: expected a number of seconds >= 0, got {wait!r}")
        self.trainer, self.attach, self.wait = trainer, attach, float(wait)
        self.watcher = None
        self._thread: threading.Thread | None = None
        self._results: queue.Queue = queue.Queue()
        self._logged: set[int] = set()
        self._saved: set[int] = set()
        self._error: BaseException | None = None
        self._last_look = 0.0
        self.run = ""
        self._expected: dict[str, int] = {}

    # -- training events --------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.trainer = self.trainer or _find_trainer()
        callbacks = self.trainer.callback_handler.callbacks
        callbacks.insert(0, callbacks.pop(callbacks.index(self)))  # before the integrations: see the docstring
        run_dir = Path(args.output_dir)
        self.cfg.runs = [str(run_dir)]
        self.cfg.validate()  # the store must not lie in the run directory, and so on
        self.run = run_dir.resolve().name
        if self.attach:
            self._expected = expected_rows(self.cfg, run_dir)
            return
        from premem.watch.watcher import Watcher

        self.watcher = Watcher(self.cfg, on_scored=self._results.put)
        self._thread = threading.Thread(target=self._watch, name="premem-watch", daemon=True)
        self._thread.start()

    def on_save(self, args, state, control, **kwargs):
        self._saved.add(state.global_step)
        if self.watcher is not None:
            self.watcher.notify()

    def on_step_end(self, args, state, control, **kwargs):
        self._log_ready()

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.run:
            return
        deadline = time.monotonic() + self.wait
        if self.watcher is not None:
            self.watcher.end()
            self._thread.join(self.wait)
            if self._thread.is_alive():
                self.watcher.stop()
        else:
            while not self._saved <= self._logged and time.monotonic() < deadline:
                self._log_ready(force=True)
                time.sleep(min(self.cfg.poll, max(0.0, deadline - time.monotonic())))
        self._log_ready(force=True)
        if missing := sorted(self._saved - self._logged):
            log.warning("premem: no scores for checkpoint(s) %s after %g s; not logged (is the watch running on "
                        "%s?)", ", ".join(map(str, missing)), self.wait, self.cfg.store)
        if self.watcher is not None:
            from premem.watch.watcher import release_actors

            release_actors()  # the CPUs (or GPUs) go back to whatever the script does next

    # -- logging --------------------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            self.watcher.run()
        except BaseException as e:  # never into the training loop: said once, training goes on
            self._error = e
            log.error("premem: scoring beside training stopped: %s", e, exc_info=not isinstance(e, InputError))

    def _log_ready(self, force: bool = False) -> None:
        """Log every checkpoint whose scores are in and that is not logged yet, in step order."""
        if not self.run:  # not the main process of a distributed run, or training not begun
            return
        rows = []
        while True:
            try:
                rows.append(self._results.get_nowait())
            except queue.Empty:
                break
        if self.attach and (force or time.monotonic() - self._last_look >= self.cfg.poll):
            self._last_look = time.monotonic()
            rows += self._read_store()
        if not rows:
            return
        import pandas as pd

        table = pd.concat(rows, ignore_index=True)
        table = table[(table["run"] == self.run) & ~table["step"].isin(self._logged)].sort_values("step")
        from premem.watch.progress import logged_metrics

        for _, row in table.drop_duplicates("step").iterrows():
            self._logged.add(int(row["step"]))
            self.trainer.log(logged_metrics(row))

    def _read_store(self) -> list:
        """attach: the figures of this run's checkpoints the running watch has finished scoring."""
        from premem.store import ScoreStore
        from premem.watch.progress import checkpoint_metrics, scored_steps

        if not Path(self.cfg.store).is_dir():
            return []
        try:
            ready = scored_steps(self.cfg.store, self.run, self._expected) - self._logged
            if not ready:
                return []
            from premem.metrics.calibration import load_fit

            fit = load_fit(self.cfg.fit) if self.cfg.fit else None
            table = checkpoint_metrics(ScoreStore(self.cfg.store), fit, self.cfg.tau)
        except (InputError, OSError) as e:  # the store mid-write: look again next time
            log.debug("premem: store not readable now: %s", e)
            return []
        return [table[(table["run"] == self.run) & table["step"].isin(ready)]]


def expected_rows(cfg: WatchConfig, run_dir: Path) -> dict[str, int]:
    """Score rows a checkpoint of the run has once scored: {split: rows}, as premem score chooses its examples."""
    from premem.data import load_example_set
    from premem.runs import read_run_info

    out = {}
    if cfg.train_examples != "none":
        ids = (read_run_info(run_dir) or {}).get("train_example_ids") if cfg.train_examples == "trained" else None
        out["train"] = len(ids) if ids is not None else len(load_example_set(cfg.train).examples)
    if cfg.test is not None and cfg.test.path:
        out["test"] = len(load_example_set(cfg.test).examples)
    return out


def _find_trainer():
    """The Trainer whose callback handler is calling us: a few frames up the stack (Trainer -> handler -> us)."""
    from transformers import Trainer  # here: importing the trainer module writes torch's compile cache directory

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    raise InputError("PrememCallback: no Trainer is calling it; pass trainer=")
