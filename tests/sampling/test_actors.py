"""The sampler actor: what it holds across tasks, what a failed load leaves behind, and how quiet it keeps the
libraries it runs. (The pool that starts it, the runner that feeds it and the cluster are premem.execution's:
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
from premem.sampling.backend import BackendOptions, SamplingParams


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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Checkpoint, Checkpoint]:
    """A tiny Llama checkpoint, and a copy whose config does not match its weights (found only when loaded)."""
    from premem.train.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("actor")
    good = build_tiny_model(["one two three four five", "six seven eight nine ten"] * 20, root / "good",
                            vocab_size=300, seed=0)
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
