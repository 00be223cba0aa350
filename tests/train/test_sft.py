"""premem train in one process: checkpoints premem can score, the run record, completion-only
loss, seeded data subsets, sweeps that skip finished runs, and bad input as clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from premem.cli import main
from premem.config import load_config
from premem.data import get_template, load_example_set
from premem.errors import InputError
from premem.runs import RUN_INFO, find_checkpoints
from premem.train import api
from premem.train.api import sweep, train
from premem.train.config import SweepConfig, TrainConfig, check_config
from premem.train.rows import render_rows, subset
from premem.train.sft import build_trainer
from premem.train.trainer import load_tokenizer
from tests.train.conftest import N_ROWS, gold_nll, make_config

ROOT = Path(__file__).resolve().parents[2]
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


@pytest.fixture(scope="module")
def epoch_run(tiny_model, gsm8k_file, tmp_path_factory) -> Path:
    """Two epochs of the tiny model on the 40 rows, a checkpoint per epoch (trained once)."""
    return train(make_config(tiny_model, gsm8k_file, tmp_path_factory.mktemp("epoch") / "run"))


def test_a_checkpoint_per_epoch_in_the_layout_premem_scores(epoch_run):
    # 40 examples in batches of 8: 5 steps an epoch
    assert sorted(p.name for p in epoch_run.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    for folder in epoch_run.glob("checkpoint-*"):
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"} <= names
        assert not names & set(OPTIMIZER_FILES), names  # save_only_model: no optimizer state
        assert not [n for n in names if n.startswith("rng_state")]
    checkpoints = find_checkpoints(epoch_run)
    assert [c.step for c in checkpoints] == [5, 10]
    assert {c.kind for c in checkpoints} == {"full"}


def test_the_run_record(epoch_run, tiny_model, gsm8k_file):
    info = json.loads((epoch_run / RUN_INFO).read_text())
    assert info["run"] == "run" and info["model"] == str(tiny_model)
    assert (info["lr"], info["epochs"], info["data_fraction"], info["seed"], info["batch_size"]) == (3e-3, 2, 1.0, 0, 8)
    assert info["n_train"] == N_ROWS and info["train_example_ids"] == list(range(N_ROWS))
    assert info["checkpoints"] == [{"step": 5, "epoch": 1.0}, {"step": 10, "epoch": 2.0}]
    assert info["finished"] is True and info["world_size"] == 1
    assert info["train_path"] == str(gsm8k_file)


def test_training_lowers_the_gold_target_loss(epoch_run, tiny_model, gsm8k_file):
    before = gold_nll(tiny_model, gsm8k_file)
    after = [gold_nll(c.path, gsm8k_file) for c in find_checkpoints(epoch_run)]
    assert before > after[0] > after[1], (before, after)
    assert after[1] < before - 1.0  # a random model at ~6.2 nats a token; training takes off more than one


def test_the_loss_is_on_the_completion_only(config, tmp_path):
    cfg = check_config(config())
    tokenizer = load_tokenizer(cfg)
    data = load_example_set(cfg.train)
    rows = render_rows(data, data.examples, "paper", tokenizer, 256)
    trainer = build_trainer(cfg, tmp_path / "unused", rows)
    assert trainer.completion_only_loss
    prepared = trainer.train_dataset
    assert len(prepared) == N_ROWS  # none dropped by truncation
    for ex, row in zip(data.examples, prepared):
        # the tokens premem score scores: the prompt with special tokens, the target without; then eos
        p = tokenizer(ex.question + "\nAnswer:")["input_ids"]
        t = tokenizer(" " + ex.solution + "\nDone.", add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == p + t + [tokenizer.eos_token_id]
        assert row["labels"] == [-100] * len(p) + t + [tokenizer.eos_token_id]


def test_a_chat_prompt_keeps_one_bos(config, tmp_path):
    # the chat template writes the BOS into the prompt text; TRL's tokenizer call adds another
    cfg = check_config(config(template="chat"))
    tokenizer = load_tokenizer(cfg)
    data = load_example_set(cfg.train)
    rows = render_rows(data, data.examples[:3], "chat", tokenizer, 256)
    prepared = build_trainer(cfg, tmp_path / "unused", rows).train_dataset
    template = get_template("chat", tokenizer)
    for ex, row in zip(data.examples, prepared):
        r = template.render(ex)  # as premem score encodes a chat example
        p = tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(r.target, add_special_tokens=False)["input_ids"]
        assert p.count(tokenizer.bos_token_id) == 1
        assert row["input_ids"] == p + t and row["labels"] == [-100] * len(p) + t


def test_save_every_n_steps_keeps_the_last_step(config):
    run = train(config(save_every=3))  # 10 steps
    assert [c.step for c in find_checkpoints(run)] == [3, 6, 9, 10]
    epochs = [c["epoch"] for c in json.loads((run / RUN_INFO).read_text())["checkpoints"]]
    assert epochs == [0.6, 1.2, 1.8, 2.0]


def test_evenly_spaced_checkpoints_whatever_the_run_length(config):
    # 40 examples, batch 8: 5 steps an epoch; 4 checkpoints asked of 10 and of 25 steps
    assert [c.step for c in find_checkpoints(train(config(checkpoints=4)))] == [3, 6, 9, 10]
    long = train(config(checkpoints=4, epochs=5, out=str(Path(config().out).parent / "long")))
    assert [c.step for c in find_checkpoints(long)] == [7, 14, 21, 25]


def test_doubling_keeps_epochs_1_2_4_8_and_the_last(config):
    run = train(config(save_every="doubling", epochs=10))  # 5 steps an epoch
    assert [c.step for c in find_checkpoints(run)] == [5, 10, 20, 40, 50]
    epochs = [c["epoch"] for c in json.loads((run / RUN_INFO).read_text())["checkpoints"]]
    assert epochs == [1, 2, 4, 8, 10]


def test_data_fraction_is_a_seeded_recorded_subset(config):
    run = train(config(data_fraction=0.5, seed=1, epochs=1))
    info = json.loads((run / RUN_INFO).read_text())
    ids = info["train_example_ids"]
    assert info["n_train"] == len(ids) == N_ROWS // 2 and ids == sorted(ids)
    assert info["workers"][0]["steps"] == 3  # the trainer saw 20 examples: ceil(20 / 8) steps
    # the same seed draws the same subset; another seed another; a smaller fraction lies inside
    examples = load_example_set(config().train).examples
    assert [e.example_id for e in subset(examples, 0.5, 1)] == ids
    assert [e.example_id for e in subset(examples, 0.5, 2)] != ids
    assert {e.example_id for e in subset(examples, 0.25, 1)} < set(ids)


def test_sweep_trains_each_grid_point_once(config, tmp_path, monkeypatch):
    cfg = config(out=str(tmp_path / "sweep"), epochs=1)
    grid = SweepConfig(lr=["1e-3", 3e-3], data_fraction=[0.5])  # YAML reads 1e-3 as text
    runs = sweep(cfg, grid)
    assert [r.name for r in runs] == ["lr1e-3_ep1_frac0.5_s0", "lr3e-3_ep1_frac0.5_s0"]
    for run in runs:
        info = json.loads((run / RUN_INFO).read_text())
        assert info["finished"] and info["run"] == run.name and info["n_train"] == N_ROWS // 2
        assert [c.step for c in find_checkpoints(run)] == [3]
    assert json.loads((runs[0] / RUN_INFO).read_text())["lr"] == 1e-3

    # an interrupted run (record says unfinished) is restarted cleanly; finished ones are reused
    info = json.loads((runs[1] / RUN_INFO).read_text())
    (runs[1] / RUN_INFO).write_text(json.dumps({**info, "finished": False}))
    (runs[1] / "checkpoint-99").mkdir()
    trained = []
    real_fit = api.fit
    monkeypatch.setattr(api, "fit", lambda *a, **k: trained.append(a[1].name) or real_fit(*a, **k))
    assert sweep(cfg, grid) == runs
    assert trained == ["lr3e-3_ep1_frac0.5_s0"]
    assert not (runs[1] / "checkpoint-99").exists()
    assert [c.step for c in find_checkpoints(runs[1])] == [3]


def test_a_finished_run_is_not_reused_for_other_settings(epoch_run, tiny_model, gsm8k_file):
    with pytest.raises(InputError, match="finished run with lr 0.003, not 0.001"):
        train(make_config(tiny_model, gsm8k_file, epoch_run, lr=1e-3))


def test_run_names():
    def name(**kw):
        return api.run_name(TrainConfig(**{"lr": 1e-3, "epochs": 3, "data_fraction": 0.5, "seed": 0, **kw}))

    assert name() == "lr1e-3_ep3_frac0.5_s0"
    assert name(lr=2.5e-5, data_fraction=1.0, seed=7) == "lr2.5e-5_ep3_frac1_s7"
    assert name(run_name="gsm8k") == "gsm8k_lr1e-3_ep3_frac0.5_s0"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": "fast"}, "lr: expected a number"),
        ({"lr": 0}, "lr: expected a value above 0"),
        ({"epochs": 1.5}, "epochs: expected an integer"),
        ({"data_fraction": 1.5}, "data_fraction: expected a value at most 1"),
        ({"batch_size": 9, "workers": 2}, "batch_size: 9 examples per step do not split evenly"),
        ({"save_every": "often"}, "save_every: expected 'epoch', 'doubling' or a number of steps"),
        ({"lr_scheduler": "zigzag"}, "lr_scheduler: unknown schedule 'zigzag'"),
        ({"warmup_ratio": 1}, "warmup_ratio: expected a value below 1"),
        ({"template": "fancy"}, "template: unknown template"),
        ({"model": ""}, "model: say which model"),
        ({"model": "/nonexistent/model"}, "model: /nonexistent/model is not a local model directory"),
    ],
)
def test_bad_settings_name_their_field(config, overrides, message):
    with pytest.raises(InputError, match=message):
        train(config(**overrides))


def test_pickle_weights_need_opting_in(config, tmp_path, tiny_model):
    import shutil

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_model, model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    with pytest.raises(InputError, match="only pickle weights"):
        train(config(model=str(model)))


def test_a_directory_that_is_not_a_run_is_left_alone(config, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and holds no premem_run.json"):
        train(config(out=str(out)))
    assert (out / "notes.txt").read_text() == "mine"


def test_an_example_longer_than_max_length_is_an_error(config):
    with pytest.raises(InputError, match=r"train.jsonl example 0: prompt and target take \d+ tokens"):
        train(config(max_length=16))


# -- the example config and the command line --------------------------------------------------


def test_the_example_config_is_a_valid_sweep():
    cfg = check_config(load_config(TrainConfig, ROOT / "configs" / "train" / "tiny.yaml"))
    points = api.grid_points(cfg, cfg.sweep)
    assert len(points) >= 2 and len({name for name, _ in points}) == len(points)
    assert all(isinstance(p.lr, float) for _, p in points)


def test_cli_trains_one_run(tiny_model, gsm8k_file, tmp_path, capsys):
    out = tmp_path / "cli_run"
    code = main(["train", "--model", str(tiny_model), "--train", str(gsm8k_file), "--out", str(out), "lr=3e-3",
                 "epochs=1", "batch_size=8", "max_length=256", "progress=false"])
    assert code == 0
    assert "cli_run: 40 examples, checkpoints at steps 5" in capsys.readouterr().out
    assert [c.step for c in find_checkpoints(out)] == [5]


def test_cli_runs_the_config_sweep(tiny_model, gsm8k_file, tmp_path, capsys):
    out = tmp_path / "cli_sweep"
    code = main(["train", "--config", str(ROOT / "configs" / "train" / "tiny.yaml"), "--model", str(tiny_model),
                 "--train", str(gsm8k_file), "--out", str(out), "train.limit=null", "sweep.lr=[3e-3]",
                 "sweep.epochs=[1]", "sweep.data_fraction=[0.5]", "sweep.seed=[0]", "batch_size=8",
                 "max_length=256", "progress=false"])
    assert code == 0
    assert [p.name for p in out.iterdir()] == ["lr3e-3_ep1_frac0.5_s0"]
    assert "lr3e-3_ep1_frac0.5_s0: 20 examples" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--out", "{tmp}/r", "lr=abc"], "lr: expected a number"),
        (["--out", "{tmp}/r", "epochs=2", "colour=blue"], "unknown field(s) colour"),
        (["--out", "{tmp}/r", "--model", "{tmp}/no_such_model"], "is not a local model directory"),
        (["--model", "{tmp}"], "out: say where to write the run"),
    ],
)
def test_cli_bad_config_exits_2_with_one_line(args, needle, tiny_model, gsm8k_file, tmp_path, capsys):
    argv = ["train", "--model", str(tiny_model), "--train", str(gsm8k_file)]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("premem: error: ") and needle in err[0], err


def test_cli_bad_config_file_exits_2_in_a_subprocess(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nout: o\nsweep:\n  lr: 1e-3\n")  # a number where a list belongs
    proc = subprocess.run([sys.executable, "-m", "premem.cli", "train", "--config", str(bad)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("premem: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
