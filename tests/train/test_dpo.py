"""premem train method=dpo: DPO on the tiny benchmark's preference pairs, checkpoints and the run
record as SFT leaves them, a margin that rises against the reference, the extend recipe (SFT on
both responses, then DPO), and bad preference data or settings as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from premem.cli import main
from premem.data import load_example_set
from premem.data.arith import ArithConfig, generate, preference_pairs, sft_both, write_jsonl
from premem.errors import InputError
from premem.runs import RUN_INFO, find_checkpoints
from premem.train import api
from premem.train.api import train
from premem.train.config import TrainConfig, check_config
from premem.train.dpo import build_dpo_trainer
from premem.train.rows import render_rows
from premem.train.trainer import load_tokenizer

ARITH = ArithConfig(n_train=64, n_test=0, max_number=20, max_operand=5, steps=(2, 2), seed=0)
N_PAIRS = 16
PAIR_KEYS = ("prompt", "chosen", "rejected")


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return preference_pairs(ARITH, N_PAIRS, seed=0)


@pytest.fixture(scope="module")
def pairs_file(pairs, tmp_path_factory) -> Path:
    return write_jsonl(pairs, tmp_path_factory.mktemp("pairs") / "pairs.jsonl", keys=PAIR_KEYS)


@pytest.fixture(scope="module")
def arith_model(pairs, tmp_path_factory) -> Path:
    """A random tiny Llama whose tokenizer knows the benchmark's words (a few seconds)."""
    from premem.train.tiny import build_tiny_model

    texts = [p["prompt"] + "\nAnswer: " + p["chosen"] + "\nDone." for p in pairs]
    texts += [r["question"] + "\nAnswer: " + r["answer"] + "\nDone." for r in generate(ARITH)[0]]
    return build_tiny_model(texts, tmp_path_factory.mktemp("model") / "tiny", vocab_size=384, hidden_size=64,
                            layers=2, heads=2, max_position_embeddings=256, seed=0)


def dpo_config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    """DPO on the 16 pairs in batches of 8 (2 steps an epoch), one thread."""
    values = dict(model=str(model), out=str(out), method="dpo", lr=1e-3, epochs=2, batch_size=8, max_length=256,
                  threads=1, progress=False)
    values.update(overrides)
    cfg = TrainConfig(**values)
    cfg.train.path = str(data)
    return cfg


@pytest.fixture(scope="module")
def dpo_run(arith_model, pairs_file, tmp_path_factory) -> Path:
    return train(dpo_config(arith_model, pairs_file, tmp_path_factory.mktemp("dpo") / "run"))


def margins(model_dir: Path, pairs: list[dict]) -> list[float]:
    """log π(chosen|x) − log π(rejected|x) per pair, each response as the paper template's target + eos."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logp(prompt: str, response: str) -> float:
        p = tokenizer(prompt + "\nAnswer:")["input_ids"]
        t = tokenizer(" " + response + "\nDone.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p + t])
        with torch.no_grad():
            logprobs = model(ids).logits[0, :-1].log_softmax(-1)
        return logprobs[len(p) - 1 :].gather(1, ids[0, len(p) :, None]).sum().item()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [logp(r["prompt"], r["chosen"]) - logp(r["prompt"], r["rejected"]) for r in pairs]
    finally:
        torch.set_num_threads(threads)


# -- a DPO run ---------------------------------------------------------------------------------


def test_checkpoints_as_sft_saves_them(dpo_run):
    checkpoints = find_checkpoints(dpo_run)
    assert [c.step for c in checkpoints] == [2, 4]  # 16 pairs in batches of 8, two epochs
    for c in checkpoints:
        names = {p.name for p in c.path.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"} <= names
        assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth"}


def test_the_run_record_says_dpo(dpo_run, arith_model, pairs_file):
    info = json.loads((dpo_run / RUN_INFO).read_text())
    assert info["method"] == "dpo" and info["beta"] == 0.1
    assert info["ref_model"] == str(arith_model) and info["ref_model_path"] == str(arith_model.resolve())
    assert info["n_train"] == N_PAIRS and info["train_example_ids"] == list(range(N_PAIRS))
    assert info["checkpoints"] == [{"step": 2, "epoch": 1.0}, {"step": 4, "epoch": 2.0}]
    assert info["finished"] is True and info["workers"][0]["steps"] == 4
    assert info["train_path"] == str(pairs_file)


def test_dpo_raises_the_margin_over_the_reference(dpo_run, arith_model, pairs):
    before = margins(arith_model, pairs)
    after = margins(find_checkpoints(dpo_run)[-1].path, pairs)
    gains = [a - b for a, b in zip(after, before)]
    assert sum(gains) / len(gains) > 1.0, gains  # nats; the DPO loss is -log sigmoid(beta * gain)
    assert sum(g > 0 for g in gains) >= 0.75 * len(gains), gains  # four steps: most pairs, not all


def test_a_finished_dpo_run_is_reused_only_with_the_same_settings(dpo_run, arith_model, pairs_file, monkeypatch):
    monkeypatch.setattr(api, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert train(dpo_config(arith_model, pairs_file, dpo_run)) == dpo_run
    with pytest.raises(InputError, match="finished run with beta 0.1, not 0.5"):
        train(dpo_config(arith_model, pairs_file, dpo_run, beta=0.5))
    with pytest.raises(InputError, match="finished run with method 'dpo', not 'sft'"):
        train(dpo_config(arith_model, pairs_file, dpo_run, method="sft"))


def test_the_pairs_are_tokenized_as_premem_scores_targets(arith_model, pairs_file, pairs, tmp_path):
    cfg = check_config(dpo_config(arith_model, pairs_file, tmp_path / "unused"))
    tokenizer = load_tokenizer(cfg)
    data = load_example_set(cfg.train)
    rows = render_rows(data, data.examples, "paper", tokenizer, 256, preference=True)
    prepared = build_dpo_trainer(cfg, tmp_path / "unused", rows).train_dataset
    assert len(prepared) == N_PAIRS
    for pair, row in zip(pairs, prepared):
        assert row["prompt_ids"] == tokenizer(pair["prompt"] + "\nAnswer:")["input_ids"]
        for key in ("chosen", "rejected"):
            target = tokenizer(" " + pair[key] + "\nDone.", add_special_tokens=False)["input_ids"]
            assert row[f"{key}_ids"] == target + [tokenizer.eos_token_id]


# -- the extend recipe: SFT on both responses, then DPO ------------------------------------------


def test_extend_sft_on_both_then_dpo(arith_model, pairs, tmp_path):
    both = write_jsonl(sft_both(pairs), tmp_path / "both.jsonl")
    stage1 = dpo_config(arith_model, both, tmp_path / "sft", method="sft", lr=3e-3, epochs=2)
    sft_run = train(stage1)
    assert json.loads((sft_run / RUN_INFO).read_text())["n_train"] == 2 * N_PAIRS
    start = find_checkpoints(sft_run)[-1].path  # 32 rows in batches of 8: step 8
    assert start.name == "checkpoint-8"

    pairs_path = write_jsonl(pairs, tmp_path / "pairs.jsonl", keys=PAIR_KEYS)
    dpo_run = train(dpo_config(start, pairs_path, tmp_path / "dpo", epochs=1))
    info = json.loads((dpo_run / RUN_INFO).read_text())
    assert info["method"] == "dpo" and info["ref_model"] == str(start)  # the reference: the SFT checkpoint
    assert [c.step for c in find_checkpoints(dpo_run)] == [2]
    gains = [a - b for a, b in zip(margins(find_checkpoints(dpo_run)[-1].path, pairs), margins(start, pairs))]
    assert sum(gains) > 0, gains


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"chosen": ""}, "row 3 (line 4): field 'chosen' is missing or empty"),
        ({"rejected": "  "}, "row 3 (line 4): field 'rejected' is missing or empty"),
        ({"rejected": None}, "row 3 (line 4): field 'rejected' is missing or empty"),
        ("same", "row 3 (line 4): fields 'chosen' and 'rejected' hold the same response"),
    ],
)
def test_cli_bad_preference_row_exits_2_and_writes_nothing(bad, needle, arith_model, pairs, tmp_path, capsys):
    rows = [dict(r) for r in pairs[:6]]
    rows[3].update({"rejected": rows[3]["chosen"]} if bad == "same" else bad)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    code = main(["train", "--model", str(arith_model), "--train", str(data), "--out", str(out), "method=dpo",
                 "batch_size=2", "progress=false"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"premem: error: {data} ") and needle in err[0], err
    assert not out.exists()


def test_dpo_needs_preference_data(arith_model, tmp_path):
    data = write_jsonl(generate(ARITH)[0][:4], tmp_path / "gsm8k.jsonl")
    out = tmp_path / "run"
    with pytest.raises(InputError, match="method dpo trains on preference data .* this is gsm8k data"):
        train(dpo_config(arith_model, data, out))
    assert not out.exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "ppo"}, "method: unknown method 'ppo'; known: sft, dpo"),
        ({"beta": 0}, "beta: expected a value above 0"),
        ({"beta": "warm"}, "beta: expected a number"),
        ({"workers": 2}, "workers: method dpo trains in one process; set workers=1"),
        ({"ref_model": "/nonexistent/ref"}, "ref_model: /nonexistent/ref is not a local model directory"),
    ],
)
def test_bad_dpo_settings_name_their_field(overrides, message, arith_model, pairs_file, tmp_path):
    with pytest.raises(InputError, match=message):
        train(dpo_config(arith_model, pairs_file, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_a_reference_with_another_vocabulary_is_refused(arith_model, tiny_model, pairs_file, tmp_path):
    with pytest.raises(InputError, match=r"ref_model: .* has a vocabulary of \d+ tokens, the model \d+; the refer"):
        train(dpo_config(arith_model, pairs_file, tmp_path / "run", ref_model=str(tiny_model)))
    assert not (tmp_path / "run").exists()


def test_the_example_config_is_valid():
    from premem.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = check_config(load_config(TrainConfig, root / "configs" / "train" / "tiny_dpo.yaml"))
    assert cfg.method == "dpo" and cfg.beta > 0 and cfg.workers == 1
