"""A tiny Llama and 40 synthetic GSM8K-form rows, built once per test session (a few seconds).

The model is left at its random initialisation: finetuning it on the rows must lower the
loss of their gold targets, which the tests check. Every run uses one torch thread: on a
shared 2-core machine two threads spin-wait on each other.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from premem.train.config import TrainConfig

N_ROWS = 40
NAMES = ["Tom", "Ann", "Raj", "Mia", "Leo", "Zoe", "Sam", "Ivy"]
THINGS = ["apples", "pens", "books", "cards", "shells", "coins"]


def gsm8k_rows(n: int = N_ROWS, seed: int = 0) -> list[dict]:
    """Word problems in GSM8K's form: a question, and reasoning ending '#### <answer>'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        a, b = rng.randint(2, 20), rng.randint(2, 9)
        question = f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?"
        answer = f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\n#### {a + b}"
        rows.append({"question": question, "answer": answer})
    return rows


@pytest.fixture(scope="session")
def gsm8k_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows()))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny Llama (hidden 64, 2 layers) with a tokenizer trained on the rows' text."""
    from premem.train.tiny import build_tiny_model

    texts = [r["question"] + "\nAnswer: " + r["answer"] + "\nDone." for r in gsm8k_rows()]
    return build_tiny_model(texts, tmp_path_factory.mktemp("model") / "tiny", vocab_size=512, hidden_size=64,
                            layers=2, heads=2, max_position_embeddings=256, seed=0)


def make_config(model: Path, data: Path, out: str | Path, **overrides) -> TrainConfig:
    """Brief training of the tiny model: 40 examples, batches of 8 (5 steps an epoch), one thread."""
    values = dict(model=str(model), out=str(out), lr=3e-3, epochs=2, batch_size=8, max_length=256, threads=1,
                  progress=False)
    values.update(overrides)
    cfg = TrainConfig(**values)
    cfg.train.path = str(data)
    return cfg


@pytest.fixture
def config(tiny_model, gsm8k_file, tmp_path):
    """make_config for this test's tmp dir: config(**overrides)."""
    defaults = {"model": tiny_model, "data": gsm8k_file, "out": tmp_path / "run"}
    return lambda **overrides: make_config(**{**defaults, **overrides})


def gold_nll(model_dir: Path, data: Path) -> float:
    """Mean per-token NLL of the gold targets (paper template), as premem score measures perplexity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, n = 0.0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for line in data.read_text().splitlines():
            row = json.loads(line)
            p = tokenizer(row["question"] + "\nAnswer:")["input_ids"]
            t = tokenizer(" " + row["answer"] + "\nDone.", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p + t])
            with torch.no_grad():
                logprobs = model(ids).logits[0, :-1].log_softmax(-1)
            picked = logprobs[len(p) - 1 :].gather(1, ids[0, len(p) :, None])
            total -= picked.sum().item()
            n += len(t)
    finally:
        torch.set_num_threads(threads)
    return total / n
