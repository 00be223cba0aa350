"""A real TRL SFT run of the tiny model (tests/train's), the data it trains on, and the watch settings the tests
share: small enough that scoring a checkpoint takes seconds on one actor."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from premem.data import DataConfig
from premem.execution import BackendOptions, ExecConfig
from premem.sampling.backend import SamplingParams
from premem.store import ScoreStore
from premem.watch import WatchConfig
from tests.train.conftest import gsm8k_file, gsm8k_rows, make_config, tiny_model  # noqa: F401  (fixtures)

TABLES = ("train_scores", "test_scores", "samples", "datasets", "runs")
STEPS = [5, 10, 15]  # 40 rows in batches of 8 for 3 epochs, a checkpoint per epoch


@pytest.fixture(scope="session")
def test_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(8, seed=1)))
    return path


def train_settings(model: Path, data: Path, out: Path) -> list[str]:
    """`premem train` arguments for the run every test watches (make_config's settings, 3 epochs)."""
    return ["train", "--model", str(model), "--train", str(data), "--out", str(out), "lr=3e-3", "epochs=3",
            "batch_size=8", "max_length=256", "threads=1", "progress=false"]


@pytest.fixture(scope="module")
def trained(tiny_model, gsm8k_file, tmp_path_factory) -> Path:
    """A finished run: checkpoint-5, -10, -15 and premem_run.json finished (trained in this process)."""
    from premem.train.api import train

    return train(make_config(tiny_model, gsm8k_file, tmp_path_factory.mktemp("trained") / "run", epochs=3))


def watch_config(runs, store, train: Path, test: Path, **kw) -> WatchConfig:
    return WatchConfig(runs=[str(r) for r in runs], store=str(store), train=DataConfig(path=str(train)),
                       test=DataConfig(path=str(test)), sampling=SamplingParams(samples=2, max_new_tokens=12),
                       exec=ExecConfig(options=BackendOptions(threads=1, batch_size=8), progress=False),
                       shard_size=10, poll=0.2, idle=300.0, **kw)


def tables(store_dir: Path, drop: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """Every table of a store, sorted by its key (drop: columns left out, e.g. where a run directory lies)."""
    store = ScoreStore(store_dir)
    out = {}
    for t in TABLES:
        df = store.read(t)
        key = [c for c in ("run", "step", "split", "example_id", "sample") if c in df.columns]
        out[t] = df.sort_values(key, ignore_index=True).drop(columns=[c for c in drop if c in df.columns])
    return out


def assert_same_tables(a: dict, b: dict) -> None:
    for t in TABLES:
        pd.testing.assert_frame_equal(a[t], b[t], check_exact=True, obj=t)
