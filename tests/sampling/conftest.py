"""A tiny Llama trained briefly on GSM8K, built once per test session (~30 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import shared

N_TEXTS = 1000  # GSM8K training examples the tokenizer and the model learn from
TRAIN_STEPS = 300  # enough for a peaked next-token distribution: greedy choices are not near-ties


def paper_prompt(question: str) -> str:
    return question + "\nAnswer:"  # the paper's template (premem.data.templates.PaperTemplate)


def paper_target(solution: str) -> str:
    return " " + solution + "\nDone."


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A model directory (config, safetensors, tokenizer) that transformers and vLLM both load."""
    from premem.train.tiny import build_tiny_model, pretrain_briefly

    lines = shared("gsm8k", "train.jsonl").read_text().splitlines()[:N_TEXTS]
    rows = [json.loads(line) for line in lines]
    texts = [paper_prompt(r["question"]) + paper_target(r["answer"]) for r in rows]
    path = build_tiny_model(texts, tmp_path_factory.mktemp("tiny") / "llama", seed=0)
    # one thread: on a shared machine two would spin-wait on each other (5-25x slower)
    pretrain_briefly(path, texts, steps=TRAIN_STEPS, lr=3e-3, seed=0, threads=1)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    """The tiny Llama as a checkpoint, as premem.runs finds one."""
    from premem.runs import Checkpoint

    return Checkpoint(run="tiny", step=0, path=tiny_llama_dir, kind="full")
