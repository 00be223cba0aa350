"""The actor pool against what Ray reports: a request the cluster cannot place is refused in seconds,
a pool that does not start in time is an error, a second cluster in one process is refused, and a
cluster with token authentication (on two real nodes, started here) can be joined.

The local Ray is this test process's (as in the other sampling tests); the two-node cluster runs
in processes these tests start and kill by pid, with their own temp dir, HOME and ports.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import ray

from premem.errors import InputError
from premem.sampling.actors import SamplerActor, actor_pool, check_reachable, ray_init
from premem.sampling.backend import BackendOptions, SamplingParams


@pytest.fixture(scope="module")
def local_ray():
    """This process's local Ray (its own temp dir when this module starts it; shut down after)."""
    if ray.is_initialized():
        yield
        return
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    ray_init(None)
    yield
    ray.shutdown()
    os.environ.pop("RAY_TMPDIR") if saved is None else os.environ.update(RAY_TMPDIR=saved)
    shutil.rmtree(temp, ignore_errors=True)


def pool(n: int, threads: int, gpus: float = 0, timeout: float = 300):
    args = ("hf", BackendOptions(threads=threads), SamplingParams())
    return actor_pool(SamplerActor, n, args, threads, gpus, timeout)


def test_more_than_the_nodes_hold_is_refused_in_seconds(local_ray):
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
            with pool(n, threads, per_actor):
                pytest.fail("the pool started")
        assert time.perf_counter() - start < 3


def test_a_pool_that_does_not_start_in_time_says_what_is_free(local_ray):
    cpus = ray.cluster_resources()["CPU"]
    holder = ray.remote(SamplerActor).options(num_cpus=cpus).remote("hf", BackendOptions(), SamplingParams())
    ray.get(holder.pid.remote())  # every CPU is taken now
    try:
        start = time.perf_counter()
        with pytest.raises(InputError, match=r"^Ray started 0 of 1 actors \(1 CPU each\) within 2 s; free now: 0 CPUs"):
            with pool(1, 1, timeout=2):
                pytest.fail("the pool started")
        assert time.perf_counter() - start < 10
    finally:
        ray.kill(holder)
    with pool(2 if cpus >= 2 else 1, 1) as actors:  # the CPUs are free again: a pool starts and its actors run
        pids = ray.get([a.pid.remote() for a in actors])
        assert len(set(pids)) == len(actors) and os.getpid() not in pids


def test_one_process_joins_one_cluster(local_ray):
    here = ray.get_runtime_context().gcs_address
    refusal = f"already connected to the Ray cluster at {here}; it cannot also join 10.255.0.1:6379"
    with pytest.raises(InputError, match=refusal):
        ray_init("10.255.0.1:6379")
    ray_init(here)  # the cluster it is on: fine
    ray_init(None)
    assert ray.get_runtime_context().gcs_address == here


class ReportingActor(SamplerActor):
    """A sampler actor that also says how its transformers is set to talk."""

    def transformers_output(self) -> tuple[int, bool]:
        from transformers.utils import logging as hf_logging

        return hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()


def test_actors_keep_the_libraries_quiet(local_ray):
    args = ("hf", BackendOptions(), SamplingParams())
    with actor_pool(ReportingActor, 1, args, 1) as (actor,):
        assert ray.get(actor.transformers_output.remote()) == (logging.ERROR, False)


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
from premem.sampling.actors import check_resources, ray_init
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
    assert done.stdout.strip() == ("InputError: Ray cannot place 1 actor of 2 CPUs each (actors, options.threads, "
                                   "gpus_per_actor): the cluster has 2 nodes: 1+1 CPUs, 0 GPUs, room for 0; ask for "
                                   "fewer or smaller actors"), done.stdout + done.stderr[-3000:]
    # without it: one line saying what to set
    (tmp_path / "nohome").mkdir()
    done = join(token_cluster, tmp_path / "nohome")
    address = token_cluster["address"]
    assert done.stdout.strip() == (f"InputError: address {address}: cannot join the Ray cluster there: "
                                   "it uses token authentication, and its token is not here: put the cluster's token "
                                   "in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN) and set "
                                   "RAY_AUTH_MODE=token"), done.stdout + done.stderr[-3000:]
