"""The sampler actor: a Ray actor that holds one backend and the checkpoint it has loaded, and the tasks it runs.

Each actor owns one backend instance (one per GPU; on CPU, a set number of threads each). The
execution layer (premem.execution) starts them, keeps them across jobs in one process, and feeds
them tasks with checkpoint affinity: loading a checkpoint costs far more than scoring one shard of
it, so an actor stays on the checkpoint it has loaded while that checkpoint has shards left.

Because a task's result depends only on the task (per-query seeds), a task re-run after its actor
died gives the rows the dead actor would have given.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

from premem.logs import quiet_libraries
from premem.runs import Checkpoint
from premem.sampling.backend import BackendOptions, Completion, SamplingParams, TargetLogprob
from premem.sampling.engines import make_backend


class CheckpointWork:
    """What the execution layer asks of a task (premem.execution.actor_pool.Task), for tasks on one checkpoint."""

    checkpoint: Checkpoint

    @property
    def affinity(self) -> Checkpoint:
        return self.checkpoint  # tasks on one checkpoint stay on the actor that has loaded it

    @property
    def where(self) -> str:
        """The checkpoint, as a message names it: run, step and path."""
        c = self.checkpoint
        return f"run {c.run} step {c.step} ({c.location})"


@dataclass
class Task(CheckpointWork):
    """One unit of work: some examples of one split, at one checkpoint."""

    checkpoint: Checkpoint
    split: str  # "train" or "test"
    shard: int
    example_ids: list[int]
    prompt_ids: list[list[int]]
    target_ids: list[list[int]] | None  # train only: gold targets to score
    seeds: list[int]
    max_new_tokens: list[int] = field(default_factory=list)  # per query: capped by the context left
    cache_dir: str | None = None  # vLLM's merged LoRA / GGUF copies: the job's, not the actor's (kept across jobs)

    @property
    def part(self) -> str:
        c = self.checkpoint
        return f"run={c.run}.step={c.step}.split={self.split}.shard={self.shard:05d}"


@dataclass
class TaskResult:
    task: Task
    completions: list[list[Completion]]
    targets: list[TargetLogprob] | None
    seconds: float
    pid: int


class SamplerActor:
    """Holds one backend and the checkpoint it has loaded."""

    def __init__(self, backend: str, options: BackendOptions, params: SamplingParams, verbose: bool = False):
        quiet_libraries(verbose)  # an actor is a process of its own, maybe on another machine
        self.backend_name, self.options, self.params = backend, options, params
        self.backend = None
        self.loaded: Checkpoint | None = None

    def pid(self) -> int:
        return os.getpid()

    def load(self, checkpoint: Checkpoint, cache_dir: str | None = None):
        """The backend with this checkpoint loaded (kept while tasks stay on it: loading costs most)."""
        if self.loaded != checkpoint:
            if self.backend is not None:
                self.backend.close()
            self.backend, self.loaded = None, None  # a load that fails leaves nothing half loaded behind
            options = self.options if cache_dir is None else dataclasses.replace(self.options, cache_dir=cache_dir)
            self.backend = make_backend(self.backend_name, checkpoint, options)
            self.loaded = checkpoint
        return self.backend

    def run(self, task: Task) -> TaskResult:
        start = time.perf_counter()
        self.load(task.checkpoint, task.cache_dir)
        targets = None
        if task.target_ids is not None:
            targets = self.backend.target_logprobs(task.prompt_ids, task.target_ids)
        completions = generate_capped(self.backend, task, self.params)
        return TaskResult(task, completions, targets, time.perf_counter() - start, os.getpid())


def generate_capped(backend, task: Task, params: SamplingParams) -> list[list[Completion]]:
    """Generate, grouping queries by their max_new_tokens (only long prompts get a lower cap)."""
    caps = task.max_new_tokens or [params.max_new_tokens] * len(task.prompt_ids)
    out: list[list[Completion] | None] = [None] * len(caps)
    for cap in sorted(set(caps)):
        idx = [i for i, c in enumerate(caps) if c == cap]
        p = SamplingParams(**{**params.__dict__, "max_new_tokens": cap})
        for i, comp in zip(idx, backend.generate([task.prompt_ids[i] for i in idx], p, [task.seeds[i] for i in idx])):
            out[i] = comp
    return out
