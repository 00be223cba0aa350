"""Where a quickstart's time goes to Ray: the quickstart in this process from scratch, then again (the
re-run that reuses everything), each timed in total and inside Ray's start-up.

    python benchmarks/pool_startup.py                 # the quickstart's default settings (minutes on 2 cores)
    python benchmarks/pool_startup.py --small         # a small setting (about a minute)
    python benchmarks/pool_startup.py --small sweep.epochs=[1,2]   # and any KEY=VALUE of the quickstart
    python benchmarks/pool_startup.py --small --checkout ../old      # the premem of another checkout

Ray's start-up is measured by wrapping Ray itself, not premem, so the same script times an older
checkout too: the time inside ray.init, inside creating actors (ActorClass._remote), and inside the
waits on actors' pid() calls (how premem, old and new, waits for an actor to run). Prints one row per
invocation:

    invocation      total s  ray.init s  actors s  actors started  score stage s
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.actor

HERE = Path(__file__).resolve().parents[1]
SMALL = ["benchmark.n_train=48", "benchmark.n_test=24", "model.pretrain_steps=60", "model.pretrain_problems=200",
         "model.vocab_size=512", "train.checkpoints=2", "sweep.lr=[1e-3,3e-3]", "sweep.epochs=[1,3]",
         "sweep.data_fraction=[1.0]", "sampling.samples=2", "sampling.max_new_tokens=48"]


@dataclass
class Clock:
    """Seconds spent inside Ray's start-up calls since the last reset."""

    ray_init: float = 0.0
    actors: float = 0.0  # creating actors and waiting for them to answer pid()
    started: int = 0
    pid_refs: set = field(default_factory=set)

    def reset(self) -> None:
        self.ray_init, self.actors, self.started = 0.0, 0.0, 0
        self.pid_refs.clear()


def _refs(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def instrument(clock: Clock) -> None:
    """Wrap ray.init, actor creation, and ray.wait / ray.get on pid() refs, adding their time to clock."""
    init, create, method, wait, get = (ray.init, ray.actor.ActorClass._remote, ray.actor.ActorMethod._remote,
                                       ray.wait, ray.get)

    def timed(add):
        def wrap(fn):
            def inner(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    add(time.perf_counter() - start)
            return inner
        return wrap

    def add_init(s):
        clock.ray_init += s

    def add_actor(s):
        clock.actors += s

    @timed(add_actor)
    def create_actor(self, *args, **kwargs):
        clock.started += 1
        return create(self, *args, **kwargs)

    def call_method(self, *args, **kwargs):
        refs = method(self, *args, **kwargs)
        if getattr(self, "_method_name", None) == "pid":  # premem waits on pid() to know an actor runs
            clock.pid_refs.update(r.hex() for r in _refs(refs))
        return refs

    def on_pids(fn):
        def inner(refs, *args, **kwargs):
            asked = [r for r in _refs(refs) if hasattr(r, "hex")]
            if not asked or not all(r.hex() in clock.pid_refs for r in asked):
                return fn(refs, *args, **kwargs)
            return timed(add_actor)(fn)(refs, *args, **kwargs)
        return inner

    ray.init = timed(add_init)(init)
    ray.actor.ActorClass._remote = create_actor
    ray.actor.ActorMethod._remote = call_method
    ray.wait, ray.get = on_pids(wait), on_pids(get)


def quickstart_config(out: Path, overrides: list[str]):
    """The quickstart's config, without progress bars, in this checkout's spelling (exec.progress, or the older
    top-level progress)."""
    from premem.config import load_config
    from premem.errors import InputError
    from premem.recipes.quickstart import QuickstartConfig

    for quiet in ("exec.progress=false", "progress=false"):
        try:
            return load_config(QuickstartConfig, None, [*overrides, quiet, f"out={out}"])
        except InputError:
            continue
    return load_config(QuickstartConfig, None, [*overrides, f"out={out}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a small setting (about a minute on 2 cores)")
    parser.add_argument("--out", help="a directory that does not exist yet (default: a new temporary one, removed)")
    parser.add_argument("--checkout", default=str(HERE), help="the repository whose premem runs (default: this one)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE settings of the quickstart")
    args = parser.parse_args(argv)
    checkout = str(Path(args.checkout).resolve())
    sys.path.insert(0, checkout)  # before premem is first imported; and for Ray's workers, which Ray starts later:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, os.environ.get("PYTHONPATH")) if p)
    if args.out and Path(args.out).exists():
        parser.error(f"--out {args.out} exists: the first invocation must start from scratch")
    work = Path(tempfile.mkdtemp(prefix="pool-startup-"))
    out = Path(args.out) if args.out else work / "out"
    if "RAY_TMPDIR" not in os.environ:  # a Ray of its own, its files removed when it is down
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        atexit.register(lambda: (ray.shutdown(), shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)))

    clock = Clock()
    instrument(clock)
    from premem.recipes.quickstart import quickstart

    cfg = quickstart_config(out, (SMALL if args.small else []) + args.overrides)
    rows = []
    try:
        for label in ("from scratch", "re-run"):
            clock.reset()
            start = time.perf_counter()
            result = quickstart(cfg)
            rows.append((label, time.perf_counter() - start, clock.ray_init, clock.actors, clock.started,
                         result.seconds.get("score", float("nan"))))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'invocation':<14}{'total s':>9}{'ray.init s':>12}{'actors s':>10}{'actors started':>16}"
          f"{'score stage s':>15}")
    for label, total, init, actors, started, score in rows:
        print(f"{label:<14}{total:>9.1f}{init:>12.1f}{actors:>10.1f}{started:>16d}{score:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
