"""One pool of Ray actors per process, kept across jobs, and the runner that feeds it tasks.

Starting Ray and an actor (a Python process that imports torch and loads an engine) takes
seconds, far more than scoring a small run. So the pool outlives the `with pool(...)` that asked
for it: the next `with pool(...)` in this process asking for the same actor class, arguments and
resources gets the same live actors, with whatever engine they hold still loaded. Asking for
another kind kills the live pool first (one per process: its actors hold the CPUs and GPUs the
next would need). Actors are killed when the process exits, and when an error (or Ctrl-C) leaves
the block that used them: a task may still be running on them, or an engine half loaded.

The layer is generic: the stage that defines the work hands it the actor class. An actor class
has `pid()` (its process id: the pool waits on it to know the actor runs) and `run(task)`. A
task has `affinity` (what an actor must have loaded to run it: tasks that share it stay on one
actor), `part` (its name, unique in a job) and `where` (what it works on, as a message names it).

Nothing waits in silence: a pool the cluster can never place is refused in seconds
(cluster.check_resources), one that does not start within ACTOR_START_TIMEOUT_S is an error, and
an exception raised in a task reaches the caller as one line naming where and why (TaskFailed),
the remote traceback logged at debug level (premem -v).
"""

from __future__ import annotations

import atexit
import copy
import logging
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Protocol

import ray

from premem.errors import InputError
from premem.execution import ExecConfig
from premem.execution.cluster import amount, check_resources, first_line, free, ray_init
from premem.logs import verbose

log = logging.getLogger(__name__)

ACTOR_START_TIMEOUT_S = 300.0
"""How long a pool the cluster could place may wait for its resources (held by other jobs) before failing."""
READY_CHECK_S = 30.0
"""How long a kept actor may take to answer before the pool is started afresh (Ray restarting a dead one)."""


class TaskFailed(InputError):
    """A task failed on an actor (it raised, or its actor kept dying): one line naming where and the cause."""


class Task(Protocol):
    @property
    def affinity(self) -> Hashable: ...

    @property
    def part(self) -> str: ...

    @property
    def where(self) -> str: ...


@dataclass
class _Live:
    """The process's pool: its actors, what they were started as, and the Ray session they live in."""

    key: tuple
    session: tuple
    actors: list = field(default_factory=list)
    users: int = 0  # `with pool(...)` blocks using it now


_live: _Live | None = None  # one per process, by design: see the module docstring
_exit_registered = False


@contextmanager
def pool(cfg: ExecConfig, actor_cls: type, args: tuple = (), n: int | None = None,
         timeout: float = ACTOR_START_TIMEOUT_S):
    """n (default cfg.actors) running actors of actor_cls(*args, verbose), each holding cfg.options.threads CPUs
    and cfg.gpus_per_actor GPUs: the live ones when an earlier block asked for the same, else started now (Ray
    too, once per process), after refusing what the cluster cannot place. Kept when the block ends; killed
    when it raises, and at exit."""
    global _live
    n = cfg.actors if n is None else n
    ray_init(cfg.address)
    cpus, gpus = cfg.options.threads, cfg.gpus_per_actor
    # a copy: a caller changing its objects later must not change what the live actors were started with
    key = (actor_cls, copy.deepcopy(tuple(args)), cpus, gpus, verbose())
    live = _reusable(key)
    if live is None:
        if _live is not None and _live.users and _live.session == _session():
            raise InputError(f"a pool of {_live.key[0].__name__} actors is in use in this process; it cannot also "
                             f"start {actor_cls.__name__} actors (one pool per process)")
        release()
        live = _live = _Live(key, _session())
    if len(live.actors) < n:  # a new pool, or one that has fewer actors than this job asks for
        check_resources(n, cpus, gpus)
        _start(live, n, timeout)
    live.users += 1
    try:
        yield live.actors[:n]
    except BaseException:
        release()  # a task may still run on them, or an engine be half loaded: the next job starts afresh
        raise
    finally:
        live.users -= 1


def release() -> None:
    """Kill the process's pool, if it has one (the next `with pool(...)` starts new actors)."""
    global _live
    live, _live = _live, None
    if live is None or not ray.is_initialized() or live.session != _session():
        return  # a Ray shut down (or restarted) took its actors with it
    for a in live.actors:
        try:
            ray.kill(a)
        except Exception:  # already dead, or Ray going down: nothing left to kill
            log.debug("killing an actor failed", exc_info=True)


def _session() -> tuple:
    """This process's Ray connection: another after a shutdown and a new start, even on the same cluster."""
    context = ray.get_runtime_context()
    return context.get_job_id(), context.get_node_id()


def _reusable(key: tuple) -> _Live | None:
    """The live pool when it was started as key in this Ray session and its actors answer."""
    live = _live
    if live is None or live.key != key or live.session != _session():
        return None
    try:
        wait_ready(live.actors, key[2], key[3], READY_CHECK_S)
        return live
    except InputError as e:
        log.warning("the kept Ray actors do not answer (%s); starting new ones", e)
        release()
        return None


def _start(live: _Live, n: int, timeout: float) -> None:
    """Start actors until the pool has n; if they do not all run, kill the pool."""
    global _exit_registered
    actor_cls, args, cpus, gpus, loud = live.key
    remote = ray.remote(max_restarts=-1, max_task_retries=0)(actor_cls)
    new = [remote.options(num_cpus=cpus, num_gpus=gpus).remote(*args, loud) for _ in range(n - len(live.actors))]
    log.debug("starting %d %s actors (%s, %s each)", len(new), actor_cls.__name__, amount(cpus, "CPU"),
              amount(gpus, "GPU"))
    live.actors.extend(new)
    if not _exit_registered:  # registered after ray_init's: runs before Ray is shut down
        atexit.register(release)
        _exit_registered = True
    try:
        wait_ready(new, cpus, gpus, timeout)
    except BaseException:
        release()
        raise


def wait_ready(actors: list, cpus: float, gpus: float, timeout: float) -> None:
    """Wait until every actor runs: a word when it takes a while, an error when not within timeout."""
    if not actors:
        return
    refs = [a.pid.remote() for a in actors]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=min(timeout, 20))
    if waiting and timeout > 20:
        log.warning("waiting for Ray to start %d of %d actors (%s free now)", len(waiting), len(refs), free())
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout - 20)
    try:
        ray.get(ready)
    except ray.exceptions.RayError as e:
        log.debug("actor start failed:\n%s", e)
        raise TaskFailed(f"a Ray actor failed to start: {_cause(e)}") from None
    if waiting:
        each = amount(cpus, "CPU") + (f", {amount(gpus, 'GPU')}" if gpus else "")
        raise InputError(f"Ray started {len(ready)} of {len(refs)} actors ({each} each) within {timeout:g} s; "
                         f"free now: {free()} (other work holds the rest, or the machine is overloaded)")


# -- running tasks -----------------------------------------------------------------------------


def _cause(e: ray.exceptions.RayError) -> str:
    """What went wrong on the actor, in one line: the exception raised there (without Ray's wrapping and the
    remote traceback), or Ray's own first line (an actor that died)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, InputError):
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {first_line(cause)}"
    return first_line(e)


def run_tasks(
    actors: list,
    tasks: Iterable[Task],
    on_result: Callable[[object], None],
    on_retry: Callable[[Task], None] | None = None,
    max_attempts: int = 3,
) -> int:
    """Run tasks on actors, keeping each actor on what it has loaded; call on_result for each result as it lands.

    An actor stays on its affinity (the checkpoint it has loaded: loading costs far more than one task) while
    tasks for it are left, then moves to the one with the most work left that no other actor holds. An actor
    that dies mid-task (killed, out of memory, node lost) is restarted by Ray; its task goes back to the front
    of the queue. Returns the number of task attempts retried so. A task that raises, or whose actor dies on
    it more than max_attempts times, ends the run with TaskFailed.

    on_result may return more tasks (ones that needed this result: premem score's step order per shard);
    they join the queue, and actors that found nothing to do are woken for them.
    """
    pending: dict[Hashable, deque] = {}
    for t in tasks:
        pending.setdefault(t.affinity, deque()).append(t)
    current: dict[int, Hashable | None] = {i: None for i in range(len(actors))}
    inflight: dict = {}  # object ref -> (actor index, task)
    retries = 0
    attempts: dict[str, int] = {}

    def next_task(i: int):
        mine = current[i]
        if mine in pending and pending[mine]:
            return pending[mine].popleft()
        busy = {current[j] for j in current if j != i}
        options = [a for a, q in pending.items() if q]
        if not options:
            return None
        # prefer what nobody holds; among those, the one with the most work left
        chosen = max(options, key=lambda a: (a not in busy, len(pending[a])))
        current[i] = chosen
        return pending[chosen].popleft()

    idle = list(range(len(actors)))
    parked: list[int] = []  # actors that found nothing to do: woken when on_result adds tasks
    while idle or inflight:
        while idle:
            i = idle.pop()
            task = next_task(i)
            if task is not None:
                inflight[actors[i].run.remote(task)] = (i, task)
            else:
                parked.append(i)
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
                    f"{task.where}: an actor died on this task {max_attempts + 1} times ({_cause(e)}); "
                    "giving up (out of memory? try fewer exec.actors or a smaller exec.options.batch_size)"
                ) from None
            log.warning("actor %d died on %s (%s); retrying the task", i, task.part, type(e).__name__)
            pending.setdefault(task.affinity, deque()).appendleft(task)
            current[i] = None  # a restarted actor has nothing loaded
            if on_retry:
                on_retry(task)
        except ray.exceptions.RayTaskError as e:  # the task raised: running it again would raise again
            log.debug("%s failed on the actor:\n%s", task.part, e)
            hint = "" if verbose() else " (premem -v shows the actor's output and traceback)"
            raise TaskFailed(f"{task.where}: {_cause(e)}{hint}") from None
        else:
            more = list(on_result(result) or ())
            for t in more:
                pending.setdefault(t.affinity, deque()).append(t)
            if more:
                idle.extend(parked)
                parked.clear()
        idle.append(i)
    return retries
