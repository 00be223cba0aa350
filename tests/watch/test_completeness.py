"""A checkpoint is complete only when every weight file is at its final size and the trainer's last file is there:
real safetensors files written whole, cut short, sharded with a shard missing; LoRA adapters; final models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from premem.cli import main
from premem.data import DataConfig
from premem.errors import InputError
from premem.watch import WatchConfig, run_root
from premem.watch.completeness import folder_problem, run_state, safetensors_complete


def weights(path: Path, n: int = 64, name: str = "w") -> Path:
    save_file({name: np.arange(n, dtype=np.float32), f"{name}_b": np.ones(3, dtype=np.float32)}, str(path))
    return path


def full_checkpoint(folder: Path, step: int | None = None, shards: int = 1) -> Path:
    """A Trainer-style checkpoint: config.json, weights (sharded with an index when shards > 1), trainer state."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if shards == 1:
        weights(folder / "model.safetensors")
    else:
        weight_map = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            weights(folder / name, name=f"w{i}")
            weight_map |= {f"w{i}": name, f"w{i}_b": name}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def cut(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_a_safetensors_file_is_complete_only_at_its_full_size(tmp_path):
    path = weights(tmp_path / "a.safetensors")
    assert safetensors_complete(path)
    size = path.stat().st_size
    for keep in (0, 4, 8, 40, size - 1):  # nothing, inside the length, the header, the data
        cut(weights(path), keep)
        assert not safetensors_complete(path), keep
    weights(path)
    with path.open("ab") as f:  # longer than its header says: not a file a trainer finished either
        f.write(b"\0")
    assert not safetensors_complete(path)


def test_a_checkpoint_folder_is_complete_once_weights_and_trainer_state_are_written(tmp_path):
    folder = full_checkpoint(tmp_path / "checkpoint-5", step=5)
    assert folder_problem(folder) is None
    cut(folder / "model.safetensors", 100)
    assert folder_problem(folder) == "model.safetensors not fully written"
    weights(folder / "model.safetensors")
    (folder / "trainer_state.json").unlink()
    assert "trainer_state.json (written last)" in folder_problem(folder)
    assert folder_problem(folder, state_file="") is None  # a trainer that writes no state: the weights decide
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")  # no header to check: the state file decides
    assert folder_problem(folder, state_file="") is None and "trainer_state.json" in folder_problem(folder)
    weights(folder / "model.safetensors")
    (folder / "pytorch_model.bin").unlink()
    (folder / "trainer_state.json").write_text('{"global_st')  # being written
    assert "trainer_state.json" in folder_problem(folder)


def test_a_sharded_checkpoint_needs_every_shard_its_index_names(tmp_path):
    folder = full_checkpoint(tmp_path / "checkpoint-5", step=5, shards=3)
    assert folder_problem(folder) is None
    (folder / "model-00002-of-00003.safetensors").unlink()
    assert folder_problem(folder) == "model-00002-of-00003.safetensors (named by model.safetensors.index.json) missing"
    weights(folder / "model-00002-of-00003.safetensors", name="w1")
    cut(folder / "model-00003-of-00003.safetensors", 50)
    assert folder_problem(folder) == "model-00003-of-00003.safetensors not fully written"
    weights(folder / "model-00003-of-00003.safetensors", name="w2")
    cut(folder / "model.safetensors.index.json", 20)
    assert folder_problem(folder) == "model.safetensors.index.json not readable yet"


def test_a_lora_adapter_needs_its_config_and_whole_weights(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    weights(folder / "adapter_model.safetensors")
    (folder / "trainer_state.json").write_text("{}")
    assert folder_problem(folder) == "adapter_config.json missing"
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))
    assert folder_problem(folder) is None
    cut(folder / "adapter_model.safetensors", 30)
    assert folder_problem(folder) == "adapter_model.safetensors not fully written"


def test_the_run_state_names_what_is_being_written_and_whether_the_run_finished(tmp_path):
    run = tmp_path / "run"
    full_checkpoint(run / "checkpoint-5", step=5)
    full_checkpoint(run / "checkpoint-10", step=10)
    (run / "checkpoint-15").mkdir()  # the trainer has just made the folder
    state = run_state(run)
    assert state.complete == [5, 10] and not state.ready and not state.finished
    assert state.pending == {"checkpoint-15": "config.json missing or not readable yet"}
    full_checkpoint(run / "checkpoint-20", step=20)
    (run / "checkpoint-15").rmdir()
    full_checkpoint(run / "checkpoint-15", step=15)
    assert run_state(run).complete == [5, 10, 15, 20] and run_state(run).ready
    # the final model in the run directory itself (trainer.save_model): finished once its weights are whole
    (run / "config.json").write_text("{}")
    cut(weights(run / "model.safetensors"), 60)
    state = run_state(run)
    assert not state.finished and state.pending == {"final model": "model.safetensors not fully written"}
    weights(run / "model.safetensors")
    assert run_state(run).finished and run_state(run).final_model and run_state(run).ready


def test_premem_trains_finished_marker_ends_the_run(tmp_path):
    run = tmp_path / "run"
    full_checkpoint(run / "checkpoint-5", step=5)
    (run / "premem_run.json").write_text(json.dumps({"run": "run", "finished": False}))
    assert not run_state(run).finished
    (run / "premem_run.json").write_text(json.dumps({"run": "run", "finished": True}))
    assert run_state(run).finished and run_state(run).marker
    assert run_state(tmp_path / "not-yet").complete == []  # a run directory not made yet: nothing, no error


def watch_config(tmp_path, **kw) -> WatchConfig:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    (tmp_path / "runs" / "a").mkdir(parents=True, exist_ok=True)
    return WatchConfig(**{"runs": [str(tmp_path / "runs" / "a")], "store": str(tmp_path / "store"),
                          "train": DataConfig(path=str(data)), **kw})


@pytest.mark.parametrize("change, message", [
    ({"runs": []}, "^runs: say which run to watch"),
    ({"idle": 0}, "^idle: expected a number of seconds > 0, got 0"),
    ({"poll": -1.0}, "^poll: expected a number of seconds > 0"),
    ({"until": -2}, "^until: expected an integer >= 0"),
    ({"state_file": "a/b"}, "^state_file: expected a file name"),
    ({"report": "r.txt"}, "^report: r.txt: the report is one .html file"),
    ({"sample": "some"}, "^sample: expected exact, final or all"),
    ({"sample": "final"}, "^sample: final skips memorized pairs before a run's last checkpoint"),
    ({"shard_size": 0}, "^shard_size: expected an integer >= 1"),
    ({"fit": "missing.json"}, "missing.json"),
])
def test_every_setting_is_checked_first(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        watch_config(tmp_path, **change).validate()
    assert not (tmp_path / "store").exists()


def test_runs_are_checked_and_globs_read_anew(tmp_path):
    cfg = watch_config(tmp_path, runs=[str(tmp_path / "runs" / "*")])
    assert [p.name for p in cfg.run_dirs(check=True)] == ["a"]
    (tmp_path / "runs" / "b").mkdir()
    assert [p.name for p in cfg.run_dirs()] == ["a", "b"]  # a run started later is watched too
    assert run_root(str(tmp_path / "runs" / "*")) == str(tmp_path / "runs")
    (tmp_path / "other" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="are both run 'a' in the store"):
        watch_config(tmp_path, runs=[str(tmp_path / "runs" / "a"), str(tmp_path / "other" / "a")]).validate()
    later = watch_config(tmp_path, runs=[str(tmp_path / "not" / "yet" / "run")])  # training has not made it yet
    assert later.run_dirs(check=True) == [(tmp_path / "not" / "yet" / "run").resolve()]
    (tmp_path / "runs" / "a.txt").write_text("")
    with pytest.raises(InputError, match="a.txt is not a directory"):
        watch_config(tmp_path, runs=[str(tmp_path / "runs" / "a.txt")]).validate()
    with pytest.raises(InputError, match="^store .*inside"):
        watch_config(tmp_path, store=str(tmp_path / "runs" / "a" / "store")).validate()


def test_the_command_refuses_bad_settings_in_one_line(tmp_path, capsys):
    cfg = watch_config(tmp_path)
    code = main(["watch", "--run", cfg.runs[0], "--train", cfg.train.path, "--store", cfg.store, "--idle", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err == "premem: error: idle: expected a number of seconds > 0, got 0.0\n"
    assert main(["watch", "--train", cfg.train.path, "--store", cfg.store]) == 2
    assert capsys.readouterr().err.startswith("premem: error: runs: say which run to watch")
    missing = str(tmp_path / "nope.jsonl")  # the data is read before the first look at the run, not at a checkpoint
    assert main(["watch", "--run", cfg.runs[0], "--train", missing, "--store", cfg.store]) == 2
    err = capsys.readouterr().err
    assert err.startswith("premem: error: ") and "nope.jsonl" in err and len(err.splitlines()) == 1
    assert not Path(cfg.store).exists()
