"""Memorization detectors against auto-tau, out of sample: nested leave-one-run-out R² and MAE per store.

For each store: premem predict's tau=auto (the figure the user gets today), every detector of
premem.metrics.detectors with its parameters chosen on the other runs only (the `tau` row is the same
rule run through the detectors' harness: it must match auto), and the best fixed tau of the grid in
sample, the reference no out-of-sample rule can see. A detector beats auto-tau on a store when its
LORO R² is higher there; "runs better" and the Wilcoxon p say whether that holds run by run (a run's
held-out squared error is the paired unit: a run's checkpoints are not independent).

    python benchmarks/detectors.py --store ../shared/data/paper_runs/gsm8k --store /work/exp/detector/arith_store
    python benchmarks/detectors.py --store S --json     # one JSON object per store
    python benchmarks/detectors.py --store S --grid     # also LORO R² at each fixed tau and relative factor
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from premem.metrics.detectors import DETECTORS, Evaluator, best_fixed_tau, load, nested_loro  # noqa: E402
from premem.metrics.predict import loro_predictions, predict, r2  # noqa: E402


def compare(store: str) -> dict:
    """Every row of one store's table: name -> LORO R², LORO MAE, parameters (all runs / per held-out run), s."""
    started = time.perf_counter()
    curves = load(store)
    loaded = time.perf_counter() - started
    rows = {}
    t = time.perf_counter()
    auto = predict(curves, "auto")
    rows["auto-tau (premem predict)"] = dict(r2_loro=auto.r2_loro, mae_loro=auto.mae_loro, params=f"tau {auto.tau:g}",
                                             per_run=sorted({f"tau {v:g}" for v in auto.tau_per_run.values()}),
                                             seconds=time.perf_counter() - t)
    ev = Evaluator(curves)
    at = ev.base.loc[ev.scored, ["run", "step"]].merge(auto.points, on=["run", "step"], how="left")
    auto_sse = run_sse(ev, at["predicted_loro"].to_numpy(dtype=float))
    rows["auto-tau (premem predict)"].update(runs_better="", p_wilcoxon=float("nan"))
    for name, detector in DETECTORS.items():
        t = time.perf_counter()
        cmp = nested_loro(ev, detector)
        sse = run_sse(ev, cmp.held_out)
        diff = sse - auto_sse
        rows[f"detector {name}"] = dict(
            r2_loro=cmp.r2_loro, mae_loro=cmp.mae_loro, params=detector.describe(cmp.params),
            per_run=sorted({detector.describe(p) for p in cmp.params_per_run.values()}), seconds=time.perf_counter() - t,
            runs_better=f"{int((diff < -1e-12).sum())}/{len(diff)}",
            p_wilcoxon=float(wilcoxon(diff).pvalue) if np.abs(diff).max() > 1e-12 else float("nan"))
    tau, in_sample = best_fixed_tau(ev)
    grids = {}
    for name in ("tau", "relative"):
        d = DETECTORS[name]
        grids[name] = {d.describe(p): r2(ev.y, loro_predictions(ev.feature(d, p), ev.y, ev.runs))
                       for p in d.candidates(curves.frame, curves.min_tau)}
    return dict(store=store, n_runs=int(len(set(ev.runs))), n_points=int(len(ev.y)), n_pairs=int(len(curves.frame)),
                load_seconds=loaded, rows=rows, best_fixed_tau=dict(tau=float(tau), r2_in_sample=in_sample), grids=grids)


def run_sse(ev: Evaluator, held_out: np.ndarray) -> np.ndarray:
    """Each run's sum of squared held-out errors, runs in sorted order: the paired unit of the comparison."""
    return np.array([np.sum((ev.y[ev.runs == r] - held_out[ev.runs == r]) ** 2) for r in np.unique(ev.runs)])


def table(result: dict, grid: bool = False) -> str:
    auto = result["rows"]["auto-tau (premem predict)"]["r2_loro"]
    lines = [f"store {result['store']}: {result['n_runs']} runs, {result['n_points']} checkpoints with test scores, "
             f"{result['n_pairs']} (example, checkpoint) pairs",
             f"{'':<27} {'LORO R2':>8} {'LORO MAE':>9} {'vs auto':>8} {'runs better':>11} {'p':>6} {'s':>5}  "
             "parameters (all runs)"]
    for name, r in result["rows"].items():
        p = "" if r["p_wilcoxon"] != r["p_wilcoxon"] else f"{r['p_wilcoxon']:.3f}"
        lines.append(f"{name:<27} {r['r2_loro']:>8.3f} {r['mae_loro']:>9.4f} {r['r2_loro'] - auto:>+8.3f} "
                     f"{r['runs_better']:>11} {p:>6} {r['seconds']:>5.1f}  {r['params']}")
    for name, r in result["rows"].items():
        if len(r["per_run"]) > 4:  # a mixture is refitted on each fold: its fits differ a little, every time
            lines.append(f"  {name}, per held-out run: {len(r['per_run'])} different fits")
        elif len(r["per_run"]) > 1:
            lines.append(f"  {name}, per held-out run: {'; '.join(r['per_run'])}")
    lines.append("runs better: held-out runs whose squared error is below auto-tau's; p: Wilcoxon signed-rank "
                 "test on those per-run errors (two-sided)")
    best = result["best_fixed_tau"]
    lines.append(f"best fixed tau in sample: tau {best['tau']:g}, R2 {best['r2_in_sample']:.3f} (not out of sample)")
    if grid:  # how sharp each one-parameter rule's optimum is: LORO R² at every fixed value (not nested)
        for name, scores in result["grids"].items():
            lines.append(f"{name}, LORO R2 at each fixed value: " + ", ".join(
                f"{k.split()[-1]}: {v:.3f}" for k, v in scores.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", action="append", required=True, help="score store directory (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per store")
    parser.add_argument("--grid", action="store_true", help="also print LORO R2 at each fixed tau and factor")
    args = parser.parse_args(argv)
    for store in args.store:
        result = compare(store)
        print(json.dumps(result) if args.json else table(result, args.grid) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
