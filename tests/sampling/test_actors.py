"""The sampler actor: what it holds across tasks (one engine for every checkpoint of one architecture, unless
options.reuse_engine is off), what a failed load or reload leaves behind, and how quiet it keeps the libraries
it runs. (The pool that starts it, the runner that feeds it and the cluster are premem.execution's:
tests/test_execution.py.)

The Ray here is this module's local one (its own temp dir, shut down after).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import ray

from premem.execution import ExecConfig, pool, release
from premem.runs import Checkpoint
from premem.sampling.actors import SamplerActor
from premem.execution import BackendOptions
from premem.sampling.backend import SamplingParams


class ReportingActor(SamplerActor):
    """A sampler actor that also says how its transformers is set to talk."""

    def transformers_output(self) -> tuple[int, bool]:
        from transformers.utils import logging as hf_logging

        return hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()


def test_actors_keep_the_libraries_quiet(local_ray):
    args = ("hf", BackendOptions(), SamplingParams())
    with pool(ExecConfig(), ReportingActor, args) as (actor,):
        assert ray.get(actor.transformers_output.remote()) == (logging.ERROR, False)
    release()


TEXTS = ["one two three four five", "six seven eight nine ten"] * 20


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Checkpoint, Checkpoint]:
    """A tiny Llama checkpoint, and a copy whose config does not match its weights (found only when loaded)."""
    from premem.train.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("actor")
    good = build_tiny_model(TEXTS, root / "good", vocab_size=300, seed=0)
    bad = root / "bad"
    shutil.copytree(good, bad)
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] += 8
    (bad / "config.json").write_text(json.dumps(config))
    return Checkpoint("good", 0, Path(good), "full"), Checkpoint("bad", 0, bad, "full")


def test_the_loaded_backend_is_kept_and_a_failed_load_leaves_nothing_behind(checkpoints, tmp_path):
    good, bad = checkpoints
    actor = SamplerActor("hf", BackendOptions(), SamplingParams())
    backend = actor.load(good)
    assert actor.load(good) is backend and actor.loaded == good  # the next task on it loads nothing
    with pytest.raises(RuntimeError):
        actor.load(bad)
    # neither the closed backend nor the old checkpoint's name: the next task loads afresh
    assert actor.backend is None and actor.loaded is None
    again = actor.load(good, cache_dir=str(tmp_path / "cache"))  # the task's cache dir, not the actor's options
    assert again is not backend and again.options.cache_dir == str(tmp_path / "cache")
    assert actor.options.cache_dir is None
    again.close()


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Checkpoint:
    """Another checkpoint of the same architecture as `good` (same config and tokenizer, other weights)."""
    from premem.train.tiny import build_tiny_model

    path = build_tiny_model(TEXTS, tmp_path_factory.mktemp("other") / "good", vocab_size=300, seed=1)
    return Checkpoint("good", 1, Path(path), "full")


def perplexities(backend) -> list[float]:
    ids = backend.tokenizer(["one two three", "six seven eight nine"])["input_ids"]
    return [t.perplexity for t in backend.target_logprobs(ids, ids)]


def test_the_engine_is_kept_across_checkpoints_of_one_architecture(checkpoints, other):
    """The next checkpoint of the same architecture goes into the engine held; one of another architecture gets
    a new engine (here one that fails to load: nothing is left behind)."""
    from premem.sampling.hf import HFBackend

    good, bad = checkpoints
    actor = SamplerActor("hf", BackendOptions(), SamplingParams())
    backend = actor.load(good)
    before = perplexities(backend)
    assert actor.load(other) is backend and actor.loaded == other
    fresh = HFBackend(other, BackendOptions())
    assert perplexities(backend) == perplexities(fresh) != before  # the other's weights, exactly
    fresh.close()
    assert actor.load(good) is backend and perplexities(backend) == before
    stats = actor.engine_stats()
    assert (stats.started, stats.reloaded) == (1, 2) and stats.started_s > 0 and stats.reloaded_s > 0
    with pytest.raises(RuntimeError):
        actor.load(bad)
    assert actor.backend is None and actor.loaded is None and backend.model is None  # the old engine closed
    assert (actor.engine_stats().started, actor.engine_stats().reloaded) == (1, 2)  # a failed start is not counted


def test_a_reload_that_fails_midway_closes_the_engine(checkpoints, other, tmp_path):
    """Weights whose header fits but whose data is cut short: the reload raises after the engine may have taken
    some of them, so the engine is closed, not kept half loaded."""
    good, _ = checkpoints
    cut = tmp_path / "cut"
    shutil.copytree(other.path, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    actor = SamplerActor("hf", BackendOptions(), SamplingParams())
    backend = actor.load(good)
    with pytest.raises(Exception):
        actor.load(Checkpoint("cut", 2, cut, "full"))
    assert actor.backend is None and actor.loaded is None and backend.model is None


def test_reuse_engine_false_starts_an_engine_per_checkpoint(checkpoints, other):
    good, _ = checkpoints
    actor = SamplerActor("hf", BackendOptions(reuse_engine=False), SamplingParams())
    first = actor.load(good)
    assert actor.load(other) is not first and first.model is None
    assert (actor.engine_stats().started, actor.engine_stats().reloaded) == (2, 0)
    actor.backend.close()


def test_reuse_engine_is_checked_before_work():
    from premem.errors import InputError

    with pytest.raises(InputError, match=r"^exec\.options\.reuse_engine: expected true or false, got 'no'$"):
        ExecConfig(options=BackendOptions(reuse_engine="no")).validate()
