"""The execution layer against a real Ray: one cluster per process, one pool per process kept across jobs,
requests the cluster cannot place refused in seconds, actors killed on error, Ctrl-C and exit, and a
cluster with token authentication (two real nodes, started here) joined.

The local Ray is this module's (its own temp dir, shut down after); the two-node cluster and the
exiting process run in processes these tests start and kill by pid, with their own temp dirs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import ray

from premem.errors import InputError
from premem.execution import BackendOptions, ExecConfig, TaskFailed, pool, ray_init, release, run_tasks
from premem.execution.cluster import check_reachable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(local_ray):
    """No pool is live when the test starts, none after it."""
    release()
    yield
    release()


class Echo:
    """The smallest actor the pool runs: says who it is, runs a task by echoing it (or raising, if told to)."""

    def __init__(self, tag, verbose: bool = False):
        self.tag = tag

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: "Job"):
        if task.fail:
            raise ValueError(f"{task.part} failed on purpose")
        return task.part, os.getpid()


@dataclass
class Job:
    affinity: str
    part: str
    fail: bool = False

    @property
    def where(self) -> str:
        return f"job {self.part}"


def exec_cfg(actors: int = 1, threads: int = 1, gpus: float = 0, **kw) -> ExecConfig:
    return ExecConfig(options=BackendOptions(threads=threads), actors=actors, gpus_per_actor=gpus, **kw)


def ids(actors: list) -> list[str]:
    return [a._actor_id.hex() for a in actors]


def gone(pids: list[int], within: float = 20) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.2)
    return False


# -- one pool per process -------------------------------------------------------------------------


def test_a_second_pool_asking_the_same_reuses_the_live_actors(fresh):
    with pool(exec_cfg(actors=2), Echo, ("a",)) as first:
        pids = ray.get([a.pid.remote() for a in first])
    with pool(exec_cfg(actors=2), Echo, ("a",)) as again:  # the next job: no actor started
        assert ids(again) == ids(first) and ray.get([a.pid.remote() for a in again]) == pids
    with pool(exec_cfg(actors=2), Echo, ("a",), n=1) as fewer:  # a job with less work takes part of it
        assert ids(fewer) == ids(first)[:1]


def test_a_pool_asking_for_other_actors_replaces_the_live_one(fresh):
    tag = ["a"]
    with pool(exec_cfg(), Echo, (tag,)) as first:
        pid = ray.get(first[0].pid.remote())
    tag.append("b")  # the caller's object changed: the live actors were started with a copy of the old one
    with pool(exec_cfg(), Echo, (tag,)) as second:
        assert ids(second) != ids(first)
    assert gone([pid]), "the replaced pool's actor still runs"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_or_ctrl_c_in_the_block_kills_the_actors(fresh, error):
    with pytest.raises(error):
        with pool(exec_cfg(actors=2), Echo, ("a",)) as actors:
            pids = ray.get([a.pid.remote() for a in actors])
            before = ids(actors)
            raise error()
    assert gone(pids), "an actor outlived the error"
    with pool(exec_cfg(actors=2), Echo, ("a",)) as actors:  # the next job starts afresh
        assert not set(ids(actors)) & set(before)


def test_a_pool_in_use_is_not_replaced_under_its_user(fresh):
    with pool(exec_cfg(), Echo, ("a",)):
        with pytest.raises(InputError, match=r"^a pool of Echo actors is in use in this process; it cannot also start"):
            with pool(exec_cfg(), Echo, ("other",)):
                pytest.fail("the pool was replaced")


@pytest.mark.slow
def test_the_actors_die_with_the_process(tmp_path):
    script = textwrap.dedent("""
        import sys
        import ray
        from premem.execution import BackendOptions, ExecConfig, pool
        from tests.test_execution import Echo

        with pool(ExecConfig(options=BackendOptions(threads=1)), Echo, ("a",)) as actors:
            print(*ray.get([a.pid.remote() for a in actors]), flush=True)
    """)
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp"), "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        pids = [int(p) for p in done.stdout.split()]
        assert pids and gone(pids), "an actor outlived its process"
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


# -- the runner ---------------------------------------------------------------------------------


def test_run_tasks_runs_every_task_and_an_error_comes_back_in_one_line(fresh):
    with pool(exec_cfg(actors=2), Echo, ("a",)) as actors:
        got = []
        run_tasks(actors, [Job(a, f"{a}{i}") for a in "xy" for i in range(3)], got.append)
        assert sorted(part for part, _ in got) == ["x0", "x1", "x2", "y0", "y1", "y2"]
        with pytest.raises(TaskFailed) as failed:
            run_tasks(actors, [Job("x", "x9", fail=True)], got.append)
    assert str(failed.value) == ("job x9: ValueError: x9 failed on purpose "
                                 "(premem -v shows the actor's output and traceback)")


# -- the cluster ----------------------------------------------------------------------------------


def test_more_than_the_nodes_hold_is_refused_in_seconds(fresh):
    cpus = int(ray.cluster_resources()["CPU"])
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cases = [  # (actors, threads, GPUs per actor) -> what the message says fits
        (cpus + 1, 1, 0, f"{cpus + 1} actors of 1 CPU each .* 1 node: {cpus} CPUs?, {gpus} GPUs?, room for {cpus};"),
        (1, cpus + 1, 0, f"1 actor of {cpus + 1} CPUs each .* room for 0;"),
        (1, 1, gpus + 1, f"1 actor of 1 CPU and {gpus + 1} GPUs? each .* room for 0;"),
    ]
    for n, threads, per_actor, message in cases:
        start = time.perf_counter()
        with pytest.raises(InputError, match=f"^Ray cannot place {message} ask for fewer or smaller actors$"):
            with pool(exec_cfg(n, threads, per_actor), Echo, ("a",)):
                pytest.fail("the pool started")
        assert time.perf_counter() - start < 3
    with pool(exec_cfg(), Echo, ("a",)) as actors:  # what fits starts after a refusal of the same kind
        assert len(actors) == 1 and ray.get(actors[0].pid.remote()) != os.getpid()


def test_a_pool_that_does_not_start_in_time_says_what_is_free(fresh):
    cpus = ray.cluster_resources()["CPU"]
    holder = ray.remote(Echo).options(num_cpus=cpus).remote("holder")
    ray.get(holder.pid.remote())  # every CPU is taken now
    try:
        start = time.perf_counter()
        with pytest.raises(InputError, match=r"^Ray started 0 of 1 actors \(1 CPU each\) within 2 s; free now: 0 CPUs"):
            with pool(exec_cfg(), Echo, ("a",), timeout=2):
                pytest.fail("the pool started")
        assert time.perf_counter() - start < 10
    finally:
        ray.kill(holder)
    with pool(exec_cfg(actors=2 if cpus >= 2 else 1), Echo, ("a",)) as actors:  # the CPUs are free again
        pids = ray.get([a.pid.remote() for a in actors])
        assert len(set(pids)) == len(actors) and os.getpid() not in pids


def test_one_process_joins_one_cluster(fresh):
    here = ray.get_runtime_context().gcs_address
    refusal = f"already connected to the Ray cluster at {here}; it cannot also join 10.255.0.1:6379"
    with pytest.raises(InputError, match=refusal):
        ray_init("10.255.0.1:6379")
    with pytest.raises(InputError, match=refusal):
        with pool(exec_cfg(address="10.255.0.1:6379"), Echo, ("a",)):
            pytest.fail("the pool started on another cluster than asked")
    ray_init(here)  # the cluster it is on: fine
    ray_init(None)
    assert ray.get_runtime_context().gcs_address == here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_nobody_answers_is_refused_at_once():
    port = free_port()
    start = time.perf_counter()
    with pytest.raises(InputError, match=f"^address 127.0.0.1:{port}: no Ray cluster answers there"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 3


# -- a real two-node cluster with token authentication ------------------------------------------

JOIN = """
import sys, time, ray
from premem.errors import InputError
from premem.execution import check_resources, ray_init
try:
    ray_init(sys.argv[1])
    deadline = time.time() + 120
    while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() < deadline:
        time.sleep(0.5)
    check_resources(1, 2, 0)
except InputError as e:
    print("InputError:", e)
"""


def start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`ray start --block` in a session of its own: it and everything it starts are ours to kill."""
    with open(log, "w") as out:
        return subprocess.Popen(["ray", "start", "--block", "--disable-usage-stats", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def token_cluster(tmp_path):
    """A head and a worker node of 1 CPU each, with token authentication (the token in HOME/.ray)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(home), "RAY_TMPDIR": temp}
    nodes_env = env | {"RAY_AUTH_MODE": "token"}  # as a cluster's admin sets it (a joining node needs it too)
    port = free_port()
    common = ["--num-cpus=1", "--num-gpus=0", f"--dashboard-agent-listen-port={free_port()}",
              f"--metrics-export-port={free_port()}"]
    nodes = [start_node(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                         f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}", *common],
                        nodes_env, tmp_path / "head.log")]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert nodes[0].poll() is None, (tmp_path / "head.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        nodes.append(start_node([f"--address=127.0.0.1:{port}", *common], nodes_env, tmp_path / "worker.log"))
        yield {"address": f"127.0.0.1:{port}", "home": home, "env": env}
    finally:
        for node in nodes:
            kill_tree(node)
        shutil.rmtree(temp, ignore_errors=True)


def join(cluster: dict, home: Path) -> subprocess.CompletedProcess:
    env = cluster["env"] | {"HOME": str(home)}  # RAY_AUTH_MODE unset, as for a user who never heard of it
    return subprocess.run([sys.executable, "-c", JOIN, cluster["address"]], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_joining_a_token_cluster_and_a_request_no_node_holds(token_cluster, tmp_path):
    # with the token in ~/.ray, joining works; an actor of 2 CPUs fits on neither 1-CPU node
    done = join(token_cluster, token_cluster["home"])
    assert done.stdout.strip() == ("InputError: Ray cannot place 1 actor of 2 CPUs each (exec.actors, "
                                   "exec.options.threads, exec.gpus_per_actor): the cluster has 2 nodes: 1+1 CPUs, "
                                   "0 GPUs, room for 0; ask for fewer or smaller actors"), done.stdout + done.stderr[-3000:]
    # without it: one line saying what to set
    (tmp_path / "nohome").mkdir()
    done = join(token_cluster, tmp_path / "nohome")
    address = token_cluster["address"]
    assert done.stdout.strip() == (f"InputError: address {address}: cannot join the Ray cluster there: "
                                   "it uses token authentication, and its token is not here: put the cluster's token "
                                   "in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN) and set "
                                   "RAY_AUTH_MODE=token"), done.stdout + done.stderr[-3000:]
