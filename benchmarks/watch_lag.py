"""Scoring while training: a TRL SFT run of the tiny benchmark trains (one thread) while `premem watch` scores it
(one actor, one thread) on the same machine; then a `premem score` of the finished run into another store.

    python benchmarks/watch_lag.py                       # the quickstart's benchmark, base model and longest run:
                                                         # lr 3e-3, 32 epochs, checkpoints at epochs 1, 2, 4, ..., 32
    python benchmarks/watch_lag.py --small               # 32 training problems, 2 epochs: a smoke run
    python benchmarks/watch_lag.py --work DIR            # keep (and reuse) the data and base model in DIR

Printed: for each checkpoint, when it was saved (its trainer_state.json's mtime, the last file the Trainer writes)
and when its scores were all in the store (this script looks every 0.5 s), both from the start of training, and the
lag between them; the median lag; how long the watch ran on after training ended; whether every checkpoint was
scored; and whether the watch's store equals the post-hoc `premem score`'s, table by table (exact).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's premem, wherever it runs from

TABLES = ("train_scores", "test_scores", "samples", "datasets", "runs")


def build(work: Path, small: bool):
    """The tiny benchmark and its base model (premem's own pieces, as the quickstart builds them); reused."""
    from premem.data.arith import ArithConfig, write_benchmark
    from premem.train.base_model import BaseModelConfig, build_base_model

    bench = ArithConfig(n_train=32 if small else 256, n_test=16 if small else 128, max_number=20, max_operand=6)
    train_path, test_path = write_benchmark(bench, work / "data")
    model = BaseModelConfig(pretrain_steps=100, pretrain_problems=300) if small else BaseModelConfig()
    return build_base_model(model, bench, work / "base", progress=False), train_path, test_path


def premem(*args: str, ray_tmp: str | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"RAY_TMPDIR": ray_tmp} if ray_tmp else {})}
    return subprocess.Popen([sys.executable, "-m", "premem.cli", *args], cwd=ROOT, env=env, **popen)


def expected_rows(train_path: Path, test_path: Path) -> dict[str, int]:
    count = lambda p: sum(1 for line in p.read_text().splitlines() if line.strip())  # noqa: E731
    return {"train": count(train_path), "test": count(test_path)}


def look(store: Path, run: str, expected: dict, seen: dict[int, float], stop: threading.Event) -> None:
    """Record when each step's scores are all in the store (parts included), every 0.5 s until stopped."""
    from premem.watch.progress import scored_steps

    while not stop.wait(0.5):
        if not store.is_dir():
            continue
        try:
            steps = scored_steps(store, run, expected)
        except Exception:  # a table replaced while read: the next look
            continue
        for step in steps:
            seen.setdefault(step, time.time())


def same_tables(a: Path, b: Path) -> dict[str, bool]:
    import pandas as pd

    from premem.store import ScoreStore

    out = {}
    for t in TABLES:
        x, y = ScoreStore(a).read(t), ScoreStore(b).read(t)
        key = [c for c in ("run", "step", "split", "example_id", "sample") if c in x.columns]
        x, y = x.sort_values(key, ignore_index=True), y.sort_values(key, ignore_index=True)
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True)
            out[t] = True
        except AssertionError:
            out[t] = False
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path,
                        help="directory for data, base model, run and stores (default: a temp dir)")
    parser.add_argument("--small", action="store_true", help="a smoke run: 32 problems, 2 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 32; --small 2)")
    parser.add_argument("--save-every", default=None, help="checkpoints: doubling (default; epochs 1, 2, 4, ...), "
                        "epoch, or a number of steps (--small: epoch)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--sample-tau", type=float, default=None, help="sample_tau for watch and score (default -4: "
                        "a tau this high skips the pairs memorized at it, exactly, in both)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="watch_lag"))
    epochs = args.epochs or (2 if args.small else 32)
    save_every = args.save_every or ("epoch" if args.small else "doubling")
    base, train_path, test_path = build(work, args.small)
    run, store, posthoc = work / "runs" / f"ep{epochs}", work / "store-watch", work / "store-posthoc"
    for path in (run, store, posthoc):
        if path.exists():
            raise SystemExit(f"{path} exists: use a new --work directory (the benchmark times a run from scratch)")
    scoring = ["--train", str(train_path), "--test", str(test_path), "--samples", str(args.samples),
               f"sampling.max_new_tokens={args.max_new_tokens}", "--actors", "1", "exec.options.threads=1",
               "exec.options.batch_size=64", "exec.progress=false",
               *([f"sample_tau={args.sample_tau}"] if args.sample_tau is not None else [])]
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # the watch's own Ray, never another's

    seen: dict[int, float] = {}
    stop = threading.Event()
    looker = threading.Thread(target=look, args=(store, run.name, expected_rows(train_path, test_path), seen, stop))
    looker.start()
    start = time.time()
    trainer = premem("train", "--model", str(base), "--train", str(train_path), "--out", str(run), "lr=3e-3",
                     f"epochs={epochs}", f"save_every={save_every}", "batch_size=8", "max_length=512", "threads=1",
                     "progress=false",
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = premem("watch", "--run", str(run), "--store", str(store), "--poll", "1", "--idle", "900", *scoring,
                     ray_tmp=ray_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    train_err = trainer.communicate()[1]
    trained = time.time()
    watch_out, watch_err = watcher.communicate()
    watched = time.time()
    time.sleep(1.0)  # one more look
    stop.set()
    looker.join()
    if trainer.returncode or watcher.returncode:
        raise SystemExit(f"train exit {trainer.returncode}, watch exit {watcher.returncode}\n{train_err[-3000:]}\n"
                         f"{watch_err[-3000:]}")

    t0 = time.time()
    posthoc_run = premem("score", "--run", str(run), "--store", str(posthoc), *scoring, ray_tmp=ray_tmp,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = posthoc_run.communicate()
    if posthoc_run.returncode:
        raise SystemExit(err[-3000:])
    posthoc_s = time.time() - t0

    from premem.store import ScoreStore

    steps = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    print(f"watch_lag: {train_path.parent} ({expected_rows(train_path, test_path)} examples), {epochs} epochs, "
          f"save_every={save_every}, "
          f"{args.samples} samples x {args.max_new_tokens} tokens, 1 training thread, 1 actor x 1 thread, "
          f"{os.cpu_count()} cores")
    print(f"training: {trained - start:.1f} s; watch ran on {watched - trained:.1f} s after training ended "
          f"({watch_out.strip().splitlines()[0] if watch_out.strip() else 'no summary'})")
    print(f"post-hoc premem score of the finished run: {posthoc_s:.1f} s")
    print(f"{'step':>6} {'saved (s)':>10} {'scored (s)':>11} {'lag (s)':>8}")
    lags = []
    for step in steps:
        saved = (run / f"checkpoint-{step}" / "trainer_state.json").stat().st_mtime
        got = seen.get(step)
        lag = got - saved if got else float("nan")
        lags.append(lag)
        print(f"{step:>6} {saved - start:>10.1f} {(got - start) if got else float('nan'):>11.1f} {lag:>8.1f}")
    print(f"median lag: {statistics.median(lags):.1f} s over {len(lags)} checkpoints")
    print(f"every checkpoint scored: {all(s in seen for s in steps)} ({len(seen)}/{len(steps)})")
    skipped = ScoreStore(store).read("train_scores")["skipped"].fillna("").ne("").sum()
    print(f"training pairs not sampled (sample=exact): {skipped}")
    same = same_tables(store, posthoc)
    tables = ", ".join(f"{t} {v}" for t, v in same.items())
    print(f"watch store == post-hoc premem score: {all(same.values())} ({tables})")


if __name__ == "__main__":
    main()
