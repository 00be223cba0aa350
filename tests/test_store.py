import multiprocessing as mp

import pandas as pd
import pytest

from premem.errors import InputError
from premem.store import ScoreStore
from tests.conftest import PAPER_STORE, synthetic_tables


def test_paper_store_reads_and_validates():
    store = ScoreStore(PAPER_STORE)
    assert len(store.read("runs")) == 13
    assert len(store.read("train_scores")) == 381123
    assert len(store.read("test_scores")) == 67269


def test_write_read_roundtrip(tmp_path):
    runs, train, _ = synthetic_tables()
    store = ScoreStore(tmp_path / "s", create=True)
    store.write("train_scores", train)
    pd.testing.assert_frame_equal(store.read("train_scores"), train)
    assert list(store.root.glob("*.tmp")) == [] and list(store.root.glob(".*.tmp")) == []


def test_missing_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ScoreStore(tmp_path / "nope")


def test_runs_derived_when_runs_table_absent(tmp_path):
    _, train, _ = synthetic_tables(n_runs=3)
    store = ScoreStore(tmp_path, create=True)
    store.write("train_scores", train)
    assert store.runs()["run"].tolist() == ["run0", "run1", "run2"]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda df: df.drop(columns=["perplexity"]), "missing required column 'perplexity'"),
        (lambda df: df.assign(n_samples=df.n_samples.where(df.index != 7, -1)), "row 7: n_samples is negative"),
        (lambda df: df.assign(n_correct=df.n_correct.where(df.index != 3, 6)), r"row 3: n_correct \(6\) > n_samples \(5\)"),
        (lambda df: pd.concat([df, df.iloc[[5]]], ignore_index=True), "duplicate key"),
        (lambda df: df.assign(step=df.step.astype(float).where(df.index != 2, 1.5)), "row 2: step must be an integer"),
        (lambda df: df.assign(perplexity=df.perplexity.where(df.index != 4, 0.0)), "row 4: perplexity must be a positive"),
        (lambda df: df.assign(run=df.run.where(df.index != 1, None)), "row 1: run is empty"),
    ],
)
def test_bad_tables_are_rejected_with_file_and_row(tmp_path, corrupt, message):
    _, train, _ = synthetic_tables()
    bad = corrupt(train)
    # on read: a bad file dropped into a store
    (tmp_path / "s").mkdir()
    bad.to_parquet(tmp_path / "s" / "train_scores.parquet")
    with pytest.raises(InputError, match=message) as e:
        ScoreStore(tmp_path / "s").read("train_scores")
    assert "train_scores.parquet" in str(e.value) and "\n" not in str(e.value)
    # on write: nothing is written
    store = ScoreStore(tmp_path / "w", create=True)
    with pytest.raises(InputError, match=message):
        store.write("train_scores", bad)
    assert not store.has("train_scores")


def test_failed_write_keeps_the_old_table(tmp_path):
    _, train, _ = synthetic_tables()
    store = ScoreStore(tmp_path, create=True)
    store.write("train_scores", train)
    with pytest.raises(InputError):
        store.write("train_scores", train.drop(columns=["n_correct"]))
    pd.testing.assert_frame_equal(store.read("train_scores"), train)


def test_append_is_idempotent_and_keeps_first_rows(tmp_path):
    _, train, _ = synthetic_tables()
    first, second = train.iloc[:100], train.iloc[60:]
    store = ScoreStore(tmp_path, create=True)
    assert store.append("train_scores", first) == 100
    assert store.append("train_scores", second) == len(train) - 100
    assert store.append("train_scores", second) == 0  # a resumed job re-appending: no-op
    pd.testing.assert_frame_equal(store.read("train_scores"), train.sort_values(["run", "step", "example_id"], ignore_index=True))
    changed = train.iloc[[0]].assign(n_correct=0)
    assert store.append("train_scores", changed) == 0
    assert store.read("train_scores").iloc[0]["n_correct"] == train.iloc[0]["n_correct"]
    assert store.append("train_scores", changed, replace=True) == 1
    got = store.read("train_scores")
    assert len(got) == len(train) and got.iloc[0]["n_correct"] == 0


def _append_worker(root, rows):
    store = ScoreStore(root)
    for i in range(0, len(rows), 10):
        store.append("train_scores", rows.iloc[i : i + 10])


def test_two_writers_on_one_store_lose_nothing(tmp_path):
    _, train, _ = synthetic_tables(n_runs=2, n_steps=2, n_examples=50)
    store = ScoreStore(tmp_path, create=True)
    halves = train.iloc[::2], train.iloc[1::2]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_worker, args=(str(tmp_path), h)) for h in halves]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    pd.testing.assert_frame_equal(store.read("train_scores"), train.sort_values(["run", "step", "example_id"], ignore_index=True))


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    _, train, _ = synthetic_tables(n_runs=1, n_steps=1, n_examples=2)
    store = ScoreStore(tmp_path, create=True)
    store.write("train_scores", train)
    mask = os.umask(0)
    os.umask(mask)
    assert store.path("train_scores").stat().st_mode & 0o777 == 0o666 & ~mask
