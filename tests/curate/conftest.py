"""Small stores and datasets for the curation tests, built in tmp dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from premem.curate import CurationInput
from premem.data import Example, ExampleSet
from premem.store import ScoreStore
from tests.conftest import synthetic_tables

COLUMNS = ["run", "step", "example_id", "n_samples", "n_correct", "perplexity"]


def gsm8k_rows(n: int) -> list[dict]:
    return [{"question": f"Ann has {i} pens and buys 2. How many?",
             "answer": f"{i} + 2 = <<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"} for i in range(n)]


def curation_input(rows: list[tuple], runs: pd.DataFrame | None = None, tau: float | None = -2.3) -> CurationInput:
    """A CurationInput over train-score rows (run, step, example_id, n_samples, n_correct, perplexity)."""
    train = pd.DataFrame(rows, columns=COLUMNS)
    runs = runs if runs is not None else pd.DataFrame({"run": sorted(set(train["run"]))})
    n = int(train["example_id"].max()) + 1
    examples = [Example(i, r["question"], r["answer"], str(i + 2)) for i, r in enumerate(gsm8k_rows(n))]
    return CurationInput(ExampleSet("mem.jsonl", "gsm8k", "gsm8k", examples), train, runs, list(runs["run"]), tau)


@pytest.fixture
def small(tmp_path) -> dict[str, Path]:
    """A 20-example GSM8K-form JSONL and a 4-run store that scored it (ids 0..19)."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(20)))
    store = ScoreStore(tmp_path / "store", create=True)
    runs, train, test = synthetic_tables(n_runs=4, n_steps=3, n_examples=20)
    store.write("runs", runs)
    store.write("train_scores", train)
    store.write("test_scores", test)
    return {"data": data, "store": store.root, "root": tmp_path}
