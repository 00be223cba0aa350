"""Sampler actors on Ray, and the scheduler that feeds them (checkpoint, shard) tasks.

Each actor owns one backend instance (one per GPU; on CPU, a set number of threads each).
Loading a checkpoint costs far more than scoring one shard of it, so the scheduler keeps
an actor on the checkpoint it has loaded for as long as that checkpoint has shards left
(checkpoint affinity), and only then moves it to the checkpoint with the most work left.

An actor that dies mid-task (killed, out of memory, node lost) is restarted by Ray
(max_restarts=-1); the scheduler puts its task back at the front of the queue, where the
next free actor, the restarted one included, takes it. Because a task's result depends only
on the task (per-query seeds), re-running it gives the rows the dead actor would have given.

Nothing waits on Ray in silence: a pool that the cluster can never place (more actors, threads
or GPUs than its nodes have) is refused in seconds, naming what the nodes hold; one that does not
start within ACTOR_START_TIMEOUT_S (other jobs holding the resources) is an error; and an
exception raised in a task reaches the caller as one line naming the checkpoint and the cause
(TaskFailed), the remote traceback logged at debug level (premem -v).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import ray

from premem.errors import InputError
from premem.logs import quiet_libraries, verbose
from premem.sampling.backend import BackendOptions, Completion, SamplingParams, TargetLogprob, make_backend
from premem.sampling.checkpoints import Checkpoint

log = logging.getLogger(__name__)

ACTOR_START_TIMEOUT_S = 300.0
"""How long a pool the cluster could place may wait for its resources (held by other jobs) before failing."""


class TaskFailed(InputError):
    """A task failed on an actor (it raised, or its actor kept dying): one line naming checkpoint and cause."""


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

    def __init__(self, backend: str, options: BackendOptions, params: SamplingParams, verbose: bool = False):
        quiet_libraries(verbose)  # an actor is a process of its own, maybe on another machine
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
    """Start a local Ray (no address) or join the cluster at address; Ray allows one per process."""
    if ray.is_initialized():
        check_same_cluster(address)
        return
    loud = verbose()
    # Ray's own messages (its logger; the actors' output) only with premem -v
    settings = {"logging_level": logging.INFO if loud else logging.ERROR, "log_to_driver": loud}
    if address:
        join(address, settings)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **settings)


def join(address: str, settings: dict) -> None:
    """Join the cluster at address, or fail in one line (Ray itself retries for minutes, then prints pages)."""
    check_reachable(address)
    token_auth_environment(address)
    try:
        ray.init(address=address, **settings)
    except (ConnectionError, RuntimeError) as e:
        log.debug("joining %s failed", address, exc_info=True)
        text = f"{e} {e.__cause__}"
        if "InvalidAuthToken" in text or "AuthenticationError" in text:
            why = ("it uses token authentication, and its token is not here: put the cluster's token in "
                   "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN) and set RAY_AUTH_MODE=token")
        else:
            why = _first_line(e)
        raise InputError(f"address {address}: cannot join the Ray cluster there: {why}") from None


def check_reachable(address: str) -> None:
    """A host:port address must answer: Ray would retry a dead one for minutes without a word."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not port.isdigit():
        return  # Ray finds "auto" itself, and says what is wrong with an address it cannot parse
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except OSError as e:
        raise InputError(f"address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def check_same_cluster(address: str | None) -> None:
    """Refuse to silently use another cluster than the one asked for: Ray cannot switch within a process."""
    if not address or address == "auto":
        return
    current = ray.get_runtime_context().gcs_address
    if not _same_endpoint(address, current):
        raise InputError(
            f"address: this process is already connected to the Ray cluster at {current}; it cannot also join "
            f"{address} (run premem in a new process to join another cluster)"
        )


def _same_endpoint(asked: str, current: str) -> bool:
    """asked and current name the same host:port (localhost, 127.0.0.1 and this node's address alike)."""
    host, _, port = asked.removeprefix("ray://").rpartition(":")
    cur_host, _, cur_port = current.rpartition(":")
    local = {"localhost", "127.0.0.1", ray.util.get_node_ip_address()}
    return port == cur_port and (host == cur_host or (host in local and cur_host in local))


def token_auth_environment(address: str) -> None:
    """Joining a cluster by address: use token authentication when this machine has a Ray token.

    Ray 2.60 turns token authentication on for the clusters it starts (ray.init makes a token in
    ~/.ray/auth_token; `ray start --head` uses it when there), but a process joining by address
    sends the token only with RAY_AUTH_MODE=token set. Set explicitly, RAY_AUTH_MODE is left alone.
    """
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (token.is_file() or os.environ.get("RAY_AUTH_TOKEN")):
        log.debug("joining %s with token authentication (%s)", address, token)
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")  # Ray read RAY_AUTH_MODE when it was imported: have it read it again (as Ray does)


# -- the actor pool ----------------------------------------------------------------------------


@contextmanager
def actor_pool(actor_cls: type, n: int, args: tuple, threads: int, gpus_per_actor: float = 0,
               timeout: float = ACTOR_START_TIMEOUT_S):
    """n started actors of actor_cls(*args, verbose), each holding `threads` CPUs and gpus_per_actor GPUs;
    killed on exit. Refuses what the cluster cannot place before starting any (needs ray_init first)."""
    check_resources(n, threads, gpus_per_actor)
    remote = ray.remote(max_restarts=-1, max_task_retries=0)(actor_cls)
    actors = [remote.options(num_cpus=threads, num_gpus=gpus_per_actor).remote(*args, verbose()) for _ in range(n)]
    try:
        wait_ready(actors, threads, gpus_per_actor, timeout)
        yield actors
    finally:
        if ray.is_initialized():  # a Ray shut down inside the block took its actors with it
            for a in actors:
                ray.kill(a)


def check_resources(n: int, cpus: float, gpus: float) -> None:
    """Refuse n actors of (cpus, gpus) each when the cluster's nodes cannot hold them all at once.

    Per node: an actor lives on one node, so two 1-CPU nodes hold no 2-CPU actor though the
    cluster has 2 CPUs. Ray would queue such a request forever without a word.
    """
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    room = sum(_fits(r, cpus, gpus) for r in nodes)
    total_gpus = sum(r.get("GPU", 0) for r in nodes)
    if room < n:
        need = _amount(cpus, "CPU") + (f" and {_amount(gpus, 'GPU')}" if gpus else "")
        raise InputError(
            f"Ray cannot place {n} actor{'s' if n > 1 else ''} of {need} each (actors, options.threads, "
            f"gpus_per_actor): {_describe(nodes)}, room for {room}; ask for fewer or smaller actors"
        )
    if not gpus and total_gpus:
        log.warning("the cluster has %g GPUs but gpus_per_actor=0: the actors run on CPU", total_gpus)


def _fits(resources: dict, cpus: float, gpus: float) -> int:
    """How many actors of (cpus, gpus) one node holds."""
    asked = [(name, amount) for name, amount in (("CPU", cpus), ("GPU", gpus)) if amount]
    return min(math.floor(resources.get(name, 0) / amount + 1e-9) for name, amount in asked) if asked else 1 << 30


def _describe(nodes: list[dict]) -> str:
    """'1 node: 2 CPUs, 0 GPUs' or '2 nodes: 1+1 CPUs, 0 GPUs'."""
    cpus = "+".join(_num(r.get("CPU", 0)) for r in nodes)
    cpus += " CPU" if sum(r.get("CPU", 0) for r in nodes) == 1 else " CPUs"
    gpus = _amount(sum(r.get("GPU", 0) for r in nodes), "GPU")
    return f"the cluster has {_amount(len(nodes), 'node')}: {cpus}, {gpus}"


def _amount(value: float, unit: str) -> str:
    """'1 CPU', '2 CPUs', '0.5 GPUs'."""
    return f"{_num(value)} {unit}{'' if value == 1 else 's'}"


def _num(value: float) -> str:
    return f"{value:g}"


def wait_ready(actors: list, cpus: float, gpus: float, timeout: float) -> None:
    """Wait until every actor runs: a word when it takes a while, an error when not within timeout."""
    refs = [a.pid.remote() for a in actors]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=min(timeout, 20))
    if waiting and timeout > 20:
        log.warning("waiting for Ray to start %d of %d actors (%s free now)", len(waiting), len(refs), _free())
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout - 20)
    try:
        ray.get(ready)
    except ray.exceptions.RayError as e:
        log.debug("actor start failed:\n%s", e)
        raise TaskFailed(f"a Ray actor failed to start: {_cause(e)}") from None
    if waiting:
        each = _amount(cpus, "CPU") + (f", {_amount(gpus, 'GPU')}" if gpus else "")
        raise InputError(f"Ray started {len(ready)} of {len(refs)} actors ({each} each) within {timeout:g} s; "
                         f"free now: {_free()} (other work holds the rest, or the machine is overloaded)")


def _free() -> str:
    free = ray.available_resources()
    return f"{_amount(free.get('CPU', 0), 'CPU')}, {_amount(free.get('GPU', 0), 'GPU')}"


def start_actors(n: int, backend: str, options: BackendOptions, params: SamplingParams, gpus_per_actor: float = 0):
    """A pool of n sampler actors (a context manager: see actor_pool)."""
    return actor_pool(SamplerActor, n, (backend, options, params), options.threads, gpus_per_actor)


# -- running tasks -----------------------------------------------------------------------------


def where(task) -> str:
    """The checkpoint a task works on, as a message names it: run, step and path."""
    c = task.checkpoint
    return f"run {c.run} step {c.step} ({c.location})"


def _cause(e: ray.exceptions.RayError) -> str:
    """What went wrong on the actor, in one line: the exception raised there (without Ray's wrapping and the
    remote traceback), or Ray's own first line (an actor that died)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, InputError):
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def run_tasks(
    actors: list,
    tasks: Iterable[Task],
    on_result: Callable[[TaskResult], None],
    on_retry: Callable[[Task], None] | None = None,
    max_attempts: int = 3,
) -> int:
    """Run tasks on actors with checkpoint affinity; call on_result for each result as it lands.

    Returns the number of task attempts retried after an actor died. A task that raises, or whose
    actor dies on it more than max_attempts times, ends the run with TaskFailed.
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
                log.debug("last failure of %s:\n%s", task.part, e)
                raise TaskFailed(
                    f"{where(task)}: an actor died on this task {max_attempts + 1} times ({_cause(e)}); "
                    "giving up (out of memory? try fewer actors or a smaller options.batch_size)"
                ) from None
            log.warning("actor %d died on %s (%s); retrying the task", i, task.part, type(e).__name__)
            pending.setdefault(task.checkpoint, deque()).appendleft(task)
            current[i] = None  # a restarted actor has nothing loaded
            if on_retry:
                on_retry(task)
        except ray.exceptions.RayTaskError as e:  # the task raised: running it again would raise again
            log.debug("%s failed on the actor:\n%s", task.part, e)
            hint = "" if verbose() else " (premem -v shows the actor's output and traceback)"
            raise TaskFailed(f"{where(task)}: {_cause(e)}{hint}") from None
        else:
            on_result(result)
        idle.append(i)
    return retries
