import multiprocessing as mp

import pandas as pd
import pytest

from premem.errors import InputError
from premem.store import ScoreStore
from tests.conftest import shared, synthetic_tables


def test_paper_store_reads_and_validates():
    store = ScoreStore(shared("paper_runs", "gsm8k"))
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


# -- parts: resumable units of work ----------------------------------------------------------

KEY = ["run", "step", "example_id"]


def _sorted(df):
    return df.sort_values(KEY, ignore_index=True)


def test_parts_are_read_with_the_main_table_first_row_per_key_wins(tmp_path):
    _, train, _ = synthetic_tables()
    store = ScoreStore(tmp_path, create=True)
    store.write("train_scores", train.iloc[:100])
    overlap = train.iloc[60:150].assign(n_correct=0)  # keys 60..99 are in the main table already
    store.write_part("train_scores", "run=r.step=10.split=train.shard=00001", overlap)
    later = train.iloc[140:].assign(n_correct=1)  # keys 140..149 are in the first part too
    store.write_part("train_scores", "run=r.step=10.split=train.shard=00002", later)
    assert store.parts("train_scores") == ["run=r.step=10.split=train.shard=00001", "run=r.step=10.split=train.shard=00002"]
    assert store.has_part("train_scores", "run=r.step=10.split=train.shard=00001")
    assert not store.has_part("train_scores", "run=r.step=10.split=train.shard=00003")
    expected = pd.concat([train.iloc[:100], overlap.iloc[40:], later.iloc[10:]], ignore_index=True)
    pd.testing.assert_frame_equal(_sorted(store.read("train_scores")), _sorted(expected))


def test_a_store_of_parts_only_reads_and_writing_a_part_again_replaces_it(tmp_path):
    _, train, test = synthetic_tables(n_runs=1)
    store = ScoreStore(tmp_path, create=True)
    assert not store.has("test_scores")
    store.write_part("test_scores", "p1", test.iloc[:10])
    assert store.has("test_scores") and not store.path("test_scores").exists()
    store.write_part("test_scores", "p1", test.iloc[:10].assign(n_correct=0))  # a re-run shard
    got = store.read("test_scores")
    assert len(got) == 10 and (got["n_correct"] == 0).all()
    assert list((tmp_path / "parts" / "test_scores").iterdir()) == [tmp_path / "parts" / "test_scores" / "p1.parquet"]


def test_compact_merges_parts_and_is_idempotent(tmp_path):
    _, train, _ = synthetic_tables()
    store = ScoreStore(tmp_path, create=True)
    store.write("train_scores", train.iloc[:50])
    for i, start in enumerate(range(40, len(train), 30)):
        store.write_part("train_scores", f"shard={i:05d}", train.iloc[start : start + 35])
    before = _sorted(store.read("train_scores"))
    assert store.compact("train_scores") == len(train) - 50
    assert store.parts("train_scores") == []
    pd.testing.assert_frame_equal(store.read("train_scores"), _sorted(train))
    pd.testing.assert_frame_equal(before, _sorted(train))
    mtime = store.path("train_scores").stat().st_mtime_ns
    assert store.compact("train_scores") == 0  # nothing to do
    assert store.path("train_scores").stat().st_mtime_ns == mtime


def test_compact_without_a_main_table_writes_one(tmp_path):
    _, _, test = synthetic_tables(n_runs=1)
    store = ScoreStore(tmp_path, create=True)
    store.write_part("test_scores", "b", test.iloc[30:])
    store.write_part("test_scores", "a", test.iloc[:40])
    assert store.compact("test_scores") == len(test)
    pd.testing.assert_frame_equal(store.read("test_scores"), _sorted(test))


def test_a_crash_between_compacting_and_deleting_parts_loses_nothing(tmp_path, monkeypatch):
    import pathlib

    _, train, _ = synthetic_tables()
    store = ScoreStore(tmp_path, create=True)
    store.write("train_scores", train.iloc[:100])
    store.write_part("train_scores", "x1", train.iloc[80:200])
    store.write_part("train_scores", "x2", train.iloc[200:])
    real_unlink = pathlib.Path.unlink

    def crash(self, *args, **kwargs):
        if self.suffix == ".parquet" and "parts" in self.parts:
            raise OSError("killed")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", crash)
    with pytest.raises(OSError, match="killed"):
        store.compact("train_scores")
    monkeypatch.undo()
    # the main table holds everything; the parts are still there, and reading dedups them
    assert len(pd.read_parquet(store.path("train_scores"))) == len(train)
    assert store.parts("train_scores") == ["x1", "x2"]
    pd.testing.assert_frame_equal(_sorted(store.read("train_scores")), _sorted(train))
    mtime = store.path("train_scores").stat().st_mtime_ns
    assert store.compact("train_scores") == 0  # only removes the leftovers
    assert store.parts("train_scores") == [] and store.path("train_scores").stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(store.read("train_scores"), _sorted(train))


def test_write_replaces_a_table_with_its_parts_and_append_sees_parts(tmp_path):
    _, train, _ = synthetic_tables()
    store = ScoreStore(tmp_path, create=True)
    store.write_part("train_scores", "p", train.iloc[:30])
    assert store.append("train_scores", train.iloc[:40]) == 10  # the part's 30 rows are stored already
    store.write("train_scores", train.iloc[100:110])
    assert store.parts("train_scores") == []
    pd.testing.assert_frame_equal(store.read("train_scores"), train.iloc[100:110].reset_index(drop=True))


@pytest.mark.parametrize("name", ["", ".hidden", "../up", "a/b", "a b", "x" * 201, "shard#1", "p.parquet\n"])
def test_bad_part_names_are_rejected(tmp_path, name):
    _, train, _ = synthetic_tables(n_runs=1, n_steps=1, n_examples=2)
    store = ScoreStore(tmp_path, create=True)
    with pytest.raises(InputError, match="part name"):
        store.write_part("train_scores", name, train)
    with pytest.raises(InputError, match="part name"):
        store.has_part("train_scores", name)
    assert not (tmp_path / "parts").exists() and not (tmp_path / "up.parquet").exists()


def test_part_names_may_carry_keys_and_values(tmp_path):
    _, train, _ = synthetic_tables(n_runs=1, n_steps=1, n_examples=2)
    store = ScoreStore(tmp_path, create=True)
    name = "run=my-run_2.step=10.split=train.shard=00003"
    store.write_part("train_scores", name, train)
    assert store.parts("train_scores") == [name]


def test_bad_parts_are_rejected_on_write_and_named_on_read(tmp_path):
    _, train, _ = synthetic_tables(n_runs=1, n_steps=1, n_examples=5)
    store = ScoreStore(tmp_path, create=True)
    with pytest.raises(InputError, match=r"train_scores part p1 \(to write\) row 3: n_correct"):
        store.write_part("train_scores", "p1", train.assign(n_correct=train.n_correct.where(train.index != 3, 6)))
    assert not store.has_part("train_scores", "p1")
    with pytest.raises(InputError, match="parts need a table with a key"):
        store.write_part("probes", "p1", train)
    store.write_part("train_scores", "p2", train)
    store.part_path("train_scores", "p3").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"parts/train_scores/p3\.parquet: not a readable Parquet file"):
        store.read("train_scores")


# -- the further tables ----------------------------------------------------------------------


def _samples(n=4):
    return pd.DataFrame(
        {
            "run": ["r1"] * n,
            "step": [10] * n,
            "split": ["train"] * n,
            "example_id": [i // 2 for i in range(n)],
            "sample": [i % 2 for i in range(n)],
            "text": [f"so it is {i}" for i in range(n)],
            "n_tokens": [4] * n,
            "gold": ["1"] * n,
            "answer_strict": [None if i == 0 else str(i) for i in range(n)],
            "answer_flexible": [str(i) for i in range(n)],
            "correct_strict": [i == 1 for i in range(n)],
            "correct_flexible": [i == 1 for i in range(n)],
        }
    )


def test_samples_table_roundtrips_through_parts(tmp_path):
    store = ScoreStore(tmp_path, create=True)
    store.write_part("samples", "run=r1.step=10.split=train.shard=00000", _samples())
    store.compact("samples")
    got = store.read("samples")
    assert got["answer_strict"].isna().tolist() == [True, False, False, False]
    assert got["correct_strict"].tolist() == [False, True, False, False] and got["text"].iloc[3] == "so it is 3"


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda df: df.drop(columns=["correct_flexible"]), "missing required column 'correct_flexible'"),
        (lambda df: df.assign(text=[None, "a", "b", "c"]), "row 0: text is empty"),
        (lambda df: df.assign(answer_strict=[None, 1, "2", "3"]), "row 1: answer_strict must be a string"),
        (lambda df: df.assign(correct_strict=[True, "yes", False, True]), "row 1: correct_strict must be true or false"),
        (lambda df: df.assign(sample=[0, 0, 0, 1]), r"duplicate key \(run='r1', step=10, split='train', example_id=0, sample=0\)"),
        (lambda df: df.assign(split=["train", 3, "train", "train"]), "row 1: split must be a string"),
    ],
)
def test_bad_samples_are_rejected(tmp_path, corrupt, message):
    store = ScoreStore(tmp_path, create=True)
    with pytest.raises(InputError, match=message):
        store.write_part("samples", "p", corrupt(_samples()))


def test_check_dataset_records_the_data_and_refuses_changed_data(tmp_path):
    from types import SimpleNamespace

    from premem.store import example_ids_sha256

    store = ScoreStore(tmp_path, create=True)
    examples = [SimpleNamespace(example_id=i) for i in (3, 1, 2)]
    train = SimpleNamespace(path="data/train.jsonl", format="gsm8k", grader="gsm8k", examples=examples, fingerprint="a" * 64)
    store.check_dataset("train", train)
    store.check_dataset("train", train)  # a later job on the same data
    store.check_dataset("test", "c" * 64, path="data/test.jsonl", n_examples=7, grader="math")
    got = store.read("datasets").set_index("split")
    assert list(got.index) == ["test", "train"]
    assert got.loc["train", "n_examples"] == 3 and got.loc["train", "example_ids_sha256"] == example_ids_sha256([1, 2, 3])
    assert got.loc["test", "grader"] == "math" and got.loc["test", "path"] == "data/test.jsonl"
    changed = SimpleNamespace(**{**train.__dict__, "fingerprint": "b" * 64})
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(InputError) as e:
        store.check_dataset("train", changed)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # a refused job writes nothing
    assert str(e.value) == (
        f"{store.path('datasets')}: the train data changed since this store was started "
        f"(fingerprint {'a' * 12}… ≠ {'b' * 12}…); score into a new store"
    )
    assert len(store.read("datasets")) == 2


def unsampled_train():
    """synthetic train_scores with two pairs left unsampled as premem score records them (premem.store)."""
    _, train, _ = synthetic_tables()
    train = train.assign(skipped="")
    train.loc[[2, 9], ["n_samples", "n_correct", "skipped"]] = [[0, 0, "exact"], [0, 0, "final"]]
    return train


def test_unsampled_pairs_roundtrip_with_their_reason(tmp_path):
    store = ScoreStore(tmp_path / "s", create=True)
    store.write("train_scores", unsampled_train())
    back = store.read("train_scores")
    assert back.loc[[2, 9], "skipped"].tolist() == ["exact", "final"] and (back.loc[[2, 9], "n_samples"] == 0).all()
    assert (back.drop([2, 9])["skipped"] == "").all()
    store.write("runs", pd.DataFrame({"run": ["run0"], "sample": ["exact"], "sample_tau": [-4.0]}))
    assert store.read("runs")["sample_tau"].tolist() == [-4.0]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda df: df.assign(skipped=df.skipped.where(df.index != 4, "lazy")), "row 4: skipped must be empty or one of"),
        (lambda df: df.assign(n_samples=df.n_samples.where(df.index != 2, 5)),
         "row 2: skipped is 'exact' but n_samples is 5"),
    ],
)
def test_bad_unsampled_rows_are_rejected(tmp_path, corrupt, message):
    with pytest.raises(InputError, match=message):
        ScoreStore(tmp_path / "w", create=True).write("train_scores", corrupt(unsampled_train()))


@pytest.mark.parametrize(
    "runs, message",
    [
        ({"sample": ["most"]}, "row 0: sample must be one of exact, final, all"),
        ({"sample": ["exact"], "sample_tau": [float("inf")]}, "row 0: sample_tau must be a finite number"),
        ({"sample": ["exact"], "sample_tau": ["low"]}, "row 0: sample_tau must be a finite number"),
    ],
)
def test_bad_sampling_settings_of_a_run_are_rejected(tmp_path, runs, message):
    with pytest.raises(InputError, match=message):
        ScoreStore(tmp_path / "w", create=True).write("runs", pd.DataFrame({"run": ["r"], **runs}))


def _write_and_compact(root, train, rounds):
    store = ScoreStore(root)  # another process: its own lock, as premem watch beside a reader
    for i in range(rounds):
        for j, start in enumerate(range(0, len(train), 40)):
            store.write_part("train_scores", f"round={i:03d}.shard={j:05d}", train.iloc[start : start + 40])
        store.compact("train_scores")


def test_a_table_read_while_another_process_compacts_it_reads_whole(tmp_path):
    # what premem watch does to a store while the live report or a trainer callback reads it
    _, train, _ = synthetic_tables()
    ScoreStore(tmp_path, create=True).write("train_scores", train.iloc[:1])
    writer = mp.get_context("spawn").Process(target=_write_and_compact, args=(str(tmp_path), train, 30))
    writer.start()
    reader, reads, seen = ScoreStore(tmp_path), 0, 1
    while writer.is_alive() or reads == 0:
        got = reader.read("train_scores")  # never a vanished part, never a row seen before and lost
        assert len(got) >= seen and not got.duplicated(KEY).any()
        seen, reads = len(got), reads + 1
    writer.join()
    assert writer.exitcode == 0 and reads > 10
    pd.testing.assert_frame_equal(_sorted(reader.read("train_scores")), _sorted(train))
