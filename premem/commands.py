"""What the verbs of `premem` run where no one library function does it all: predict with its plot, the report
with its checks, a run or a sweep, the probe tables, the strategies for --help. premem.cli's table names them.

Library modules are named by dotted path and imported only when a verb runs, so the command starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import textwrap
from pathlib import Path
from typing import Any

from premem.errors import InputError


# premem predict --detector: premem.metrics.detectors.DETECTORS, named here so --help imports no pandas
DETECTORS = ["tau", "soft", "relative", "gmm"]
DETECT = ("how a pair counts as memorized: tau (the step at --tau; the default), or a detector with no hand-set "
          "threshold, its parameters chosen by nested leave-one-run-out (premem.metrics.detectors)")


def lib(spec: str) -> Any:
    """`module:name`, imported now."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def tau_type(value: str) -> float | str:
    """--tau: a finite number or 'auto' (an argparse type)."""
    try:
        tau = value if value == "auto" else float(value)
    except ValueError:
        tau = float("nan")
    if tau != "auto" and not abs(tau) < float("inf"):  # nan or inf marks every example alike: a flat fit
        raise argparse.ArgumentTypeError(f"expected a finite number or 'auto', got {value!r}")
    return tau


def predict(args: argparse.Namespace, _) -> Any:
    """`premem predict`: the fit on a store, its scatter plot when --plot names a file, the fit saved with
    --save-fit; or, with --fit, every run of the store predicted from a saved fit (premem.metrics.calibration)."""
    if args.detector != "tau":  # premem.metrics.detectors: no tau to set, plot or save a fit at
        used = [f for f, v in (("--tau", args.tau), ("--plot", args.plot), ("--save-fit", args.save_fit),
                               ("--fit", args.fit)) if v is not None]
        if used:
            raise InputError(f"{used[0]}: not with --detector {args.detector}, which sets no tau (use --detector tau)")
        return lib("premem.metrics.detectors:predict_with")(args.store, args.detector)
    if args.fit:
        used = [f for f, v in (("--tau", args.tau), ("--plot", args.plot), ("--save-fit", args.save_fit)) if v]
        if used:
            raise InputError(f"{used[0]}: not with --fit, which predicts at the saved fit's tau and makes no new fit")
        lib("premem.metrics.calibration:load_fit")(args.fit)  # a bad fit file fails before the store is read
        return lib("premem.metrics.calibration:forecast")(args.store, args.fit)
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {args.plot}: use a .png, .svg or .pdf file name")
    if args.plot:
        lib("premem.files:check_output")(args.plot, [args.store], what="--plot")
    if args.save_fit:
        # never in the store: a fit named like one of its tables would replace it
        lib("premem.files:check_output")(args.save_fit, [args.store, args.plot], inside=[args.store], what="--save-fit")
    pred = lib("premem.metrics.predict:predict")(args.store, args.tau)  # tau None: the rule every verb shares
    if args.save_fit:  # before the plot: a fit that cannot have a band fails with nothing written
        fit = lib("premem.metrics.calibration:calibrate")(args.store, args.tau, pred=pred)
    if args.plot:
        lib("premem.report.plots:prediction_scatter")(pred, args.plot)
    if args.save_fit:
        lib("premem.metrics.calibration:save_fit")(fit, args.save_fit)
    return pred


def show_predict(result: Any, args: argparse.Namespace, _) -> str:
    """What `premem predict` prints: JSON with --json, else the fit table (premem.metrics.predict.summary) with
    the plot and saved fit named under it, or with --fit the forecast (premem.metrics.calibration)."""
    if args.json:
        out = {**result.to_dict(), **({"saved_fit": args.save_fit} if args.save_fit and not args.fit else {})}
        return json.dumps(out, indent=None if args.compact else 1)
    if args.fit:
        return lib("premem.metrics.calibration:forecast_summary")(result)
    module = "detectors" if getattr(args, "detector", "tau") != "tau" else "predict"
    text = lib(f"premem.metrics.{module}:summary")(result) + (f"\n\nplot: {args.plot}" if args.plot else "")
    if args.save_fit:
        fit = lib("premem.metrics.calibration:load_fit")(args.save_fit)  # as written: the file reads back
        text += f"\n\nfit saved: {args.save_fit}\n" + lib("premem.metrics.calibration:fit_summary")(fit)
    return text


def report(args: argparse.Namespace, _) -> Path:
    """`premem report`: the HTML report of a store, its --out checked first."""
    if Path(args.out).suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out {args.out}: the report is one .html file")
    lib("premem.files:check_output")(args.out, [args.store, args.fit])
    lib("premem.store:ScoreStore")(args.store)  # a mistyped path fails now, not after importing matplotlib
    return lib("premem.report:build_report")(args.store, args.out, args.tau, fit=args.fit)


def train(cfg, args) -> list[str]:
    """`premem train`: one run, or the sweep (cfg.sweep or --sweep); a line per run."""
    dirs = lib("premem.train.api:sweep")(cfg, cfg.sweep) if args.sweep or cfg.sweep else [lib("premem.train.api:train")(cfg)]
    infos = [(d, lib("premem.runs:read_run_info")(d) or {}) for d in dirs]
    return [f"{i.get('run', d.name)}: {i.get('n_train')} examples, checkpoints at steps "
            f"{', '.join(str(c['step']) for c in i.get('checkpoints', []))} -> {d}" for d, i in infos]


def probes(store: str, runs: list[str] | None) -> str:
    """The per-type table and squeezing verdict of the runs a store has probe scores for."""
    return lib("premem.metrics.probes:report")(lib("premem.store:ScoreStore")(store).read("probe_scores"), runs)


def done(s, what: str) -> str:
    """The start of a score or track job's summary line."""
    return (f"{s.run}: {len(s.checkpoints)} checkpoints (steps {', '.join(map(str, s.checkpoints))}); {s.tasks_run} "
            f"{what}, {s.tasks_skipped} already done, {s.retries} retried; ")


def strategies() -> str:
    """Every selection strategy and what it does (--help of premem curate)."""
    known, unavailable, describe = (lib(f"premem.curate.strategies:{n}") for n in ("STRATEGIES", "UNAVAILABLE", "describe"))
    lines = [textwrap.fill(f"{n}: {describe(n)}", 100, subsequent_indent="  ") for n in known]
    lines += [textwrap.fill(f"{n} (not available): {why}.", 100, subsequent_indent="  ") for n, why in unavailable.items()]
    return "strategies:\n\n" + "\n\n".join(lines)


