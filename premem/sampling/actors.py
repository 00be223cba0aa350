"""The sampler actor: a Ray actor that holds one backend and the checkpoint it has loaded, and the tasks it runs.

Each actor owns one backend instance (one per GPU; on CPU, a set number of threads each). The
execution layer (premem.execution) starts them, keeps them across jobs in one process, and feeds
them tasks with checkpoint affinity: loading a checkpoint costs far more than scoring one shard of
it, so an actor stays on the checkpoint it has loaded while that checkpoint has shards left.

An actor keeps its engine for the whole run and across runs of one architecture: the next
checkpoint's weights are loaded into the engine it holds (Backend.reload; for vLLM in place in the
running engine, where a new one costs ~30 s on CPU). Only a checkpoint the engine cannot take (another
architecture, config or tokenizer; a LoRA adapter or GGUF file the backend does not reload) closes it
and starts a new one. `exec.options.reuse_engine=false` starts a new engine for every checkpoint (the
old way; benchmarks/engine_reuse.py compares the two).

An actor also grades what it samples (premem.sampling.results) when its task says with which grader and
against which golds: MATH grading costs milliseconds an answer, which on the driver would be minutes per
checkpoint; here it runs on every actor's CPUs, the math-verify helpers kept across tasks, and the driver
only writes the rows the actor returns.

Because a task's result depends only on the task (per-query seeds), a task re-run after its actor
died gives the rows the dead actor would have given.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

from premem.data.grading import Grader, get_grader
from premem.execution import BackendOptions
from premem.logs import quiet_libraries
from premem.runs import Checkpoint
from premem.sampling.backend import Completion, SamplingParams, TargetLogprob
from premem.sampling.engines import make_backend
from premem.sampling.results import result_tables


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
    # memorization-aware sampling (premem.sampling.skipping.SkipRule): after the perplexities, which queries to
    # sample; None: all
    skip: object | None = None
    # grading in the actor: the grader's name (premem.data.get_grader), each query's gold answer, and which
    # extraction counts in n_correct; grader None returns the completions ungraded
    grader: str | None = None
    golds: list[str] | None = None
    count: str = "strict"

    @property
    def part(self) -> str:
        c = self.checkpoint
        return f"run={c.run}.step={c.step}.split={self.split}.shard={self.shard:05d}"


@dataclass
class TaskResult:
    task: Task
    completions: list[list[Completion]] | None  # None when graded: the samples table holds them
    targets: list[TargetLogprob] | None
    seconds: float
    pid: int
    samples: object | None = None  # pandas DataFrames of a graded task (premem.sampling.results), ready to write
    scores: object | None = None
    grading_s: float = 0.0  # of `seconds`, the time spent grading


@dataclass
class EngineStats:
    """An actor's engine loads: how many engines it started and checkpoints it reloaded into a running one, and
    the seconds each took (closing the engine before included): what engine reuse saves."""

    started: int = 0
    started_s: float = 0.0
    reloaded: int = 0
    reloaded_s: float = 0.0

    def count(self, what: str, since: float) -> None:
        setattr(self, what, getattr(self, what) + 1)
        setattr(self, what + "_s", getattr(self, what + "_s") + time.perf_counter() - since)


class SamplerActor:
    """Holds one backend and the checkpoint it has loaded."""

    def __init__(self, backend: str, options: BackendOptions, params: SamplingParams, verbose: bool = False):
        quiet_libraries(verbose)  # an actor is a process of its own, maybe on another machine
        self.backend_name, self.options, self.params = backend, options, params
        self.backend = None
        self.loaded: Checkpoint | None = None
        self.stats = EngineStats()
        self.graders: dict[str, Grader] = {}  # kept: MathGrader's helper processes start once per actor

    def pid(self) -> int:
        return os.getpid()

    def load(self, checkpoint: Checkpoint, cache_dir: str | None = None):
        """The backend with this checkpoint loaded (kept while tasks stay on it: loading costs most).

        Another checkpoint goes into the engine held when it can (options.reuse_engine and the backend's
        reload: same architecture, config and tokenizer; a new engine costs ~30 s on vLLM); else the engine
        is closed and a new one built."""
        if self.loaded == checkpoint:
            return self.backend
        backend, self.backend, self.loaded = self.backend, None, None  # a failed load leaves nothing half loaded
        start = time.perf_counter()
        if backend is not None and self.options.reuse_engine:
            try:
                reloaded = backend.reload(checkpoint)
            except BaseException:
                backend.close()  # a reload that failed midway may have left some old weights in
                raise
            if reloaded:
                self.backend, self.loaded = backend, checkpoint
                self.stats.count("reloaded", start)
                return backend
        if backend is not None:
            backend.close()
        options = self.options if cache_dir is None else dataclasses.replace(self.options, cache_dir=cache_dir)
        self.backend = make_backend(self.backend_name, checkpoint, options)
        self.loaded = checkpoint
        self.stats.count("started", start)
        return self.backend

    def engine_stats(self) -> EngineStats:
        """How this actor's checkpoints were loaded so far (every job it served): engines started, checkpoints
        reloaded into one, seconds each."""
        return dataclasses.replace(self.stats)

    def run(self, task: Task) -> TaskResult:
        start = time.perf_counter()
        self.load(task.checkpoint, task.cache_dir)
        targets = None
        if task.target_ids is not None:
            targets = self.backend.target_logprobs(task.prompt_ids, task.target_ids)
        only = task.skip.to_sample(targets) if task.skip is not None else None  # perplexities first, then this
        completions = generate_capped(self.backend, task, self.params, only)
        if task.grader is None:
            return TaskResult(task, completions, targets, time.perf_counter() - start, os.getpid())
        graded = time.perf_counter()
        samples, scores = result_tables(task, completions, targets, self.grader(task.grader))
        end = time.perf_counter()
        return TaskResult(task, None, None, end - start, os.getpid(), samples, scores, end - graded)

    def grader(self, name: str) -> Grader:
        if name not in self.graders:
            self.graders[name] = get_grader(name)
        return self.graders[name]


def generate_capped(backend, task: Task, params: SamplingParams, only: list[bool] | None = None
                    ) -> list[list[Completion]]:
    """Generate, grouping queries by their max_new_tokens (only long prompts get a lower cap); a query `only`
    marks False gets no completions."""
    caps = task.max_new_tokens or [params.max_new_tokens] * len(task.prompt_ids)
    out: list[list[Completion]] = [[] for _ in caps]
    for cap in sorted(set(caps)):
        idx = [i for i, c in enumerate(caps) if c == cap and (only is None or only[i])]
        if not idx:
            continue
        p = SamplingParams(**{**params.__dict__, "max_new_tokens": cap})
        for i, comp in zip(idx, backend.generate([task.prompt_ids[i] for i in idx], p, [task.seeds[i] for i in idx])):
            out[i] = comp
    return out
