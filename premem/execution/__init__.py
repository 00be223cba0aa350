"""How work runs: which engine, how it loads a checkpoint, on how many Ray actors, on which cluster.

One config, `ExecConfig`, says it for every job and recipe (the `exec:` key of their YAML), so the
quickstart, the experiments, `score`, `probe track` and the curation loop all read the same settings:

    exec:
      backend: vllm          # hf (transformers) or vllm
      actors: 2
      gpus_per_actor: 0
      address: null          # a Ray cluster to join; default: a local Ray
      options: {threads: 1, batch_size: 64, dtype: float32}

This layer is generic: it knows nothing of sampling. The pool of actors that runs the work is handed
its actor class by the stage that defines it (premem.sampling.actors):

    with pool(cfg.exec, SamplerActor, args) as actors:   # Ray and the actors: started once per process
        run_tasks(actors, tasks, on_result)

- premem.execution.cluster     ray_init (start or join Ray once per process), check_resources
- premem.execution.actor_pool  pool (kept across jobs in one process), release, run_tasks, TaskFailed

Both import Ray; they load when first named here (`from premem.execution import pool`), so reading a
config does not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

from premem.errors import InputError

BACKEND_NAMES = ("hf", "vllm")  # the engines premem.sampling builds (its registry must name the same)


@dataclass
class BackendOptions:
    """How a backend loads and runs a checkpoint."""

    dtype: str = "float32"
    """Weights' dtype: float32 (CPU default), bfloat16, float16."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, or cuda."""
    threads: int = 1
    """CPU threads per backend instance (torch / vLLM OMP threads)."""
    batch_size: int = 16
    """Prompts per forward batch (transformers backend)."""
    max_model_len: int | None = None
    """Context length to allocate (vLLM); default: the model's."""
    gpu_memory_utilization: float = 0.85
    """vLLM on GPU: fraction of GPU memory the engine may take."""
    kv_cache_gib: float = 2.0
    """vLLM on CPU: KV cache size in GiB."""
    allow_pickle: bool = False
    """Allow loading .bin/.pt (pickle) weights; by default only safetensors are loaded."""
    trust_remote_code: bool = False
    """Allow a checkpoint's own Python code to run (off unless you trust the checkpoint)."""
    allow_hub: bool = False
    """Allow downloads from the Hugging Face hub (a LoRA base named by hub id, say); off: local files only."""
    cache_dir: str | None = None
    """Where merged LoRA / dequantized GGUF copies for vLLM are written (premem score: <store>/cache)."""
    reuse_engine: bool = True
    """Keep an actor's engine across checkpoints and runs of one architecture, weights reloaded in place (false:
    a new engine per checkpoint)."""

    def validate(self, prefix: str = "options.") -> None:
        """Refuse settings no backend can run with (before any work starts, not inside an actor)."""
        if self.dtype not in DTYPES:
            raise InputError(f"{prefix}dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.device, str) or not DEVICE.fullmatch(self.device):
            raise InputError(f"{prefix}device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        check_int(prefix + "threads", self.threads, 1)
        check_int(prefix + "batch_size", self.batch_size, 1)
        if self.max_model_len is not None:
            check_int(prefix + "max_model_len", self.max_model_len, 1)
        check_number(prefix + "gpu_memory_utilization", self.gpu_memory_utilization, lambda u: 0 < u <= 1,
                     "a number in (0, 1]")
        check_number(prefix + "kv_cache_gib", self.kv_cache_gib, lambda g: g > 0, "a number of GiB > 0")
        if not isinstance(self.reuse_engine, bool):
            raise InputError(f"{prefix}reuse_engine: expected true or false, got {self.reuse_engine!r}")


DTYPES = ("auto", "float32", "bfloat16", "float16")  # what options.dtype may name (checkpoints loads them)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_int(name: str, value, minimum: int) -> None:
    """An InputError naming the setting unless value is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def check_number(name: str, value, ok: Callable[[float], bool], expected: str) -> None:
    """An InputError naming the setting unless value is a finite number (not a bool or nan) for which ok holds."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (real and ok(value)):
        raise InputError(f"{name}: expected {expected}, got {value!r}")


@dataclass
class ExecConfig:
    """How a job runs its engines: backend, its options, Ray actors and cluster."""

    backend: str = "hf"
    """hf (transformers) or vllm."""
    options: BackendOptions = field(default_factory=BackendOptions)
    """How a backend loads and runs a checkpoint."""
    actors: int = 1
    """Ray sampler actors (one per GPU; on CPU each takes options.threads cores)."""
    gpus_per_actor: float = 0.0
    """GPUs per actor (set 1 on a GPU machine)."""
    address: str | None = None
    """Ray cluster address to join (default: start a local Ray)."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self, prefix: str = "exec.") -> None:
        """Refuse every execution setting that cannot work, before anything is read, written or started."""
        check_execution(self.backend, self.options, self.actors, self.gpus_per_actor, prefix)
        if self.address is not None and not isinstance(self.address, str):
            raise InputError(f"{prefix}address: expected a Ray address (host:port, ray://host:port or auto), "
                             f"got {self.address!r}")


def check_execution(backend: str, options: BackendOptions, actors: int, gpus_per_actor: float,
                    prefix: str = "") -> None:
    """How a job runs backends on Ray actors, checked before it reads, writes or starts anything
    (what the cluster holds is checked against it once Ray is up, when the pool starts)."""
    if backend not in BACKEND_NAMES:
        raise InputError(f"{prefix}backend: unknown backend {backend!r}; known: {', '.join(BACKEND_NAMES)}")
    options.validate(prefix + "options.")
    check_int(prefix + "actors", actors, 1)
    # Ray takes a fraction of one GPU, or whole GPUs
    check_number(prefix + "gpus_per_actor", gpus_per_actor, lambda g: g >= 0 and (g <= 1 or g == int(g)),
                 "a number >= 0 (a fraction below 1, or whole GPUs)")
    if options.device.startswith("cuda") and not gpus_per_actor:
        raise InputError(f"{prefix}options.device={options.device} needs {prefix}gpus_per_actor > 0: Ray shows an "
                         "actor no GPU unless it asks for one")


_LAZY = {"pool": "actor_pool", "release": "actor_pool", "run_tasks": "actor_pool", "TaskFailed": "actor_pool",
         "ray_init": "cluster", "check_resources": "cluster"}


def __getattr__(name: str):
    """The Ray half of the layer, imported when first asked for (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"premem.execution.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
