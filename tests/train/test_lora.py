"""premem train with `lora:`: LoRA adapters trained through TRL's peft_config, checkpoints that hold adapters
premem finds on their base model, the settings checked before any work, and DPO with adapters (the reference:
the adapters switched off). Serving them on vLLM: tests/sampling/test_vllm_lora.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from premem.cli import main
from premem.config import load_config
from premem.errors import InputError
from premem.execution import BackendOptions
from premem.models import materialize
from premem.runs import RUN_INFO, find_checkpoints
from premem.train.api import train
from premem.train.config import LoraConfig, TrainConfig, check_config
from tests.train.conftest import gold_nll, make_config

ROOT = Path(__file__).resolve().parents[2]
LORA = LoraConfig(rank=8, alpha=16)


@pytest.fixture(scope="module")
def lora_run(tiny_model, gsm8k_file, tmp_path_factory) -> Path:
    """Two epochs of LoRA adapters (rank 8, every linear layer) on the tiny model, a checkpoint per epoch."""
    return train(make_config(tiny_model, gsm8k_file, tmp_path_factory.mktemp("lora") / "run", lr=1e-2, lora=LORA))


def test_checkpoints_hold_adapters_on_the_base_models_absolute_path(lora_run, tiny_model):
    found = find_checkpoints(lora_run)
    assert [(c.step, c.kind) for c in found] == [(5, "lora"), (10, "lora")]
    for c in found:
        names = {p.name for p in c.path.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"} <= names
        assert "model.safetensors" not in names  # the adapter only: the base stays where it is
        config = json.loads((c.path / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"], config["modules_to_save"]) == (8, 16, None)
        # every linear layer of the tiny Llama but the output layer (peft writes their full names)
        assert {m.rsplit(".", 1)[-1] for m in config["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"}
        assert c.base_model == str(tiny_model.resolve())  # found from any directory, as scoring reads it


def test_the_run_record_says_lora(lora_run):
    info = json.loads((lora_run / RUN_INFO).read_text())
    assert info["lora"] == {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"}
    assert info["finished"] and [c["step"] for c in info["checkpoints"]] == [5, 10]


def test_the_adapters_lower_the_gold_target_loss(lora_run, tiny_model, gsm8k_file, tmp_path):
    """Merged on their base (as the HF backend loads them), the adapters fit the training targets better."""
    last = find_checkpoints(lora_run)[-1]
    merged = materialize(last, tmp_path / "cache", BackendOptions())
    assert gold_nll(merged, gsm8k_file) < gold_nll(tiny_model, gsm8k_file) - 0.3  # 6.0 -> 5.5 nats a token


def test_a_finished_lora_run_is_not_reused_as_a_full_one_nor_with_another_rank(lora_run, tiny_model, gsm8k_file):
    for lora, before, after in ((None, "'rank': 8", "not None"), (LoraConfig(rank=4, alpha=16), "'rank': 8",
                                                                    "'rank': 4")):
        with pytest.raises(InputError, match="a finished run with lora") as e:
            train(make_config(tiny_model, gsm8k_file, lora_run, lr=1e-2, lora=lora))
        assert before in str(e.value) and after in str(e.value)


@pytest.mark.parametrize("lora, message", [
    (LoraConfig(rank=0), "lora.rank: expected a value at least 1, got 0"),
    (LoraConfig(rank=2.5), "lora.rank: expected an integer, got 2.5"),
    (LoraConfig(alpha=0), "lora.alpha: expected a value above 0, got 0"),
    (LoraConfig(dropout=1.0), "lora.dropout: expected a value below 1, got 1.0"),
    (LoraConfig(target_modules="q_proj"), "lora.target_modules: expected 'all-linear' or a list of module names"),
    (LoraConfig(target_modules=[]), "lora.target_modules: expected 'all-linear' or a non-empty list"),
    (LoraConfig(target_modules=["q_proj", "q_proj"]), "lora.target_modules: ['q_proj', 'q_proj'] names a module twice"),
])
def test_bad_lora_settings_name_their_field_before_any_work(config, lora, message, tmp_path):
    with pytest.raises(InputError) as e:
        train(config(lora=lora))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_target_modules_the_model_lacks_are_one_line_naming_the_setting(config, tmp_path):
    with pytest.raises(InputError) as e:
        train(config(lora=LoraConfig(target_modules=["attention_dense"])))
    assert str(e.value).startswith("lora.target_modules: ['attention_dense'] does not fit")
    assert "\n" not in str(e.value)


def test_dpo_trains_adapters_too(config, tmp_path):
    """DPO trains adapters (its reference, with no ref_model: the model with the adapters off, no second copy)."""
    from premem.data.arith import ArithConfig, preference_pairs, write_jsonl

    pairs = preference_pairs(ArithConfig(n_train=32, n_test=0, max_number=20, max_operand=5, steps=(2, 2)), 8, seed=0)
    data = write_jsonl(pairs, tmp_path / "pairs.jsonl", keys=("prompt", "chosen", "rejected"))
    run = train(config(data=data, method="dpo", lr=1e-3, epochs=1, lora=LoraConfig(rank=4, alpha=8)))
    (c,) = find_checkpoints(run)
    assert c.kind == "lora" and json.loads((run / RUN_INFO).read_text())["lora"]["rank"] == 4


def test_the_example_config_trains_adapters():
    cfg = check_config(load_config(TrainConfig, ROOT / "configs/train/tiny_lora.yaml"))
    assert cfg.lora == LoraConfig(rank=16, alpha=32.0, dropout=0.0, target_modules="all-linear")
    assert cfg.sweep is None


def test_cli_lora_override_trains_adapters(tiny_model, gsm8k_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", f"model={tiny_model}", f"train.path={gsm8k_file}", f"out={out}", "epochs=1",
                 "batch_size=20", "max_length=256", "threads=1", "progress=false", "lora.rank=4"])
    assert code == 0, capsys.readouterr().err
    assert [c.kind for c in find_checkpoints(out)] == ["lora"]
