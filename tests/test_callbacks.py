"""PrememCallback in a real TRL SFT run of the tiny model: each checkpoint scored beside training on a real Ray
actor, premem's figures in the trainer's log history, in what every report_to integration receives (on_log), and
in TensorBoard's event files read back; attached to a running watch, the same figures from its store."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from transformers import TrainerCallback

from premem.callbacks import PrememCallback
from premem.data import load_example_set
from premem.errors import InputError
from premem.execution import BackendOptions, ExecConfig
from premem.metrics.calibration import calibrate, load_fit, save_fit
from premem.sampling.backend import SamplingParams
from premem.train.config import check_config
from premem.train.rows import render_rows
from premem.train.sft import build_trainer
from premem.train.trainer import load_tokenizer
from premem.watch.progress import checkpoint_metrics
from premem.watch.watcher import Watcher
from tests.train.conftest import gsm8k_file, make_config, tiny_model  # noqa: F401  (fixtures)
from tests.watch.conftest import STEPS, test_file, watch_config  # noqa: F401  (a fixture)

SETTINGS = dict(sampling=SamplingParams(samples=2, max_new_tokens=12), shard_size=10,
                exec=ExecConfig(options=BackendOptions(threads=1, batch_size=8), progress=False))
FIGURES = ("premem/pre_memorization_acc", "premem/memorized_fraction", "premem/train_acc", "premem/test_acc")


class Seen(TrainerCallback):
    """What an integration (TensorBoard, W&B, ...) is handed: every on_log's logs, at the trainer's step."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def sft_trainer(model: Path, data: Path, run_dir: Path):
    """The TRL SFTTrainer premem train builds: 3 epochs of the 40 rows, a checkpoint per epoch, one thread."""
    import torch

    torch.set_num_threads(1)
    cfg = check_config(make_config(model, data, run_dir, epochs=3))
    examples = load_example_set(cfg.train)
    rows = render_rows(examples, examples.examples, "paper", load_tokenizer(cfg), 256)
    return build_trainer(cfg, run_dir, rows)


def premem_logs(history: list[dict]) -> dict[int, dict]:
    return {int(h["premem/checkpoint_step"]): h for h in history if "premem/checkpoint_step" in h}


@pytest.fixture(scope="module")
def fit_file(synthetic_fit_store, tmp_path_factory) -> Path:
    """A saved fit (premem predict --save-fit) on a store of four runs with test scores."""
    return save_fit(calibrate(synthetic_fit_store, -2.3), tmp_path_factory.mktemp("fit") / "fit.json")


@pytest.fixture(scope="module")
def synthetic_fit_store(tmp_path_factory):
    from premem.store import ScoreStore
    from tests.conftest import synthetic_tables

    store = ScoreStore(tmp_path_factory.mktemp("calibration") / "store", create=True)
    for name, table in zip(("runs", "train_scores", "test_scores"), synthetic_tables()):
        store.write(name, table)
    return store


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_the_callback_logs_each_checkpoints_figures_through_the_trainer(tiny_model, gsm8k_file, test_file,
                                                                       fit_file, tmp_path):
    trainer = sft_trainer(tiny_model, gsm8k_file, tmp_path / "run")
    seen = Seen()
    trainer.add_callback(seen)  # before premem's, as report_to's integrations are
    tensorboard = _tensorboard(trainer, tmp_path / "tb")
    # the two lines of a training script (the settings here only keep the test small)
    trainer.add_callback(PrememCallback(train=gsm8k_file, test=test_file, store=tmp_path / "store", fit=fit_file,
                                        **SETTINGS))
    trainer.train()

    logged = premem_logs(trainer.state.log_history)
    fit = load_fit(fit_file)
    assert sorted(logged) == STEPS  # every checkpoint, once, the last one waited for at the end
    for step, entry in logged.items():
        assert all(0 <= entry[k] <= 1 for k in FIGURES), entry
        # the saved fit's line and band (clipped to [0, 1]) at the checkpoint's pre-memorization accuracy
        assert entry["premem/predicted_test_acc"] == pytest.approx(
            fit.slope * entry["premem/pre_memorization_acc"] + fit.intercept)
        assert 0 <= entry["premem/predicted_test_acc_lower"] <= entry["premem/predicted_test_acc_upper"] <= 1
        assert entry["step"] >= step  # logged at the trainer's step then, never before the checkpoint was saved
    stored = checkpoint_metrics(tmp_path / "store", fit).set_index("step")  # the store the watcher wrote, read after
    for step, entry in logged.items():
        assert entry["premem/pre_memorization_acc"] == stored.loc[step, "premem"]
        assert entry["premem/memorized_fraction"] == stored.loc[step, "frac_memorized"]
        assert entry["premem/test_acc"] == stored.loc[step, "test_acc"]
    handed = {int(logs["premem/checkpoint_step"]): logs for _, logs in seen.logs if "premem/checkpoint_step" in logs}
    assert handed.keys() == logged.keys() and all(set(FIGURES) <= set(v) for v in handed.values())
    assert any("loss" in logs for _, logs in seen.logs)  # the loss went the same way
    if tensorboard:
        scalars = _read_events(tmp_path / "tb")
        assert sorted(v for _, v in scalars["train/premem/checkpoint_step"]) == STEPS
        tb = sorted(scalars["train/premem/pre_memorization_acc"])  # (trainer step, value), as log_history has them
        expected = sorted((e["step"], e["premem/pre_memorization_acc"]) for e in logged.values())
        assert [s for s, _ in tb] == [s for s, _ in expected]
        assert [v for _, v in tb] == pytest.approx([v for _, v in expected])
    else:  # the test extra installs tensorboard; a bare environment still checks everything else
        pytest.skip("tensorboard is not installed: the event files were not checked")


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_attached_to_a_running_watch_the_callback_reads_its_store(tiny_model, gsm8k_file, test_file, tmp_path):
    run, store = tmp_path / "run", tmp_path / "store"
    run.mkdir()
    watcher = Watcher(watch_config([run], store, gsm8k_file, test_file))  # `premem watch` on the run and store
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        trainer = sft_trainer(tiny_model, gsm8k_file, run)
        trainer.add_callback(PrememCallback(train=gsm8k_file, test=test_file, store=store, attach=True, poll=0.2,
                                            **SETTINGS))
        trainer.train()
    finally:
        watcher.end()
        thread.join(120)
    logged = premem_logs(trainer.state.log_history)
    assert sorted(logged) == STEPS
    assert all(0 <= e["premem/pre_memorization_acc"] <= 1 and "premem/predicted_test_acc" not in e
               for e in logged.values())


def test_bad_settings_fail_when_the_callback_is_made(gsm8k_file, tmp_path):
    with pytest.raises(InputError, match="^shard_size: expected an integer >= 1"):
        PrememCallback(train=gsm8k_file, store=tmp_path / "store", shard_size=0)
    with pytest.raises(InputError, match="^PrememCallback: .*'shards'"):
        PrememCallback(train=gsm8k_file, store=tmp_path / "store", shards=3)
    with pytest.raises(InputError, match="^wait: expected a number of seconds"):
        PrememCallback(train=gsm8k_file, store=tmp_path / "store", wait=-1)
    assert not (tmp_path / "store").exists()


def _tensorboard(trainer, logdir: Path) -> bool:
    """TensorBoard's callback, as report_to="tensorboard" adds it, when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    from transformers.integrations import TensorBoardCallback

    trainer.add_callback(TensorBoardCallback(SummaryWriter(str(logdir))))
    return True


def _read_events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
