"""The registry of sampling backends: a name (ExecConfig.backend) -> the engine that implements it.

Apart from premem.sampling.backend (the protocol every engine implements), so that the engines
import the protocol and this registry imports the engines: no circle.

    backend = make_backend("hf", checkpoint, BackendOptions())
    if not backend.reload(later):          # the same engine, later's weights; False: another architecture
        backend.close()
        backend = make_backend("hf", later, BackendOptions())

Building an engine is what costs (a vLLM engine ~30 s on CPU), so callers keep one per actor and
reload later checkpoints into it (premem.sampling.actors; options.reuse_engine=false opts out).
"""

from __future__ import annotations

from typing import Callable

from premem.errors import InputError
from premem.execution import BACKEND_NAMES, BackendOptions
from premem.runs import Checkpoint
from premem.sampling.backend import Backend


def _hf(checkpoint: Checkpoint, options: BackendOptions) -> Backend:
    from premem.sampling.hf import HFBackend

    return HFBackend(checkpoint, options)


def _vllm(checkpoint: Checkpoint, options: BackendOptions) -> Backend:
    from premem.sampling.vllm_backend import VLLMBackend  # vLLM is an optional extra: imported when asked for

    return VLLMBackend(checkpoint, options)


# name -> constructor(checkpoint, options)
BACKENDS: dict[str, Callable[[Checkpoint, BackendOptions], Backend]] = {"hf": _hf, "vllm": _vllm}
assert tuple(BACKENDS) == BACKEND_NAMES


def make_backend(name: str, checkpoint: Checkpoint, options: BackendOptions) -> Backend:
    if name not in BACKENDS:
        raise InputError(f"backend: unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name](checkpoint, options)
