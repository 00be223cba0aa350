"""Memorization-aware sampling (premem score sample=exact|final): what it skips, and that PreMem stays exact.

    python benchmarks/skip_replay.py paper [--tau -2.3]
        Replays the paper's GSM8K store (../shared/data/paper_runs/gsm8k, or $PREMEM_SHARED_DATA): the share of
        (example, checkpoint) pairs of the runs' trained examples that exact and final would not sample, and
        PreMem recomputed with those pairs unsampled against the store's own (per example and checkpoint).

    python benchmarks/skip_replay.py quickstart --runs QS/runs --data QS/data --out /tmp/skip_bench [--sample-tau -2]
        Scores a finished quickstart's runs into NEW stores under --out with sample=all, exact and final (the
        quickstart's own sampling and exec settings), and compares: PreMem per (run, checkpoint) and per example,
        the share of samples and generated tokens skipped, and the scoring time of each mode (the median of
        --repeats, each repeat in a rotated --order).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: this checkout's premem

from premem.metrics.premem import TrainingCurves, restrict_to_trained  # noqa: E402
from premem.sampling.skipping import replay  # noqa: E402
from premem.store import ScoreStore  # noqa: E402
from premem.tables import log_log_perplexity  # noqa: E402

SHARED = Path(os.environ.get("PREMEM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def unsampled(train: pd.DataFrame, runs: pd.DataFrame, tau: float, mode: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables premem score would have written with this mode: skipped pairs without samples."""
    reasons = replay(train, tau, mode)
    out = train.assign(skipped=reasons)
    out.loc[reasons != "", ["n_samples", "n_correct"]] = 0
    return out, runs.assign(sample=mode, sample_tau=tau)


def paper(tau: float) -> None:
    store = ScoreStore(SHARED / "paper_runs" / "gsm8k")
    runs = store.runs()
    train = restrict_to_trained(store.read("train_scores"), runs).reset_index(drop=True)
    test = store.read("test_scores")
    full = TrainingCurves.from_tables(train, runs, test).per_example(tau)
    memorized = log_log_perplexity(train["perplexity"].to_numpy()) < tau
    last = (train["step"] == train.groupby("run")["step"].transform("max")).to_numpy()
    print(f"paper store {store.root}: {runs.shape[0]} runs, {train[['run', 'step']].drop_duplicates().shape[0]} "
          f"checkpoints, {len(train)} (example, checkpoint) pairs of trained examples; tau = {tau:g}")
    print(f"  memorized (log(log(ppl)) < tau): {memorized.mean():.1%}; of them before the last checkpoint: "
          f"{(memorized & ~last).mean():.1%} of all pairs")
    for mode in ("exact", "final"):
        t, r = unsampled(train, runs, tau, mode)
        skipped = t["skipped"] != ""
        ex = TrainingCurves.from_tables(t, r, test).per_example(tau)
        same_all = bool((ex["premem"].to_numpy() == full["premem"].to_numpy()).all())
        end = (full["step"] == full.groupby("run")["step"].transform("max")).to_numpy()
        same_final = bool((ex["premem"].to_numpy()[end] == full["premem"].to_numpy()[end]).all())
        kinds = t.loc[skipped, "skipped"].value_counts().to_dict()
        samples = train.loc[skipped.to_numpy(), "n_samples"].sum() / (train["n_samples"].sum() + test["n_samples"].sum())
        print(f"  {mode:5s}: skips {skipped.mean():.1%} of pairs {kinds}, {samples:.1%} of all samples (train + test); "
              f"PreMem identical at every checkpoint: {same_all}; final per-example PreMem identical: {same_final}")


def quickstart(runs_dir: Path, data_dir: Path, out: Path, sample_tau: float, order: list[str], repeats: int) -> None:
    from premem.config import load_config
    from premem.data import DataConfig
    from premem.recipes.quickstart import QuickstartConfig
    from premem.sampling.job import ScoreConfig, score

    qs = load_config(QuickstartConfig, str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"), [])
    qs.exec.progress = False
    run_dirs = sorted(p for p in runs_dir.iterdir() if (p / "premem_run.json").is_file())
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out}: not empty; give a new directory")

    def cfg(run: Path, store: Path, **kw) -> ScoreConfig:
        return ScoreConfig(run=str(run), store=str(store), train=DataConfig(path=str(data_dir / "train.jsonl")),
                           test=DataConfig(path=str(data_dir / "test.jsonl")), sampling=qs.sampling, exec=qs.exec,
                           shard_size=64, **kw)

    # Ray and the actors start before any timing: every mode then finds the same live pool
    score(cfg(run_dirs[0], out / "warmup", train_examples="none", checkpoints="last", sample="all"))
    times = {mode: [] for mode in order}
    for rep in range(repeats):  # each repeat rotates the order: no mode always goes first
        for mode in order[rep % len(order):] + order[: rep % len(order)]:
            store = out / (mode if rep == 0 else f"{mode}.{rep}")
            start = time.perf_counter()
            for r in run_dirs:
                score(cfg(r, store, sample=mode, sample_tau=sample_tau))
            times[mode].append(time.perf_counter() - start)
    seconds = {mode: statistics.median(t) for mode, t in times.items()}
    print("seconds per mode, each repeat: " + "; ".join(f"{m} {' '.join(f'{x:.0f}' for x in t)}"
                                                         for m, t in times.items()))
    tables = {m: {t: ScoreStore(out / m).read(t) for t in ("train_scores", "samples")} for m in seconds}
    curves = {m: TrainingCurves.from_store(ScoreStore(out / m)) for m in seconds}
    n_samples = len(tables["all"]["samples"])
    tokens = int(tables["all"]["samples"]["n_tokens"].sum())
    print(f"quickstart: {len(run_dirs)} runs from {runs_dir}, scored into {out} (sample_tau {sample_tau:g}); "
          f"sample=all: {n_samples} samples, {tokens} generated tokens, {seconds['all']:.0f} s (median of {repeats})")
    for mode in ("exact", "final"):
        train = tables[mode]["train_scores"]
        n_skipped = int((train["skipped"] != "").sum())
        s = tables[mode]["samples"]
        print(f"  {mode}: {n_skipped} of {len(train)} train pairs skipped; samples {1 - len(s) / n_samples:.2%} and "
              f"tokens {1 - s['n_tokens'].sum() / tokens:.2%} fewer than sample=all; {seconds[mode]:.0f} s "
              f"({seconds['all'] / seconds[mode]:.2f}x, {seconds['all'] - seconds[mode]:.0f} s saved)")
        for tau in sorted(t for t in {sample_tau, sample_tau + 0.5, -2.0, -1.5} if t >= sample_tau):  # none below it
            a, b = curves["all"].per_example(tau), curves[mode].per_example(tau)
            pa, pb = curves["all"].points(tau), curves[mode].points(tau)
            end = (a["step"] == a.groupby("run")["step"].transform("max")).to_numpy()
            print(f"    tau {tau:g}: PreMem per example and checkpoint identical: "
                  f"{bool((a['premem'].to_numpy() == b['premem'].to_numpy()).all())}; per (run, checkpoint): "
                  f"{bool((pa['premem'].to_numpy() == pb['premem'].to_numpy()).all())}; final per example: "
                  f"{bool((a['premem'].to_numpy()[end] == b['premem'].to_numpy()[end]).all())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("paper")
    p.add_argument("--tau", type=float, default=-2.3)
    q = sub.add_parser("quickstart")
    q.add_argument("--runs", type=Path, required=True)
    q.add_argument("--data", type=Path, required=True)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--sample-tau", type=float, default=-2.0)
    q.add_argument("--order", default="all,exact,final", help="the modes, in the order they are scored")
    q.add_argument("--repeats", type=int, default=1, help="score every mode this often (order rotated); medians")
    args = parser.parse_args()
    if args.what == "paper":
        paper(args.tau)
    else:
        order = args.order.split(",")
        if sorted(order) != ["all", "exact", "final"]:
            parser.error("--order: all, exact and final, each once")
        quickstart(args.runs, args.data, args.out, args.sample_tau, order, args.repeats)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
