"""The backend registry: every engine ExecConfig may name is built by make_backend, an unknown one refused."""

from __future__ import annotations

import pytest

from premem.errors import InputError
from premem.execution import BACKEND_NAMES, BackendOptions
from premem.runs import find_checkpoints
from premem.sampling.engines import BACKENDS, make_backend
from premem.sampling.hf import HFBackend


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory):
    """A tiny Llama at its random initialisation: enough to load and score (seconds, not the trained one's 30)."""
    from premem.train.tiny import build_tiny_model

    return build_tiny_model(["one two three four five six"] * 8, tmp_path_factory.mktemp("m") / "llama",
                            vocab_size=300, hidden_size=32, layers=1, heads=1, max_position_embeddings=64)


def test_the_registry_names_every_backend_the_config_accepts():
    assert tuple(BACKENDS) == BACKEND_NAMES


def test_make_backend_builds_the_named_engine(random_llama):
    [checkpoint] = find_checkpoints(random_llama)
    backend = make_backend("hf", checkpoint, BackendOptions(device="cpu"))
    try:
        assert isinstance(backend, HFBackend) and backend.name == "hf"
        [scored] = backend.target_logprobs([[1, 5, 6]], [[7, 8]])
        assert scored.n_tokens == 2 and scored.sum_logprob < 0
    finally:
        backend.close()


def test_an_unknown_backend_is_one_line_naming_the_known_ones(random_llama):
    [checkpoint] = find_checkpoints(random_llama)
    with pytest.raises(InputError, match=r"^backend: unknown backend 'tgi'; known: hf, vllm$"):
        make_backend("tgi", checkpoint, BackendOptions())
