"""Shared fixtures: paths to the shared data, and small score stores built in tmp dirs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The shared data sits beside the repository (../shared/data); PREMEM_SHARED_DATA overrides.
SHARED = Path(os.environ.get("PREMEM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
PAPER_STORE = SHARED / "paper_runs" / "gsm8k"


SHARED_MISSING = (f"needs the shared data ({SHARED} is missing): set PREMEM_SHARED_DATA to the directory holding "
                  "gsm8k/, math500/ and paper_runs/ (see the README)")
# for a module whose every test reads the shared data
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_MISSING)


def shared_beside_repo() -> None:
    """Skip unless the shared data sits at ../shared/data, where configs/*.yaml name it themselves
    (PREMEM_SHARED_DATA cannot move a path written in a config)."""
    beside = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not beside.is_dir():
        pytest.skip(f"needs the shared data at {beside}, where configs/data/*.yaml read it")


def shared(*parts: str) -> Path:
    """A path in the shared data, or a skip that says where the data should be and how to point at it.

    Only the tests that read GSM8K, MATH-500 or the paper's runs call this; every other test runs
    without the shared data. In CI and in the project's sessions the data is always there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(SHARED_MISSING.replace(str(SHARED), str(path)))
    return path


def synthetic_tables(n_runs: int = 4, n_steps: int = 3, n_examples: int = 20, seed: int = 0):
    """A store whose runs differ in skill; test accuracy tracks pre-memorization accuracy."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for r in range(n_runs):
        skill = 0.2 + 0.6 * r / max(n_runs - 1, 1)
        for s in range(1, n_steps + 1):
            for i in range(n_examples):
                correct = int(rng.binomial(5, min(1.0, skill + 0.1 * s)))
                # perplexity falls with training: later checkpoints memorize
                ppl = 1.0 + 0.5 * np.exp(-1.5 * s) * (1 + rng.random())
                train.append((f"run{r}", 10 * s, i, 5, correct, ppl))
                test.append((f"run{r}", 10 * s, i, 5, int(rng.binomial(5, skill))))
    train = pd.DataFrame(train, columns=["run", "step", "example_id", "n_samples", "n_correct", "perplexity"])
    test = pd.DataFrame(test, columns=["run", "step", "example_id", "n_samples", "n_correct"])
    runs = pd.DataFrame({"run": [f"run{r}" for r in range(n_runs)], "lr": [1e-5 * (r + 1) for r in range(n_runs)]})
    return runs, train, test


@pytest.fixture
def synthetic_store(tmp_path):
    from premem.store import ScoreStore

    store = ScoreStore(tmp_path / "store", create=True)
    runs, train, test = synthetic_tables()
    store.write("runs", runs)
    store.write("train_scores", train)
    store.write("test_scores", test)
    return store


@pytest.fixture(scope="module")
def local_ray():
    """This process's local Ray, for a test module that runs actors: its own RAY_TMPDIR when this module
    starts it, shut down (and the kept pool released) after; never `ray stop`, which ends every Ray here."""
    import ray

    from premem.execution import ray_init, release

    if ray.is_initialized():
        yield
        release()
        return
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    ray_init(None)
    yield
    release()
    ray.shutdown()
    os.environ.pop("RAY_TMPDIR") if saved is None else os.environ.update(RAY_TMPDIR=saved)
    shutil.rmtree(temp, ignore_errors=True)
