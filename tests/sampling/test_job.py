"""premem score end to end: real tiny Llama checkpoints, real Ray actors, the transformers backend.

The resume and actor-failure tests compare whole tables with an uninterrupted run's,
not row counts: same seeds must give the same rows, none lost, none duplicated.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from premem.data import DataConfig
from premem.errors import InputError
from premem.execution import ExecConfig
from premem.execution import BackendOptions
from premem.sampling.backend import SamplingParams
from premem.sampling.job import ScoreConfig, score
from premem.store import ScoreStore
from tests.conftest import shared

N_TRAIN, N_TEST = 12, 6
TABLES = ("train_scores", "test_scores", "samples")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run with two checkpoints of a tiny Llama, and small GSM8K train/test files."""
    from premem.train.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("job")
    lines = shared("gsm8k", "train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:N_TRAIN]) + "\n")
    (root / "test.jsonl").write_text("\n".join(lines[100 : 100 + N_TEST]) + "\n")
    texts = [json.loads(line)["question"] + " " + json.loads(line)["answer"] for line in lines[:300]]
    first = build_tiny_model(texts, root / "run" / "checkpoint-10", seed=0)
    second = build_tiny_model(texts, root / "run" / "checkpoint-20", seed=1)
    assert first.exists() and second.exists()
    return root


def config(workdir: Path, store: Path, actors: int = 1, **kw) -> ScoreConfig:
    return ScoreConfig(
        run=str(workdir / "run"),
        store=str(store),
        train=DataConfig(path=str(workdir / "train.jsonl")),
        test=DataConfig(path=str(workdir / "test.jsonl")),
        sampling=SamplingParams(samples=2, max_new_tokens=12),
        exec=ExecConfig(options=BackendOptions(threads=1, batch_size=8), actors=actors, progress=False),
        shard_size=3,
        **kw,
    )


def tables(store_dir: Path) -> dict[str, pd.DataFrame]:
    store = ScoreStore(store_dir)
    out = {}
    for t in TABLES:
        df = store.read(t)
        key = [c for c in ("run", "step", "split", "example_id", "sample") if c in df.columns]
        out[t] = df.sort_values(key, ignore_index=True)
    return out


def assert_same_tables(a: dict, b: dict) -> None:
    for t in TABLES:
        pd.testing.assert_frame_equal(a[t], b[t], check_exact=True, obj=t)


@pytest.fixture(scope="module")
def reference(workdir):
    """One uninterrupted run: the tables every other run must reproduce."""
    summary = score(config(workdir, workdir / "reference"))
    assert summary.tasks_run == summary.tasks_total == 2 * (4 + 2)
    return tables(workdir / "reference")


@pytest.mark.slow
def test_score_writes_complete_tables(reference):
    train, test, samples = reference["train_scores"], reference["test_scores"], reference["samples"]
    assert len(train) == 2 * N_TRAIN and len(test) == 2 * N_TEST
    assert len(samples) == 2 * (N_TRAIN + N_TEST) * 2
    assert set(train["step"]) == {10, 20} and (train["n_samples"] == 2).all()
    assert (train["perplexity"] > 1).all() and (train["n_target_tokens"] > 10).all()
    # the random-init checkpoints differ, so do their perplexities
    assert not train[train.step == 10]["perplexity"].reset_index(drop=True).equals(
        train[train.step == 20]["perplexity"].reset_index(drop=True)
    )
    assert samples["text"].str.len().gt(0).any()


@pytest.mark.slow
def test_rerun_on_a_finished_store_does_nothing(workdir, reference):
    summary = score(config(workdir, workdir / "reference"))
    assert summary.tasks_run == 0 and summary.tasks_skipped == 12
    assert_same_tables(tables(workdir / "reference"), reference)


@pytest.mark.slow
@pytest.mark.parametrize("skipping", [False, True], ids=["nothing_to_skip", "sample_exact_with_skips"])
def test_killed_job_resumes_to_the_same_tables(skipping, request, tmp_path):
    """Killed part-way and resumed: the tables of an uninterrupted run. With sample=exact and pairs to skip, the
    resumed job rebuilds M_{t-1} from the parts written before the kill and skips exactly what it would have."""
    store = tmp_path / "store"
    if skipping:
        lr = request.getfixturevalue("learning_run")
        root, reference, extra, n_train_parts = lr["root"], lr["exact"], [f"sample_tau={lr['tau']!r}"], 15
        settings = ["--samples", "3", "sampling.max_new_tokens=24", "shard_size=4"]
    else:
        root, reference, extra, n_train_parts = request.getfixturevalue("workdir"), request.getfixturevalue("reference"), [], 8
        settings = ["--samples", "2", "sampling.max_new_tokens=12", "shard_size=3"]
    cmd = [
        sys.executable, "-m", "premem.cli", "score", "--run", str(root / "run"), "--store", str(store),
        "--train", str(root / "train.jsonl"), "--test", str(root / "test.jsonl"), *settings,
        "exec.options.threads=1", "exec.options.batch_size=8", "exec.progress=false", *extra,
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    parts = store / "parts" / "train_scores"
    deadline = time.time() + 240
    while time.time() < deadline and not (parts.exists() and len(list(parts.glob("*.parquet"))) >= 2):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait()
    done_before = len(list(parts.glob("*.parquet")))
    assert 2 <= done_before < n_train_parts, "the job should have been killed part-way"

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for chatter in ("Loading weights", "Token authentication", "SamplerActor pid="):  # Ray's and transformers': -v only
        assert chatter not in resumed.stderr + resumed.stdout
    assert_same_tables(tables(store), reference)
    if skipping:
        assert (reference["train_scores"]["skipped"] != "").any()


@pytest.mark.slow
def test_actor_killed_mid_task_is_retried(workdir, reference, tmp_path):
    store = tmp_path / "store"
    killed = []

    me = os.getpid()

    def ours(p) -> bool:  # a worker of the Ray this test process started, not another job's
        try:
            return any(parent.pid == me for parent in p.parents())
        except psutil.Error:
            return False

    def kill_an_actor():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "SamplerActor.run" in cmd and ours(p):
                    os.kill(p.info["pid"], signal.SIGKILL)
                    killed.append(p.info["pid"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_an_actor)
    killer.start()
    summary = score(config(workdir, store, actors=2))
    killer.join()
    assert killed, "no actor was seen running a task"
    assert summary.retries >= 1
    assert_same_tables(tables(store), reference)


def sampler_actor_pids() -> set[int]:
    """The sampler actors of the Ray this test process started (their process titles name the actor class)."""
    me = os.getpid()
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if (p.info["cmdline"] or [""])[0].startswith("ray::SamplerActor") and any(q.pid == me for q in p.parents()):
                found.add(p.info["pid"])
        except psutil.Error:
            pass
    return found


def test_the_next_job_in_the_process_reuses_the_actors_and_leaves_the_config_alone(workdir, reference, tmp_path):
    cfg = config(workdir, tmp_path / "first", train_examples="none", checkpoints="last")
    before = copy.deepcopy(cfg)
    score(cfg)
    assert cfg == before  # no cache_dir filled in behind the caller's back
    actors = sampler_actor_pids()
    assert len(actors) >= 1
    again = score(config(workdir, tmp_path / "second", train_examples="none", checkpoints="last"))
    assert again.tasks_run == 2 and sampler_actor_pids() == actors  # another store, the same live actors
    pd.testing.assert_frame_equal(ScoreStore(tmp_path / "second").read("test_scores"),
                                  ScoreStore(tmp_path / "first").read("test_scores"))


def test_run_folder_without_checkpoints(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a #### 1"}\n')
    cfg = ScoreConfig(run=str(tmp_path / "run"), store=str(tmp_path / "store"), train=DataConfig(path=str(tmp_path / "train.jsonl")))
    with pytest.raises(InputError, match="no checkpoints"):
        score(cfg)
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_prompt_longer_than_the_context(workdir, tmp_path):
    long = {"question": "How many? " * 400, "answer": "It is 3.\n#### 3"}
    (tmp_path / "train.jsonl").write_text(json.dumps(long) + "\n")
    cfg = config(workdir, tmp_path / "store")
    cfg.train = DataConfig(path=str(tmp_path / "train.jsonl"))
    with pytest.raises(InputError, match="example 0: prompt and gold target take .* tokens, more than the model's context of 512"):
        score(cfg)
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_data_changed_since_the_store_was_started(workdir, reference, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(workdir / "reference", store)
    lines = (workdir / "train.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[1:]) + "\n")  # every id shifts by one
    cfg = config(workdir, store)
    cfg.train = DataConfig(path=str(tmp_path / "train.jsonl"))
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="train data changed since this store was started"):
        score(cfg)
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_checkpoint_with_a_different_tokenizer(workdir, tmp_path):
    from premem.train.tiny import build_tiny_model

    run = tmp_path / "run"
    shutil.copytree(workdir / "run" / "checkpoint-10", run / "checkpoint-10")
    build_tiny_model(["completely different text " * 20, "another line of it"], run / "checkpoint-20", vocab_size=300)
    cfg = config(workdir, tmp_path / "store")
    cfg.run = str(run)
    with pytest.raises(InputError, match="checkpoint-20"):
        score(cfg)
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_regrade_reapplies_the_grader_without_sampling(workdir, reference, tmp_path):
    from premem.sampling.regrade import regrade

    store_dir = tmp_path / "store"
    shutil.copytree(workdir / "reference", store_dir)
    store = ScoreStore(store_dir)
    assert regrade(store) == {"test": 0, "train": 0}  # same grader, same counting: same tables
    assert_same_tables(tables(store_dir), reference)
    regrade(store, count="flexible")
    flexible = tables(store_dir)
    for t in ("train_scores", "test_scores"):
        assert (flexible[t]["n_correct"] >= reference[t]["n_correct"]).all()
        expected = reference["samples"].query(f"split == '{t.split('_')[0]}'").groupby(["run", "step", "example_id"])["correct_flexible"].sum()
        assert flexible[t].set_index(["run", "step", "example_id"])["n_correct"].equals(expected.astype(int).rename("n_correct"))
    pd.testing.assert_series_equal(flexible["train_scores"]["perplexity"], reference["train_scores"]["perplexity"])


def _trained_run(workdir: Path, tmp_path: Path, ids) -> Path:
    """A copy of the run with the premem_run.json that `premem train` writes beside its checkpoints."""
    run = tmp_path / "trained"
    shutil.copytree(workdir / "run", run)
    meta = {"run": "trained", "model": "tiny", "lr": 1e-3, "epochs": 2, "data_fraction": 0.5, "seed": 0,
            "batch_size": 4, "n_train": len(ids), "train_example_ids": ids, "checkpoints": []}
    (run / "premem_run.json").write_text(json.dumps(meta))
    return run


def test_a_trained_run_scores_only_its_examples_and_records_its_settings(workdir, reference, tmp_path):
    ids = [1, 4, 5, 9]
    cfg = config(workdir, tmp_path / "store")
    cfg.run = str(_trained_run(workdir, tmp_path, ids))
    score(cfg)
    store = ScoreStore(tmp_path / "store")
    train = store.read("train_scores")
    assert sorted(set(train["example_id"])) == ids and len(train) == 2 * len(ids)
    assert len(store.read("test_scores")) == 2 * N_TEST  # test data is never subset
    runs = store.runs().set_index("run")
    assert runs.loc["trained", "lr"] == 1e-3 and runs.loc["trained", "epochs"] == 2
    assert list(runs.loc["trained", "train_example_ids"]) == ids
    # the same query at the same checkpoint gets the same seed, so the rows equal the full run's
    ref = reference["train_scores"]
    same = ref[ref["example_id"].isin(ids)].drop(columns="run").reset_index(drop=True)
    got = train.sort_values(["step", "example_id"], ignore_index=True).drop(columns="run")
    pd.testing.assert_frame_equal(got, same.sort_values(["step", "example_id"], ignore_index=True))

    cfg.train_examples = "all"
    cfg.store = str(tmp_path / "all")
    score(cfg)
    assert len(ScoreStore(tmp_path / "all").read("train_scores")) == 2 * N_TRAIN


def test_a_run_trained_on_examples_the_data_lacks(workdir, tmp_path):
    cfg = config(workdir, tmp_path / "store")
    cfg.run = str(_trained_run(workdir, tmp_path, [0, 999]))
    with pytest.raises(InputError, match=r"premem_run.json: trained on example 999, which .*train.jsonl does not hold"):
        score(cfg)
    assert not (tmp_path / "store").exists()


def test_test_only_scoring_of_the_last_checkpoint(workdir, reference, tmp_path):
    cfg = config(workdir, tmp_path / "store", train_examples="none", checkpoints="last")
    summary = score(cfg)
    assert summary.checkpoints == [20] and summary.tasks_total == 2  # 6 test queries, shards of 3
    store = ScoreStore(tmp_path / "store")
    assert not store.has("train_scores")
    ref = reference["test_scores"]
    pd.testing.assert_frame_equal(
        store.read("test_scores").sort_values("example_id", ignore_index=True),
        ref[ref["step"] == 20].reset_index(drop=True),
    )
    no_test = config(workdir, tmp_path / "s2", train_examples="none")
    no_test.test = None
    with pytest.raises(InputError, match="train_examples=none scores test queries only"):
        score(no_test)


# -- every setting checked before anything is read, written or started ---------------------------

BAD_SETTINGS = [  # (dotted setting, bad value)
    ("sampling.samples", 0), ("sampling.samples", -1), ("sampling.temperature", -0.5),
    ("sampling.temperature", float("nan")), ("sampling.top_p", 0.0), ("sampling.top_p", 1.5),
    ("sampling.max_new_tokens", 0), ("sampling.seed", -3), ("shard_size", 0), ("exec.actors", 0),
    ("exec.gpus_per_actor", -1.0), ("exec.gpus_per_actor", 1.5), ("exec.options.threads", 0),
    ("exec.options.batch_size", 0), ("exec.options.dtype", "float8"), ("exec.options.device", "gpu"),
    ("exec.options.kv_cache_gib", 0.0), ("exec.options.gpu_memory_utilization", 1.2),
    ("exec.options.max_model_len", 0), ("exec.backend", "tgi"), ("count", "loose"),
    ("train_examples", "some"), ("checkpoints", "first"),
]


@pytest.mark.parametrize("setting, value", BAD_SETTINGS, ids=[f"{k}={v}" for k, v in BAD_SETTINGS])
def test_a_bad_setting_is_refused_before_anything_is_read_or_written(tmp_path, setting, value):
    # the run directory does not even exist: the setting is checked first
    cfg = ScoreConfig(run=str(tmp_path / "run"), store=str(tmp_path / "store"),
                      train=DataConfig(path=str(tmp_path / "train.jsonl")))
    *parents, leaf = setting.split(".")
    target = cfg
    for name in parents:
        target = getattr(target, name)
    setattr(target, leaf, value)
    with pytest.raises(InputError, match=f"^{re.escape(setting)}: "):
        score(cfg)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_says_which_setting_in_one_line(tmp_path, capsys):
    from premem.cli import main

    code = main(["score", "--run", str(tmp_path / "run"), "--train", str(tmp_path / "t.jsonl"), "--store",
                 str(tmp_path / "store"), "--samples", "0"])
    assert code == 2
    assert capsys.readouterr().err == "premem: error: sampling.samples: expected an integer >= 1, got 0\n"
    assert list(tmp_path.iterdir()) == []


def test_more_than_the_cluster_holds_is_refused_before_anything_is_written(workdir, tmp_path):
    cfg = config(workdir, tmp_path / "store", actors=1)
    cfg.exec.options.threads = 4096
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"^Ray cannot place 1 actor of 4096 CPUs each .* room for 0; ask for fewer"):
        score(cfg)
    assert time.perf_counter() - start < 60  # tokenizers, and a local Ray if none runs yet; never a wait on Ray
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_an_error_in_an_actor_is_one_line_naming_the_checkpoint(workdir, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(workdir / "run", run)
    # a config whose shapes do not match the weights: found only when an actor loads the checkpoint
    config_file = run / "checkpoint-20" / "config.json"
    model_config = json.loads(config_file.read_text())
    model_config["intermediate_size"] += 8
    config_file.write_text(json.dumps(model_config))
    cfg = config(workdir, tmp_path / "store")
    cfg.run = str(run)
    with caplog.at_level(logging.DEBUG, logger="premem"), pytest.raises(InputError) as failed:
        score(cfg)
    message = str(failed.value)
    assert message.startswith(f"run run step 20 ({run / 'checkpoint-20'}): RuntimeError: ") and "\n" not in message
    # the remote traceback: at debug level only (premem -v)
    assert 'File "' not in message and "SamplerActor.run" in caplog.text and 'File "' in caplog.text


# -- memorization-aware sampling: sample=exact|final against sampling every pair ------------------

LEARN_STEPS = (0, 20, 60, 200, 400)  # pretraining steps before each checkpoint: from random to memorized


def arithmetic_rows(pairs) -> list[dict]:
    return [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}. #### {a + b}"} for a, b in pairs]


def learning_config(root: Path, store: Path, **kw) -> ScoreConfig:
    return ScoreConfig(
        run=str(root / "run"), store=str(store), train=DataConfig(path=str(root / "train.jsonl")),
        test=DataConfig(path=str(root / "test.jsonl")), sampling=SamplingParams(samples=3, max_new_tokens=24),
        exec=ExecConfig(options=BackendOptions(threads=1, batch_size=8), actors=1, progress=False),
        shard_size=4, **kw,
    )


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory):
    """A tiny Llama learning 12 sums: 5 checkpoints from random (perplexity high, accuracy 0) to memorized
    (perplexity near 1, accuracy high), scored with sample=all; a sample_tau at which some memorized pairs
    are skipped (M_{t-1} = 0) and others must be sampled (M_{t-1} > 0); that store scored with sample=exact."""
    from premem.sampling.skipping import replay
    from premem.tables import log_log_perplexity
    from premem.train.tiny import build_tiny_model, pretrain_briefly
    from tests.sampling.conftest import paper_prompt, paper_target

    root = tmp_path_factory.mktemp("learn")
    train = arithmetic_rows([(a, 2 * a % 7) for a in range(1, 13)])
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows([(3, 3), (5, 1)])))
    texts = [paper_prompt(r["question"]) + paper_target(r["answer"]) for r in train]
    model = build_tiny_model(texts, root / "model", seed=0, vocab_size=256)
    done = 0
    for i, steps in enumerate(LEARN_STEPS):
        if steps > done:
            pretrain_briefly(model, texts, steps=steps - done, lr=3e-3, seed=i, threads=1, batch_size=8, block_size=64)
            done = steps
        shutil.copytree(model, root / "run" / f"checkpoint-{i + 1}")
    summary = score(learning_config(root, root / "all", sample="all"))
    everything = tables(root / "all")
    rows = everything["train_scores"]
    # the lowest loglog at which both kinds of memorized pair occur before the last checkpoint: skipped
    # (M_{t-1} = 0) and sampled (M_{t-1} > 0, which sample=final skips and sample=exact samples)
    early = (rows["step"] < rows["step"].max()).to_numpy()
    for tau in np.sort(log_log_perplexity(rows["perplexity"].to_numpy()))[1:] + 1e-9:
        exact = replay(rows, tau, "exact")
        kept = (log_log_perplexity(rows["perplexity"].to_numpy()) < tau) & (exact == "") & early
        if (exact != "").any() and kept.any():
            break
    else:
        pytest.fail("the learning run memorizes no pair that was accurate before: nothing to test skipping on")
    exact_summary = score(learning_config(root, root / "exact", sample="exact", sample_tau=float(tau)))
    return {"root": root, "tau": float(tau), "all": everything, "exact": tables(root / "exact"),
            "summaries": {"all": summary, "exact": exact_summary}}


def premem_tables(store_dir: Path, tau: float):
    from premem.metrics.premem import TrainingCurves

    curves = TrainingCurves.from_store(ScoreStore(store_dir))
    return curves.per_example(tau), curves.points(tau)


@pytest.mark.slow
def test_sample_exact_gives_the_premem_of_sampling_everything_with_fewer_samples(learning_run):
    from premem.sampling.skipping import replay

    root, tau, full, exact = learning_run["root"], learning_run["tau"], learning_run["all"], learning_run["exact"]
    for t in (tau, tau + 0.5):  # exact for every tau at or above sample_tau
        (ex_all, pts_all), (ex_exact, pts_exact) = premem_tables(root / "all", t), premem_tables(root / "exact", t)
        assert (ex_all["premem"].to_numpy() == ex_exact["premem"].to_numpy()).all()  # per example and checkpoint
        assert (pts_all["premem"].to_numpy() == pts_exact["premem"].to_numpy()).all()  # per (run, step)
    assert pts_all["premem"].gt(0).any() and pts_all["premem"].lt(pts_all["train_acc"]).any()  # not a trivial run
    # the actors skipped exactly the pairs the rule names, and every other row is the one sampling all gives
    train = exact["train_scores"]
    reasons = replay(full["train_scores"], tau, "exact")
    assert train["skipped"].tolist() == list(reasons) and (train.loc[reasons != "", "n_samples"] == 0).all()
    same = list(full["train_scores"].columns)
    pd.testing.assert_frame_equal(train.loc[reasons == "", same], full["train_scores"].loc[reasons == "", same])
    pd.testing.assert_frame_equal(exact["test_scores"], full["test_scores"])  # test queries: always sampled
    skipped = train.loc[reasons != "", ["step", "example_id"]].assign(drop=True)
    kept = full["samples"].merge(skipped.assign(split="train"), on=["step", "split", "example_id"], how="left")
    expected = full["samples"][kept["drop"].isna().to_numpy()].reset_index(drop=True)
    pd.testing.assert_frame_equal(exact["samples"], expected)  # fewer samples, the same texts
    assert len(exact["samples"]) < len(full["samples"])
    summary = learning_run["summaries"]["exact"]
    assert summary.pairs_skipped == int((reasons != "").sum()) and summary.generated_tokens < \
        learning_run["summaries"]["all"].generated_tokens
    runs = ScoreStore(root / "exact").runs().set_index("run")
    assert runs.loc["run", "sample"] == "exact" and runs.loc["run", "sample_tau"] == tau


@pytest.mark.slow
def test_sample_final_gives_the_final_premem_of_sampling_everything(learning_run, tmp_path):
    root, tau = learning_run["root"], learning_run["tau"]
    summary = score(learning_config(root, tmp_path / "final", sample="final", sample_tau=tau))
    final = tables(tmp_path / "final")
    ex_all, _ = premem_tables(root / "all", tau)
    ex_final, _ = premem_tables(tmp_path / "final", tau)
    last = (ex_all["step"] == ex_all["step"].max()).to_numpy()
    assert (ex_all.loc[last, "premem"].to_numpy() == ex_final.loc[last, "premem"].to_numpy()).all()
    assert summary.pairs_skipped > learning_run["summaries"]["exact"].pairs_skipped
    assert (final["train_scores"]["skipped"] == "final").any() and len(final["samples"]) < len(learning_run["exact"]["samples"])


@pytest.mark.slow
def test_a_resumed_run_keeps_its_sampling_settings(learning_run, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(learning_run["root"] / "exact", store)
    with pytest.raises(InputError, match=r"^sample: run 'run' of .* was scored with sample=exact sample_tau="):
        score(learning_config(learning_run["root"], store, sample="all"))
    again = score(learning_config(learning_run["root"], store, sample="exact", sample_tau=learning_run["tau"]))
    assert again.tasks_run == 0


@pytest.mark.slow
def test_answers_are_graded_in_the_actors_not_on_the_driver(workdir, reference, tmp_path):
    # the test split graded as MATH (math-verify behind it: tests/sampling/test_results.py grades real MATH answers
    # the way the actors do); the driver only writes, and starts no math-verify helper of its own
    import multiprocessing

    from premem.data import get_grader

    before = set(multiprocessing.active_children())
    rows = [json.loads(line) for line in (workdir / "test.jsonl").read_text().splitlines()]
    boxed = [{**r, "answer": r["answer"].replace("#### ", "\\boxed{") + "}"} for r in rows]  # MATH's format
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in boxed))
    cfg = config(workdir, tmp_path / "store")
    cfg.test = DataConfig(path=str(tmp_path / "test.jsonl"), grader="math")
    summary = score(cfg)
    assert set(multiprocessing.active_children()) == before
    assert summary.grading_seconds > 0
    samples = ScoreStore(tmp_path / "store").read("samples").query("split == 'test'")
    assert len(samples) == 2 * N_TEST * 2
    grader = get_grader("math")
    try:  # the actors' grades are the grader's own, row for row
        grades = [grader.grade(text, gold) for text, gold in zip(samples["text"], samples["gold"])]
    finally:
        grader.close()
    assert list(samples["correct_flexible"]) == [g.flexible_correct for g in grades]
    assert list(samples["answer_flexible"].fillna("<none>")) == [g.flexible_answer or "<none>" for g in grades]
    # the training split is graded as before (GSM8K), so its tables equal the reference's
    train = tables(tmp_path / "store")["train_scores"]
    pd.testing.assert_frame_equal(train, reference["train_scores"], check_exact=True)
