"""The Ray cluster a process works on: started or joined once, and asked what it can place.

Ray allows one cluster per process, so `ray_init` starts a local Ray (no address) or joins the
cluster at an address the first time, and after that only checks that a later caller asks for the
same one: another address is an InputError, never silently the first one. A Ray that premem
started is shut down when the interpreter exits.

Nothing waits on Ray in silence: an address nobody answers is refused at once, a cluster with
token authentication is joined with the token this machine holds, and `check_resources` refuses
actors that no node can hold, in seconds, naming what the nodes have.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
from pathlib import Path

import ray

from premem.errors import InputError
from premem.logs import verbose

log = logging.getLogger(__name__)

_shutdown_registered = False  # Ray is one per process: whether premem has asked to shut down the one it started


def ray_init(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray (no address) or join the cluster at address, once per process.

    Called again, it checks that address names the cluster this process is on (None and "auto" take
    whichever it is): Ray cannot switch clusters within a process, and a silently ignored address
    would run the work somewhere else than asked."""
    global _shutdown_registered
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
    if not _shutdown_registered:  # the pool's own exit hook, registered later, runs first and kills its actors
        atexit.register(_shutdown)
        _shutdown_registered = True


def _shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


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
            why = first_line(e)
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


def first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


# -- what the cluster can place -----------------------------------------------------------------


def check_resources(n: int, cpus: float, gpus: float) -> None:
    """Refuse n actors of (cpus, gpus) each when the cluster's nodes cannot hold them all at once.

    Per node: an actor lives on one node, so two 1-CPU nodes hold no 2-CPU actor though the
    cluster has 2 CPUs. Ray would queue such a request forever without a word.
    """
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    room = sum(_fits(r, cpus, gpus) for r in nodes)
    total_gpus = sum(r.get("GPU", 0) for r in nodes)
    if room < n:
        need = amount(cpus, "CPU") + (f" and {amount(gpus, 'GPU')}" if gpus else "")
        raise InputError(
            f"Ray cannot place {n} actor{'s' if n > 1 else ''} of {need} each (exec.actors, exec.options.threads, "
            f"exec.gpus_per_actor): {_describe(nodes)}, room for {room}; ask for fewer or smaller actors"
        )
    if not gpus and total_gpus:
        log.warning("the cluster has %g GPUs but exec.gpus_per_actor=0: the actors run on CPU", total_gpus)


def _fits(resources: dict, cpus: float, gpus: float) -> int:
    """How many actors of (cpus, gpus) one node holds."""
    asked = [(name, need) for name, need in (("CPU", cpus), ("GPU", gpus)) if need]
    return min(math.floor(resources.get(name, 0) / need + 1e-9) for name, need in asked) if asked else 1 << 30


def _describe(nodes: list[dict]) -> str:
    """'1 node: 2 CPUs, 0 GPUs' or '2 nodes: 1+1 CPUs, 0 GPUs'."""
    cpus = "+".join(f"{r.get('CPU', 0):g}" for r in nodes)
    cpus += " CPU" if sum(r.get("CPU", 0) for r in nodes) == 1 else " CPUs"
    gpus = amount(sum(r.get("GPU", 0) for r in nodes), "GPU")
    return f"the cluster has {amount(len(nodes), 'node')}: {cpus}, {gpus}"


def amount(value: float, unit: str) -> str:
    """'1 CPU', '2 CPUs', '0.5 GPUs'."""
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def free() -> str:
    """What the cluster has free now: '2 CPUs, 0 GPUs'."""
    available = ray.available_resources()
    return f"{amount(available.get('CPU', 0), 'CPU')}, {amount(available.get('GPU', 0), 'GPU')}"
