"""Sampler actors on Ray, and the scheduler that feeds them (checkpoint, shard) tasks.

Each actor owns one backend instance (one per GPU; on CPU, a set number of threads each).
Loading a checkpoint costs far more than scoring one shard of it, so the scheduler keeps
an actor on the checkpoint it has loaded for as long as that checkpoint has shards left
(checkpoint affinity), and only then moves it to the checkpoint with the most work left.

An actor that dies mid-task (killed, out of memory, node lost) is restarted by Ray
(max_restarts=-1); the scheduler puts its task back at the front of the queue, where the
next free actor, the restarted one included, takes it. Because a task's result depends only
on the task (per-query seeds), re-running it gives the rows the dead actor would have given.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import ray

from premem.sampling.backend import BackendOptions, Completion, SamplingParams, TargetLogprob, make_backend
from premem.sampling.checkpoints import Checkpoint

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One unit of work: some examples of one split, at one checkpoint."""

    checkpoint: Checkpoint
    split: str  # "train" or "test"
    shard: int
    example_ids: list[int]
    prompt_ids: list[list[int]]
    target_ids: list[list[int]] | None  # train only: gold targets to score
    seeds: list[int]
    max_new_tokens: list[int] = field(default_factory=list)  # per query: capped by the context left

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

    def __init__(self, backend: str, options: BackendOptions, params: SamplingParams):
        self.backend_name, self.options, self.params = backend, options, params
        self.backend = None
        self.loaded: Checkpoint | None = None

    def pid(self) -> int:
        return os.getpid()

    def load(self, checkpoint: Checkpoint):
        """The backend with this checkpoint loaded (kept while tasks stay on it: loading costs most)."""
        if self.loaded != checkpoint:
            if self.backend is not None:
                self.backend.close()
            self.backend = make_backend(self.backend_name, checkpoint, self.options)
            self.loaded = checkpoint
        return self.backend

    def run(self, task: Task) -> TaskResult:
        start = time.perf_counter()
        self.load(task.checkpoint)
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


def ray_init(address: str | None, num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)


def start_actors(n: int, backend: str, options: BackendOptions, params: SamplingParams, gpus_per_actor: float = 0):
    remote = ray.remote(max_restarts=-1, max_task_retries=0)(SamplerActor)
    opts = {"num_cpus": options.threads, "num_gpus": gpus_per_actor}
    return [remote.options(**opts).remote(backend, options, params) for _ in range(n)]


def run_tasks(
    actors: list,
    tasks: Iterable[Task],
    on_result: Callable[[TaskResult], None],
    on_retry: Callable[[Task], None] | None = None,
    max_attempts: int = 3,
) -> int:
    """Run tasks on actors with checkpoint affinity; call on_result for each result as it lands.

    Returns the number of task attempts retried after an actor died.
    """
    pending: dict[Checkpoint, deque[Task]] = {}
    for t in tasks:
        pending.setdefault(t.checkpoint, deque()).append(t)
    current: dict[int, Checkpoint | None] = {i: None for i in range(len(actors))}
    inflight: dict = {}  # object ref -> (actor index, task)
    retries = 0
    attempts: dict[str, int] = {}

    def next_task(i: int) -> Task | None:
        mine = current[i]
        if mine in pending and pending[mine]:
            return pending[mine].popleft()
        busy = {current[j] for j in current if j != i}
        options = [c for c, q in pending.items() if q]
        if not options:
            return None
        # prefer a checkpoint nobody holds; among those, the one with the most work left
        ckpt = max(options, key=lambda c: (c not in busy, len(pending[c])))
        current[i] = ckpt
        return pending[ckpt].popleft()

    idle = list(range(len(actors)))
    while idle or inflight:
        while idle:
            i = idle.pop()
            task = next_task(i)
            if task is None:
                continue
            inflight[actors[i].run.remote(task)] = (i, task)
        if not inflight:
            break
        done, _ = ray.wait(list(inflight), num_returns=1)
        i, task = inflight.pop(done[0])
        try:
            result = ray.get(done[0])
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            retries += 1
            attempts[task.part] = attempts.get(task.part, 0) + 1
            if attempts[task.part] > max_attempts:
                raise RuntimeError(f"{task.part}: an actor died on this task {max_attempts + 1} times; giving up") from e
            log.warning("actor %d died on %s (%s); retrying the task", i, task.part, type(e).__name__)
            pending.setdefault(task.checkpoint, deque()).appendleft(task)
            current[i] = None  # a restarted actor has nothing loaded
            if on_retry:
                on_retry(task)
        else:
            on_result(result)
        idle.append(i)
    return retries
