"""The run directory: premem_run.json (its keys in one list, written and read back), and finding a
run's checkpoints (Trainer runs, final models, LoRA adapters, GGUF files) with every weight file
checked from its headers, a broken one named before any work."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from premem import runs
from premem.errors import InputError
from premem.runs import (
    RUN_COLUMNS,
    RUN_INFO,
    RUN_KEYS,
    SAME_RUN_KEYS,
    find_checkpoints,
    list_checkpoints,
    read_run_info,
    run_difference,
    run_record,
    write_run_info,
)
from tests.model_files import (  # noqa: F401 (fixtures)
    EMPTY_GGUF,
    gguf_run,
    lora_run,
    needs_gguf,
    needs_peft,
    pickle_run,
    save,
    sharded_run,
    shards,
    tiny_model,
    tok,
    trainer_run,
)

# -- premem_run.json ---------------------------------------------------------------------------


def test_a_record_is_written_in_key_order_and_read_back(tmp_path):
    info = run_record(finished=False, lr=1e-3, run="r", train_example_ids=[3, 1, 2], model="m")
    assert list(info) == ["run", "model", "lr", "train_example_ids", "finished"]  # RUN_KEYS' order, not the call's
    write_run_info(tmp_path, info)
    text = (tmp_path / RUN_INFO).read_text()
    assert text.splitlines()[:3] == ["{", ' "run": "r",', ' "model": "m",']  # one key a line
    assert ' "train_example_ids": [3, 1, 2],' in text  # a list stays on its line
    assert read_run_info(tmp_path) == info
    assert read_run_info(tmp_path / "elsewhere") is None
    (tmp_path / RUN_INFO).write_text("{not json")
    with pytest.raises(InputError, match=rf"^{tmp_path / RUN_INFO}: not readable JSON"):
        read_run_info(tmp_path)


def test_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match="not keys of premem_run.json: lr_typo; add them to premem.runs.RUN_KEYS"):
        run_record(run="r", lr_typo=1)


def test_the_key_lists_come_from_the_one_list():
    names = [k.name for k in RUN_KEYS]
    assert len(names) == len(set(names))
    # the runs table's columns, in the order score has always written them
    assert RUN_COLUMNS == ("model", "lr", "epochs", "data_fraction", "seed", "batch_size", "n_train")
    assert {"model_path", "lr", "method", "beta", "train_fingerprint"} <= set(SAME_RUN_KEYS)
    assert not {"run", "n_train", "checkpoints", "finished", "seconds"} & set(SAME_RUN_KEYS)


def test_which_key_makes_another_run():
    before = run_record(model_path="/m", method="sft", lr=1e-3, epochs=3, finished=True, seconds=9.0)
    assert run_difference(before, {**before, "seconds": 1.0, "finished": False}) is None  # not what makes a run
    assert run_difference(before, {**before, "lr": 3e-3}) == ("lr", 1e-3, 3e-3)
    # a record from before `method` existed trained sft: the same run as an sft one, not as a dpo one
    old = {k: v for k, v in before.items() if k != "method"}
    assert run_difference(old, before) is None
    assert run_difference(old, {**before, "method": "dpo"}) == ("method", "sft", "dpo")


def test_list_checkpoints_reads_each_trainer_state(tmp_path, tok):
    m = tiny_model(len(tok))
    for step, epoch in ((5, 1.0), (10, 2.000004)):
        save(m, tmp_path / f"checkpoint-{step}", tok)
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"epoch": epoch}))
    assert list_checkpoints(tmp_path) == [{"step": 5, "epoch": 1.0}, {"step": 10, "epoch": 2.0}]


# -- finding checkpoints ------------------------------------------------------------------------


def test_a_trainer_run_is_found_in_step_order(trainer_run):
    run, _ = trainer_run
    got = find_checkpoints(run)
    assert [(c.run, c.step, c.path, c.kind) for c in got] == [
        ("r1", 10, run / "checkpoint-10", "full"),
        ("r1", 20, run / "checkpoint-20", "full"),
        ("r1", 25, run, "full"),
    ]
    assert {c.run for c in find_checkpoints(str(run), run_name="lr=1e-5")} == {"lr=1e-5"}


def test_the_final_model_step(tmp_path, tok):
    m = tiny_model(len(tok))
    # no trainer_state.json in the run dir: the last checkpoint's global_step; same step -> the checkpoint is kept
    a = tmp_path / "a"
    save(m, a / "checkpoint-5", tok, global_step=5)
    save(m, a / "checkpoint-20", tok, global_step=20)
    save(m, a, tok)
    assert [(c.step, c.path.name) for c in find_checkpoints(a)] == [(5, "checkpoint-5"), (20, "checkpoint-20")]
    # no trainer state anywhere: the last checkpoint's step + 1
    b = tmp_path / "b"
    save(m, b / "checkpoint-7", tok)
    save(m, b, tok)
    assert [c.step for c in find_checkpoints(b)] == [7, 8]
    # a plain model folder: one checkpoint, step 0
    c = save(m, tmp_path / "c", tok)
    assert [(x.step, x.path, x.kind) for x in find_checkpoints(c)] == [(0, c, "full")]


def test_gguf_steps_from_their_names(tmp_path):
    for name in ("r-step30.gguf", "model-checkpoint-40.gguf", "final-50.Q4_1.gguf", "z_60.F16.gguf"):
        (tmp_path / name).write_bytes(EMPTY_GGUF)
    got = find_checkpoints(tmp_path, run_name="g")
    assert [(c.step, c.gguf_file, c.kind, c.path) for c in got] == [
        (30, "r-step30.gguf", "gguf", tmp_path),
        (40, "model-checkpoint-40.gguf", "gguf", tmp_path),
        (50, "final-50.Q4_1.gguf", "gguf", tmp_path),
        (60, "z_60.F16.gguf", "gguf", tmp_path),
    ]
    assert got[0].location == tmp_path / "r-step30.gguf"
    other = tmp_path / "other"
    other.mkdir()
    for name in ("SmolLM2-135M-Instruct.Q4_1.gguf", "zeta.gguf"):  # no stand-alone number: their order
        (other / name).write_bytes(EMPTY_GGUF)
    assert [(c.step, c.gguf_file) for c in find_checkpoints(other)] == [(0, "SmolLM2-135M-Instruct.Q4_1.gguf"), (1, "zeta.gguf")]


def test_a_gguf_file_in_a_checkpoint_folder(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "model.Q8_0.gguf").write_bytes(EMPTY_GGUF)
    [c] = find_checkpoints(tmp_path)
    assert (c.step, c.kind, c.path, c.gguf_file) == (3, "gguf", tmp_path / "checkpoint-3", "model.Q8_0.gguf")


def _files(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"{}")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, r"{d}: no checkpoints \(expected checkpoint-<step>/ folders, a model folder, LoRA adapters or \.gguf files\)"),
        (lambda d: (d / "checkpoint-1").mkdir(), r"{d}/checkpoint-1: no model weights"),
        (lambda d: _files(d, "a-step10.gguf", "b-step10.gguf"), r"{d}: two checkpoints for step 10 \({d}/a-step10\.gguf and {d}/b-step10\.gguf\)"),
        (lambda d: _files(d / "checkpoint-2", "x.gguf", "y.gguf"), r"{d}/checkpoint-2: 2 \.gguf files \(x\.gguf, y\.gguf\)"),
        (lambda d: _files(d, "trainer_state.json", "config.json", "model.safetensors"), r"{d}/trainer_state.json: no global_step"),
    ],
)
def test_bad_run_directories(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(InputError, match=message.format(d=tmp_path)) as e:
        find_checkpoints(tmp_path)
    assert "\n" not in str(e.value)


def test_a_missing_run_directory(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/nope: run directory does not exist"):
        find_checkpoints(tmp_path / "nope")


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path, tok):
    run, folder, _ = pickle_run(tmp_path, tok)
    with pytest.raises(InputError) as e:
        find_checkpoints(run)
    assert str(e.value) == (
        f"{folder}: only pickle weights (pytorch_model.bin); premem loads safetensors only — pass --allow-pickle if you trust this file"
    )
    [c] = find_checkpoints(run, allow_pickle=True)
    assert (c.step, c.kind, c.path) == (4, "full", folder)


def test_a_lora_adapter_with_pickle_weights_only(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04N.")  # a pickle: never loaded here
    with pytest.raises(InputError, match=r"checkpoint-2: only pickle weights \(adapter_model.bin\)"):
        find_checkpoints(tmp_path)
    [c] = find_checkpoints(tmp_path, allow_pickle=True)
    assert (c.kind, c.base_model) == ("lora", "base")


# -- broken weight files: named when the run is found, before any work ------------------------


def _cut(path, size):
    os.truncate(path, size)


def _swap_two_tensors(index):
    doc = json.loads(index.read_text())
    names = list(doc["weight_map"])
    a, b = next((a, b) for a in names for b in names if doc["weight_map"][a] != doc["weight_map"][b])
    doc["weight_map"][a], doc["weight_map"][b] = doc["weight_map"][b], doc["weight_map"][a]
    index.write_text(json.dumps(doc))
    return a, doc["weight_map"][a]


@pytest.mark.parametrize("breakage", ["truncated", "cut in its header", "empty", "longer", "garbage", "missing",
                                      "index not json", "index without weight_map", "index maps a tensor elsewhere"])
def test_a_broken_shard_or_index_is_named_before_any_work(sharded_run, breakage):
    run, _ = sharded_run
    folder = run / "checkpoint-2"  # checkpoint-1 is intact: the check is not the first load's
    shard, index = shards(folder)[1], folder / "model.safetensors.index.json"
    size = shard.stat().st_size
    if breakage == "truncated":
        _cut(shard, size // 2)
        expected = f"{shard}: truncated: {size // 2:,} bytes where its header says {size:,}; the checkpoint was not fully written"
    elif breakage == "cut in its header":
        _cut(shard, 20)
        header = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
        expected = f"{shard}: truncated: 20 bytes, shorter than its own header ({header:,}); the checkpoint was not fully written"
    elif breakage == "empty":
        _cut(shard, 0)
        expected = f"{shard}: empty file (0 bytes); the checkpoint was not fully written"
    elif breakage == "longer":
        with shard.open("ab") as f:
            f.write(b"\0" * 8)
        expected = f"{shard}: {size + 8:,} bytes where its header says {size:,}: not a valid safetensors file"
    elif breakage == "garbage":
        shard.write_bytes(b"\xff" * size)
        expected = f"{shard}: not a readable safetensors file (Error while deserializing header: header too large)"
    elif breakage == "missing":
        held = sum(1 for f in json.loads(index.read_text())["weight_map"].values() if f == shard.name)
        shard.unlink()
        expected = f"{index}: names {shard.name}, which is missing ({held} of the model's tensors are in it)"
    elif breakage == "index not json":
        index.write_text(index.read_text()[:50])
        expected = f"{index}: not a readable weight index ("
    elif breakage == "index without weight_map":
        index.write_text(json.dumps({"metadata": {}}))
        expected = f"{index}: not a weight index (expected a weight_map from tensor names to file names)"
    else:
        tensor, file = _swap_two_tensors(index)
        expected = f"{index}: maps {tensor} to {file}, which does not hold it"
    with pytest.raises(InputError) as e:
        find_checkpoints(run)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


@needs_peft
def test_a_broken_lora_adapter_or_base_is_named(lora_run, tmp_path):
    root, _ = lora_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    adapter = run / "checkpoint-9" / "adapter_model.safetensors"
    _cut(adapter, adapter.stat().st_size - 1)
    with pytest.raises(InputError, match=rf"^{adapter}: truncated: [\d,]+ bytes where its header says [\d,]+;"):
        find_checkpoints(run)
    _cut(adapter, 0)
    with pytest.raises(InputError, match=rf"^{adapter}: empty file \(0 bytes\)"):
        find_checkpoints(run)
    shutil.rmtree(run / "checkpoint-9")
    base = tmp_path / "base"  # the base every checkpoint is loaded on: checked too
    shutil.copytree(root / "base", base)
    _cut(base / "model.safetensors", 100)
    with pytest.raises(InputError, match=rf"^{base}/model.safetensors: truncated: 100 bytes"):
        find_checkpoints(run, base_model=str(base))


def test_broken_gguf_files_are_named(tmp_path, gguf_run, monkeypatch):
    run, _, _ = gguf_run
    (tmp_path / "a-step1.gguf").write_bytes(b"")
    with pytest.raises(InputError, match=rf"^{tmp_path}/a-step1.gguf: empty file \(0 bytes\)$"):
        find_checkpoints(tmp_path)
    (tmp_path / "a-step1.gguf").write_bytes(b"not a gguf file")
    monkeypatch.setattr(runs, "_has", lambda package: package != "gguf")  # without gguf: the magic number at least
    with pytest.raises(InputError, match=r"a-step1.gguf: not a GGUF file \(it does not start with GGUF\)$"):
        find_checkpoints(tmp_path)


@needs_gguf
def test_a_truncated_gguf_file_is_named(tmp_path, gguf_run):
    run, _, _ = gguf_run
    good = run / "tiny-step100.F32.gguf"
    cut = tmp_path / good.name
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 64])
    with pytest.raises(InputError, match=rf"^{cut}: not a readable GGUF file, cut short or corrupt \("):
        find_checkpoints(tmp_path)


def test_pickle_weights_are_checked_for_emptiness_only(tmp_path, tok):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    tiny_model(len(tok)).config.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match=rf"^{folder}/pytorch_model.bin: empty file \(0 bytes\)"):
        find_checkpoints(tmp_path, allow_pickle=True)
