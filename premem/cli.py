"""The `premem` command: one entry, verbs mapped to plain functions of the Python API.

Each verb parses its arguments, calls the library, and prints. Bad input anywhere raises
premem.errors.InputError, which ends here as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from premem import __version__
from premem.errors import InputError

log = logging.getLogger("premem")


# -- predict ---------------------------------------------------------------------------------


def _tau(value: str) -> float | str:
    if value == "auto":
        return value
    import math

    try:
        tau = float(value)
    except ValueError:
        tau = math.nan
    if not math.isfinite(tau):  # nan or inf marks every example alike: a flat fit printed with confidence
        raise argparse.ArgumentTypeError(f"expected a finite number or 'auto', got {value!r}")
    return tau


def cmd_predict(args: argparse.Namespace) -> int:
    from premem.metrics.predict import predict
    from premem.metrics.premem import TrainingCurves
    from premem.store import ScoreStore

    if args.plot:
        from premem.files import check_output

        if Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
            raise InputError(f"--plot {args.plot}: use a .png, .svg or .pdf file name")
        check_output(args.plot, [args.store], what="--plot")
    curves = TrainingCurves.from_store(ScoreStore(args.store))
    pred = predict(curves, args.tau)  # tau None: the default rule every verb shares (metrics.predict.resolve_tau)
    if args.plot:
        from premem.report.plots import prediction_scatter

        prediction_scatter(pred, args.plot)
    if args.json:
        print(json.dumps(pred.to_dict(), indent=None if args.compact else 1))
        return 0

    print(fit_table(pred))
    if pred.tau_per_run:
        print(f"\ntau chosen for each held-out run: {sorted(set(pred.tau_per_run.values()))}")
    cols = ["run", "step", "premem", "train_acc", "frac_memorized", "test_acc", "predicted", "predicted_loro"]
    print("\n" + pred.points[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if args.plot:
        print(f"\nplot: {args.plot}")
    return 0


def fit_table(pred) -> str:
    """The R² / leave-one-run-out table of premem and its baselines, as `premem predict` prints it."""
    from premem.metrics.premem import FEATURES

    def r2(v: float) -> str:  # an undefined R² is NaN: say so, never print a number for it
        return "undefined" if v != v else f"{v:.3f}"

    w1, w2 = (9, 9) if pred.r2_note else (7, 8)  # room for "undefined"; the usual table keeps its layout
    lines = [
        f"{pred.n_runs} runs, {pred.n_points} checkpoints with test scores; "
        f"tau = {pred.tau:g} ({pred.tau_how}; memorized when log(log(ppl)) < tau)",
        f"test_acc ~ {pred.slope:.3f} * premem + {pred.intercept:.3f}",
        "",
        f"{'predictor':<34} {'R2':>{w1}} {'LORO R2':>{w2}} {'MAE':>7} {'LORO MAE':>9}",
    ]
    rows = [(FEATURES["premem"], pred.r2, pred.r2_loro, pred.mae, pred.mae_loro)]
    rows += [(FEATURES[k], b.r2, b.r2_loro, b.mae, b.mae_loro) for k, b in pred.baselines.items()]
    lines += [f"{label:<34} {r2(a):>{w1}} {r2(b):>{w2}} {mae:>7.3f} {mael:>9.3f}" for label, a, b, mae, mael in rows]
    if pred.r2_note:
        lines.append(pred.r2_note)
    if pred.dropped_test_runs:
        lines.append(f"left out: test scores of {', '.join(pred.dropped_test_runs)} (no run with train scores)")
    return "\n".join(lines)


# -- quickstart ------------------------------------------------------------------------------


def cmd_quickstart(args: argparse.Namespace) -> int:
    from premem.recipes.quickstart import QuickstartConfig, quickstart

    cfg = _job_config(QuickstartConfig, args)
    result = quickstart(cfg)
    took = result.seconds
    print(f"\npremem quickstart: {len(result.runs)} runs in {result.out} ({sum(took.values()):.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")\n")
    print(fit_table(result.prediction))
    print(f"\ncurated subset (lowest pre-memorization accuracy): {result.curated}")
    print(f"report: {result.report}")
    return 0


# -- experiment ------------------------------------------------------------------------------


def cmd_experiment_curation(args: argparse.Namespace) -> int:
    from premem.recipes.curation import CurationConfig, curves, efficiency, experiment, plot_curves
    from premem.report.curation import build_curation_report

    cfg = _job_config(CurationConfig, args)
    rounds = experiment(cfg)
    curve = curves(rounds)
    eff = efficiency(curve)
    out = Path(cfg.out)
    curve.to_csv(out / "curves.csv", index=False)
    eff.to_csv(out / "efficiency.csv", index=False)
    plot_curves(curve, out / "curves.png")
    report = build_curation_report(out)
    print("\ntest accuracy (mean ± std over seeds) by training-set size\n")
    table = curve.assign(acc=[f"{m:.3f} ± {s:.3f}" for m, s in zip(curve["mean"], curve["std"].fillna(0))])
    print(table.pivot(index="strategy", columns="examples", values="acc").to_string())
    print("\ndata efficiency: i.i.d. examples needed for the same test accuracy / examples used\n")
    print(eff.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{out / 'curves.png'}  {out / 'efficiency.csv'}  {out / 'rounds.parquet'}")
    print(f"report: {report}")
    return 0


def cmd_experiment_probes(args: argparse.Namespace) -> int:
    import pandas as pd

    from premem.recipes.probes import ProbesConfig, experiment, extend_comparison, sft_moves, verdicts

    cfg = _job_config(ProbesConfig, args)
    results = experiment(cfg)
    out = Path(cfg.out)
    print("\nSFT: change of the mean summed log π(y|x) per type, mean over seeds "
          "(all: from the base model; trained: from the first epoch's checkpoint on)\n")
    print(sft_moves(pd.read_csv(out / "moves.csv")).to_string(float_format=lambda v: f"{v:+.1f}"))
    print("\nsqueezing verdicts (change from the run's first checkpoint to its last; mean ± s.e. over prompts)\n")
    print(verdicts(results).to_string(index=False))
    ext = extend_comparison(results, cfg.dpo_from)
    print("\nthe extend recipe: chosen's move under the same DPO, and extend − dpo paired by prompt "
          "(positive: chosen falls less)\n")
    print(ext.to_string(index=False, float_format=lambda v: f"{v:+.2f}"))
    for k, g in ext.groupby("from_epoch"):
        print(f"from SFT epoch {k}: extend − dpo = {g['difference'].mean():+.2f} nats over {len(g)} seeds "
              f"(per seed {', '.join(f'{d:+.2f}' for d in g['difference'])})")
    print(f"\n{out / 'tables.txt'} (every run's table per checkpoint)  {out / 'moves.csv'}")
    print(f"report: {out / 'report.html'}")
    return 0


# -- report ----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from premem.files import check_output
    from premem.store import ScoreStore

    if Path(args.out).suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out {args.out}: the report is one .html file")
    check_output(args.out, [args.store])
    ScoreStore(args.store)  # a mistyped path fails now, not after seconds of importing matplotlib and sklearn
    from premem.report import build_report

    out = build_report(args.store, args.out, args.tau)
    print(f"report: {out}")
    return 0


# -- curate ----------------------------------------------------------------------------------


# Each verb's flags as {config key: argument name}: set on the config as given, never parsed (see _config).
CURATE_FLAGS = {"store": "store", "data.path": "data", "strategy": "strategy", "budget": "budget", "out": "out",
                "tau": "tau", "seed": "seed", "runs": "run", "overwrite": "overwrite"}


def cmd_curate(args: argparse.Namespace) -> int:
    from premem.curate import CurateConfig, curate
    from premem.files import check_output

    fields = {f.name for f in dataclasses.fields(CurateConfig)}
    # KEY=VALUE: a CurateConfig field (seed=3, data.fields.question=query) or else a strategy parameter (mode=upsample)
    overrides = [o if o.partition("=")[0].split(".")[0] in fields else f"params.{o}" for o in args.overrides]
    cfg = _config(CurateConfig, args, CURATE_FLAGS, overrides)
    if not cfg.out:
        raise InputError("curate: say where to write the subset (--out DIR)")
    check_output(cfg.out, [args.config, cfg.store, cfg.data.path], kind="dir", what="--out" if args.out else "out",
                 replaces=True)
    result = curate(cfg)
    m = result.manifest
    b, s = m["budget"], m["summary"]
    tau = f", tau {m['tau']:g}" if m["tau"] is not None else ""
    print(f"{m['strategy']['name']}: {b['n']} of {b['candidates']} examples (budget {b['requested']}; "
          f"{b['rows_written']} rows written; seed {m['seed']}{tau}; runs: {', '.join(m['runs'])})")
    mean = {k: "-" if v is None else f"{v:.3f}" for k, v in s.items()}
    print(f"score = {m['strategy']['score']}: mean {mean['score_mean_rows']} over the rows written, "
          f"{mean['score_mean_all']} over all candidates")
    print(f"-> {result.subset}\n-> {result.prompt_completion}\n-> {result.out / 'manifest.json'}")
    return 0


def cmd_curate_loop(args: argparse.Namespace) -> int:
    from premem.curate.loop import LoopConfig, loop

    cfg = _job_config(LoopConfig, args, inputs=lambda c: [c.data.path, c.test and c.test.path, c.model])
    table = loop(cfg)
    cols = ["round", "examples", "added", "strategy", "generator", "train_acc", "premem", "test_acc", "seconds"]
    print()
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nrecord: {Path(cfg.out) / 'store'} (curation_rounds, curation_examples); "
          f"last round's data: {table['run_dir'].iloc[-1].rsplit('/run', 1)[0]}/data.jsonl")
    return 0


# -- data ------------------------------------------------------------------------------------


DATA_CHECK_FLAGS = {"path": "data", "format": "format", "grader": "grader", "split": "split", "limit": "limit"}


def cmd_data_check(args: argparse.Namespace) -> int:
    from premem.data import DataConfig, get_grader, load_example_set
    from premem.data.grading import grade_gold_against_solutions
    from premem.files import check_output

    cfg = _config(DataConfig, args, DATA_CHECK_FLAGS)
    if not cfg.path:
        raise InputError("data check: say which data to read (--data PATH, or path: in --config)")
    if args.out and Path(args.out).suffix != ".jsonl":
        raise InputError(f"--out {args.out}: canonical examples are written as .jsonl")
    if args.out:
        check_output(args.out, [cfg.path, args.config])
    data = load_example_set(cfg)
    grader = get_grader(data.grader)
    rows = [{"id": ex.example_id, "answer": ex.answer, "solution": ex.solution} for ex in data.examples]
    n_agree, n_total, misses = grade_gold_against_solutions(rows, grader, "answer", "solution")
    report = {
        "path": data.path,
        "format": data.format,
        "grader": data.grader,
        "rendered": data.rendered,  # "paper": the rows carried the paper template and were read without it
        "n_examples": len(data.examples),
        "fingerprint": data.fingerprint,
        "gold_self_agreement": n_agree / max(n_total, 1),
        "disagreements": [
            {"example_id": m.row_id, "answer": m.gold, "strict": m.strict_answer, "flexible": m.flexible_answer}
            for m in misses
        ],
    }
    if args.out:
        from premem.files import atomic_path

        with atomic_path(args.out) as tmp, open(tmp, "w") as f:
            for ex in data.examples:
                f.write(json.dumps(dataclasses.asdict(ex), ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{data.path}: {len(data.examples)} examples, format {data.format}, grader {data.grader}")
    if data.rendered == "paper":
        print("rows already carry the paper template (prompt + '\\nAnswer:', ' ' + completion + '\\nDone.'): "
              "read without it, so training and scoring use them as they are, not templated twice")
    else:
        print("rows are plain text: training and scoring apply the template (paper or chat) to them")
    print(f"fingerprint {data.fingerprint}")
    print(
        f"gold traces graded against their own final answers: {n_agree}/{n_total} agree "
        f"({100 * report['gold_self_agreement']:.2f}%, strict and flexible extraction)"
    )
    for m in misses[:20]:
        print(f"  disagrees: example {m.row_id}: answer {m.gold!r}, trace says {m.strict_answer!r} / {m.flexible_answer!r}")
    if len(misses) > 20:
        print(f"  ... and {len(misses) - 20} more (--json lists all)")
    if args.out:
        print(f"canonical examples written to {args.out}")
    return 0


# -- score / regrade ---------------------------------------------------------------------------


SCORE_FLAGS = {"run": "run", "store": "store", "train.path": "train", "test.path": "test", "backend": "backend",
               "sampling.samples": "samples", "actors": "actors", "address": "address", "run_name": "run_name",
               "options.allow_pickle": "allow_pickle", "options.trust_remote_code": "trust_remote_code"}


def cmd_score(args: argparse.Namespace) -> int:
    from premem.files import check_output
    from premem.sampling.job import ScoreConfig, score

    cfg = _config(ScoreConfig, args, SCORE_FLAGS)
    if not cfg.run:
        raise InputError("score: say which run to score (--run RUN_DIR)")
    if not cfg.store:
        raise InputError("store: say where to write the scores (--store DIR)")
    check_output(cfg.store, [args.config, cfg.run, cfg.train.path, cfg.test and cfg.test.path, cfg.base_model],
                 kind="dir", what="--store" if args.store else "store", inside=[cfg.run])
    summary = score(cfg)
    print(
        f"{summary.run}: {len(summary.checkpoints)} checkpoints (steps {', '.join(map(str, summary.checkpoints))}); "
        f"{summary.tasks_run} tasks run, {summary.tasks_skipped} already done, {summary.retries} retried; "
        f"{summary.generated_tokens} tokens generated in {summary.seconds:.1f} s -> {cfg.store}"
    )
    return 0


def cmd_regrade(args: argparse.Namespace) -> int:
    from premem.sampling.regrade import regrade
    from premem.store import ScoreStore

    changed = regrade(ScoreStore(args.store), args.grader, args.count)
    print(f"regraded {args.store}: strict grades changed per split: {changed}")
    return 0


# -- train -----------------------------------------------------------------------------------


TRAIN_FLAGS = {"model": "model", "train.path": "train", "out": "out", "run_name": "run_name", "workers": "workers",
               "allow_pickle": "allow_pickle", "trust_remote_code": "trust_remote_code"}


def cmd_train(args: argparse.Namespace) -> int:
    from premem.files import check_output
    from premem.train.sft import TrainConfig, read_run_info, sweep, train

    cfg = _config(TrainConfig, args, TRAIN_FLAGS)
    if not cfg.out:
        raise InputError("out: say where to write the run (--out DIR)")
    sweeping = args.sweep or cfg.sweep is not None
    # a run directory started again is cleared, so it must not hold what the run reads (a sweep's are under out)
    check_output(cfg.out, [args.config, cfg.model, cfg.train.path, cfg.ref_model], kind="dir",
                 what="--out" if args.out else "out", replaces=not sweeping)
    run_dirs = sweep(cfg, cfg.sweep) if sweeping else [train(cfg)]
    for run_dir in run_dirs:
        info = read_run_info(run_dir) or {}
        steps = ", ".join(str(c["step"]) for c in info.get("checkpoints", []))
        print(f"{info.get('run', run_dir.name)}: {info.get('n_train')} examples, checkpoints at steps {steps} -> {run_dir}")
    return 0


# -- probe -----------------------------------------------------------------------------------


PROBE_BUILD_FLAGS = {k: k for k in ("data", "out", "n", "seed", "irrelevant", "model")}
PROBE_TRACK_FLAGS = {k: k for k in ("run", "probes", "store", "data", "base", "run_name", "backend", "actors", "address")}


def cmd_probe_build(args: argparse.Namespace) -> int:
    from premem.data.probes import PROBES_FILE, ProbeBuildConfig, build_probes
    from premem.files import check_output

    cfg = _config(ProbeBuildConfig, args, PROBE_BUILD_FLAGS)
    if cfg.out:  # build_probes says so when it is missing
        check_output(cfg.out, [args.config, cfg.data, cfg.irrelevant, cfg.model], kind="dir",
                     what="--out" if args.out else "out", replaces=True)
    probes = build_probes(cfg)
    m = probes.manifest
    counts = ", ".join(f"{t} {n}" for t, n in m["types"].items())
    print(f"{m['n']} probe prompts from {m['data']['path']} (seed {m['seed']}), {len(probes.rows)} responses: {counts}")
    if m["model"] and "rephrased" in m["model"]:
        print(f"rephrases written by {m['model']['path']}: {m['model']['rephrased']} "
              f"({m['model']['rephrase_dropped']} dropped: empty, unchanged or too long)")
    print(f"-> {probes.path / PROBES_FILE}\n-> {probes.path / 'manifest.json'} (data fingerprint {m['data']['fingerprint'][:12]}…)")
    return 0


def cmd_probe_track(args: argparse.Namespace) -> int:
    from premem.files import check_output
    from premem.metrics.probes import report
    from premem.sampling.probes import TABLE, ProbeTrackConfig, track
    from premem.store import ScoreStore

    cfg = _config(ProbeTrackConfig, args, PROBE_TRACK_FLAGS)
    if cfg.store:  # track says so when it is missing
        check_output(cfg.store, [args.config, cfg.run, cfg.probes, cfg.data, cfg.base], kind="dir",
                     what="--store" if args.store else "store", inside=[cfg.run, cfg.probes])
    summary = track(cfg)
    print(f"{summary.run}: {len(summary.checkpoints)} checkpoints (steps {', '.join(map(str, summary.checkpoints))}); "
          f"{summary.tasks_run} tracked, {summary.tasks_skipped} already done, {summary.retries} retried; "
          f"{summary.seconds:.1f} s -> {cfg.store} ({TABLE})\n")
    print(report(ScoreStore(cfg.store).read(TABLE), [summary.run]))
    return 0


def cmd_probe_show(args: argparse.Namespace) -> int:
    from premem.metrics.probes import report
    from premem.sampling.probes import TABLE
    from premem.store import ScoreStore

    print(report(ScoreStore(args.store).read(TABLE), args.run))
    return 0


# -- the parser --------------------------------------------------------------------------------


class OneLineErrors(argparse.ArgumentParser):
    """argparse's parser with its errors (a bad --tau, a missing --store, an unknown flag) as premem's own:
    one line on stderr, exit code 2, with where to look instead of the usage block. Its subparsers are the same."""

    def error(self, message: str):
        self.exit(2, f"premem: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="premem",
        description="Pre-memorization data curation for LLM finetuning: score runs, predict test accuracy, curate data.",
    )
    parser.add_argument("--version", action="version", version=f"premem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    exp = verbs.add_parser("experiment", help="experiments on the tiny benchmark").add_subparsers(
        dest="experiment", required=True, metavar="NAME"
    )
    p = exp.add_parser(
        "curation",
        help="learning curves of curation strategies: does premem_low beat i.i.d. data scaling?",
        description="For each strategy and seed: start from i.i.d. problems, then in rounds train, score, rank the "
        "training examples, and collect new problems like the top-ranked ones; test accuracy against training-set "
        "size, and the data-efficiency ratio against i.i.d. scaling. Settings: --config YAML and/or KEY=VALUE, "
        "e.g. seeds=[0] strategies=[random,premem_low] budgets=[128].",
    )
    p.add_argument("--out", help="directory for everything (default premem-curation)")
    p.add_argument("--config", help="YAML experiment config (see configs/experiment/curation.yaml)")
    _settings_epilog(p, "premem.recipes.curation", "CurationConfig")
    p.set_defaults(func=cmd_experiment_curation, overrides=[])

    p = exp.add_parser(
        "probes",
        help="learning dynamics: probe SFT, off-policy DPO and the extend recipe; flag squeezing",
        description="For each seed: preference pairs on the tiny benchmark; SFT on chosen; SFT on chosen and "
        "rejected (extend); the same DPO from each after the given epochs; a probe set; every run's checkpoints "
        "tracked. Prints what SFT moves, the squeezing verdicts and how much less chosen falls after extend. "
        "Settings: --config YAML and/or KEY=VALUE, e.g. seeds=[0] dpo_from=[1].",
    )
    p.add_argument("--out", help="directory for everything (default premem-probes)")
    p.add_argument("--config", help="YAML experiment config (see configs/experiment/probes.yaml)")
    _settings_epilog(p, "premem.recipes.probes", "ProbesConfig")
    p.set_defaults(func=cmd_experiment_probes, overrides=[])

    p = verbs.add_parser(
        "quickstart",
        help="the whole story on a CPU in minutes: benchmark, train, score, predict, curate, report",
        description="Build the tiny arithmetic reasoning benchmark and a tiny base model, train a sweep of SFT runs, "
        "score every checkpoint on Ray actors, predict test accuracy from training metrics, write the examples "
        "with the lowest pre-memorization accuracy and an HTML report. A second invocation reuses finished work. "
        "Settings: --config YAML (see configs/quickstart.yaml) and/or KEY=VALUE overrides, "
        "e.g. sweep.lr=[1e-3,3e-3] actors=2.",
    )
    p.add_argument("--out", help="directory for everything (default premem-quickstart)")
    p.add_argument("--config", help="YAML quickstart config")
    _settings_epilog(p, "premem.recipes.quickstart", "QuickstartConfig")
    p.set_defaults(func=cmd_quickstart, overrides=[])

    p = verbs.add_parser(
        "predict",
        help="predict test accuracy from training metrics",
        description="Fit test accuracy against run-mean pre-memorization train accuracy over every "
        "(run, checkpoint) of a score store; report R², leave-one-run-out R² and MAE, with baselines.",
    )
    p.add_argument("--store", required=True, help="score store directory (runs/train_scores/test_scores.parquet)")
    p.add_argument(
        "--tau",
        type=_tau,
        default=None,
        help="memorization threshold on log(log(perplexity)), or 'auto' to choose it by nested leave-one-run-out "
        "(default: auto where at least 3 runs have test scores, else -2.3, the paper's GSM8K value)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--compact", action="store_true", help="with --json: on one line")
    p.add_argument("--plot", metavar="FILE", help="write a predicted-vs-actual scatter plot (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser(
        "report",
        help="write a self-contained HTML report of a score store",
        description="One HTML file (figures inline, nothing fetched): prediction of test accuracy with baselines, "
        "accuracy curves per run, predicted vs actual, per-example pre-memorization accuracy, memorization over "
        "training, and the runs table. Stores without test scores get the parts that need none.",
    )
    p.add_argument("--store", required=True, help="score store directory")
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument(
        "--tau",
        type=_tau,
        default=None,
        help="memorization threshold on log(log(perplexity)), or 'auto' to choose it by nested leave-one-run-out "
        "(default: auto where at least 3 runs have test scores, else -2.3, the paper's GSM8K value; as premem "
        "predict)",
    )
    p.set_defaults(func=cmd_report)

    import textwrap

    def curate_epilog() -> str:  # imported only for --help: the strategies module pulls in pandas
        from premem.curate.strategies import STRATEGIES, UNAVAILABLE, describe

        known = [textwrap.fill(f"{n}: {describe(n)}", 100, subsequent_indent="  ") for n in STRATEGIES]
        known += [textwrap.fill(f"{n} (not available): {why}.", 100, subsequent_indent="  ")
                  for n, why in UNAVAILABLE.items()]
        return "strategies:\n\n" + "\n\n".join(known)

    p = verbs.add_parser(
        "curate",
        help="select a curated subset of the training data from a score store, in the data's own format",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Rank the training examples a score store scored with a selection strategy and write the selected "
            "subset to OUT in the input's format (JSONL lines byte for byte, Parquet, CSV, Hugging Face dataset "
            "directory), the same rows as TRL prompt/completion JSONL (paper template), and manifest.json (strategy, "
            "parameters, per-example scores and ranks, input hashes, seed, budget, runs). Strategy parameters, and "
            "data settings such as data.fields.question=query, go as KEY=VALUE anywhere on the line.", 100),
    )

    def curate_help(parser=p, plain=p.format_help) -> str:
        parser.epilog = curate_epilog()
        return plain()

    p.format_help = curate_help
    p.add_argument("--config", help="YAML curate config (see configs/curate/)")
    p.add_argument("--store", help="score store directory")
    p.add_argument("--data", help="the training data the store scored (file or dataset directory)")
    p.add_argument("--strategy", help="selection strategy: premem_low (default), random, loss, difficulty, cartography, "
                   "s2l; see below")
    p.add_argument("--budget", help="examples to select: a count (100) or a fraction in (0, 1] (0.25); default 0.25")
    p.add_argument("--out", help="output directory (replaced if it is an earlier curate output)")
    p.add_argument("--run", action="append", metavar="RUN", help="use this run's scores (repeat for several; default all)")
    p.add_argument(
        "--tau",
        type=_tau,
        help="memorization threshold on log(log(perplexity)) for premem_low (default -2.3), or 'auto' to choose it "
        "as premem predict does",
    )
    p.add_argument("--seed", type=int, help="seed for sampling and tie-breaking (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT that is not a curate output")
    p.set_defaults(func=cmd_curate, overrides=[])

    p = verbs.add_parser(
        "curate-loop",
        prog="premem curate loop",
        help="the curation loop: rounds of train, score, rank, collect new examples like the top-ranked (also: "
        "premem curate loop)",
        description="Rounds of: train a run on the data so far, score it, rank its training examples with a "
        "strategy, make new examples like the top-ranked ones with a generator (arith: the tiny benchmark's; "
        "python: your module:function; llm: a model and a rewrite prompt) and add them. Every round is recorded "
        "in OUT/store (curation_rounds, curation_examples); a killed loop resumes. Settings: --config YAML (see "
        "configs/curate/loop_tiny.yaml) and/or KEY=VALUE, e.g. sizes=[192,256] generator.kind=python "
        "generator.function=mygen.py:similar.",
    )
    p.add_argument("--config", help="YAML loop config")
    p.add_argument("--out", help="directory for the rounds and the record (default premem-loop)")
    _settings_epilog(p, "premem.curate.loop", "LoopConfig")
    p.set_defaults(func=cmd_curate_loop, overrides=[])

    data = verbs.add_parser("data", help="load, validate and export datasets").add_subparsers(
        dest="data_verb", required=True, metavar="ACTION"
    )
    p = data.add_parser(
        "check",
        help="load a dataset, grade its gold traces against their answers, optionally export canonical JSONL",
        epilog="Any DataConfig field can be set as KEY=VALUE anywhere on the line, e.g. fields.question=query.",
        description="Load a dataset (JSONL, Parquet, CSV or a Hugging Face dataset directory; GSM8K, MATH, "
        "TRL prompt/completion, chat messages or preference rows) into canonical examples, checking every row, "
        "and grade each gold trace against its own final answer.",
    )
    p.add_argument("--config", help="YAML data config (see configs/data/)")
    p.add_argument("--data", help="data file or dataset directory (overrides path: in the config)")
    p.add_argument("--format", help="auto, gsm8k, math, prompt_completion, messages, preference")
    p.add_argument("--grader", help="gsm8k or math (default: from the format)")
    p.add_argument("--split", help="split of a DatasetDict directory")
    p.add_argument("--limit", type=int, help="read only the first N examples")
    p.add_argument("--out", metavar="FILE.jsonl", help="write the canonical examples here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data_check, overrides=[])

    p = verbs.add_parser(
        "score",
        help="sample and score every checkpoint of a run into a score store",
        description="For every checkpoint of a run: the gold target's perplexity for each training example and "
        "k graded samples per training and test query, on Ray actors running vLLM or transformers. "
        "A killed job resumes where it stopped. Settings: --config YAML and/or KEY=VALUE overrides anywhere on the line "
        "(e.g. sampling.temperature=0.8 sampling.max_new_tokens=256 shard_size=64 options.threads=1).",
    )
    p.add_argument("--config", help="YAML score config (see configs/score/)")
    p.add_argument("--run", help="run directory (checkpoint-<step>/ folders, a model folder, LoRA adapters, .gguf files)")
    p.add_argument("--train", help="training data (file or dataset directory)")
    p.add_argument("--test", help="test data (optional)")
    p.add_argument("--store", help="score store directory to write (resumed if it exists)")
    p.add_argument("--backend", choices=["hf", "vllm"], help="sampling backend (default hf)")
    p.add_argument("--samples", type=int, help="k: answers sampled per query (default 5)")
    p.add_argument("--actors", type=int, help="Ray sampler actors (default 1)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--run-name", dest="run_name", help="name of the run in the store (default: the directory name)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.pt) weights")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's own Python code to run")
    p.set_defaults(func=cmd_score, overrides=[])

    p = verbs.add_parser("regrade", help="re-grade stored samples (no sampling) and recompute the score tables")
    p.add_argument("--store", required=True, help="score store written by premem score")
    p.add_argument("--grader", choices=["gsm8k", "math"], help="grader to apply (default: the one recorded per split)")
    p.add_argument("--count", choices=["strict", "flexible"], default="strict", help="extraction that counts as correct")
    p.set_defaults(func=cmd_regrade)

    p = verbs.add_parser(
        "train",
        help="finetune a model (TRL SFT or DPO) into checkpoints premem can score; one run or a sweep",
        description="Supervised finetuning on a premem dataset, the loss on the template's target only (or, with "
        "method=dpo, DPO on preference data: prompt/chosen/rejected, against ref_model, by default the starting "
        "model); a weights-only checkpoint every epoch (or every save_every steps) in <out>/checkpoint-<step>/, and "
        "<out>/premem_run.json recording the run. With a sweep: block in the config (or --sweep), one run per grid "
        "point in <out>/<name>/; finished runs are skipped. Settings: --config YAML and/or KEY=VALUE overrides "
        "anywhere on the line (e.g. lr=1e-5 epochs=3 data_fraction=0.5 save_every=100 workers=2 method=dpo beta=0.1).",
    )
    p.add_argument("--config", help="YAML train config (see configs/train/)")
    p.add_argument("--model", help="local model directory to finetune")
    p.add_argument("--train", help="training data (file or dataset directory)")
    p.add_argument("--out", help="run directory (for a sweep: the directory holding the runs)")
    p.add_argument("--run-name", dest="run_name", help="name of the run (default: the run directory's name)")
    p.add_argument("--workers", type=int, help="training processes; more than 1 trains on Ray Train")
    p.add_argument("--sweep", action="store_true", help="run the config's sweep grid (a grid of one without one)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.pt) weights")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    p.set_defaults(func=cmd_train, overrides=[])

    probe = verbs.add_parser(
        "probe", help="learning dynamics of a run: log-probs of probe responses of many types, squeezing"
    ).add_subparsers(dest="probe_verb", required=True, metavar="ACTION")
    p = probe.add_parser(
        "build",
        help="draw probe prompts from preference data and make their responses of every type",
        description="Draw N probe prompts (seeded) from preference data and write, for each, responses of every "
        "type that can be made offline (chosen, rejected, other_chosen, irrelevant, random_sentence, "
        "shuffled_chosen, shuffled_irrelevant; with --model also random_tokens and the model's rephrase_chosen / "
        "rephrase_rejected) to OUT/probes.jsonl, with OUT/manifest.json recording the data's fingerprint.",
    )
    p.add_argument("--config", help="YAML probe build config")
    p.add_argument("--data", help="preference data (prompt, chosen, rejected)")
    p.add_argument("--out", help="probe set directory to write")
    p.add_argument("--n", type=int, help="probe prompts to draw (default 32)")
    p.add_argument("--seed", type=int, help="seed of the draw and the random types (default 0)")
    p.add_argument("--irrelevant", help="data whose solutions are the irrelevant responses (default: the chosen "
                   "responses of examples not drawn as probe prompts)")
    p.add_argument("--model", help="model directory: random_tokens from its tokenizer, rephrases written by it")
    p.set_defaults(func=cmd_probe_build, overrides=[])
    _settings_epilog(p, "premem.data.probes", "ProbeBuildConfig")

    p = probe.add_parser(
        "track",
        help="log π(response | prompt) of every probe response at every checkpoint of a run, on Ray actors",
        description="For every checkpoint of a run and every probe response, the summed and mean log-probability "
        "of the response given its prompt (paper template), and the greedy response y* (teacher-forced argmax on "
        "[prompt; chosen]) with its log-probability, into the store's probe_scores table; then the mean per type "
        "at each checkpoint and the squeezing verdict (greedy up while chosen and rejected both go down). "
        "A re-run skips checkpoints already tracked.",
    )
    p.add_argument("--config", help="YAML probe track config")
    p.add_argument("--run", help="run directory (checkpoint-<step>/ folders)")
    p.add_argument("--probes", help="probe set directory (premem probe build)")
    p.add_argument("--store", help="score store directory to write probe_scores to")
    p.add_argument("--data", help="the preference data the probes were built from: refuse probes built for other data")
    p.add_argument("--base", help="also track this model (the run's starting model) as step 0")
    p.add_argument("--run-name", dest="run_name", help="name of the run in the store (default: the directory name)")
    p.add_argument("--backend", choices=["hf", "vllm"], help="backend (default hf)")
    p.add_argument("--actors", type=int, help="Ray actors (default 1)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.set_defaults(func=cmd_probe_track, overrides=[])
    _settings_epilog(p, "premem.sampling.probes", "ProbeTrackConfig")

    p = probe.add_parser(
        "show",
        help="the per-type table and squeezing verdict of runs a store has probe scores for",
        description="For each run of the store's probe_scores table (or those named): the mean summed "
        "log-probability of each response type at each checkpoint, and the squeezing verdict.",
    )
    p.add_argument("--store", required=True, help="score store directory")
    p.add_argument("--run", action="append", metavar="RUN", help="show this run (repeat for several; default all)")
    p.set_defaults(func=cmd_probe_show)

    return parser


def _config(cls: type, args: argparse.Namespace, flags: dict[str, str] | None = None, overrides: list[str] | None = None):
    """A verb's config: --config YAML, then the KEY=VALUE overrides (each read as its field's type; see premem.config),
    then the flags given, {config key: argument name}, taken as they are: a path or a name on a flag is never
    parsed (`--out 'exp #2'`, `--run-name 0123`, `--data yes` stay what they say)."""
    from premem.config import load_config, parse_override

    overrides = list(args.overrides) if overrides is None else overrides
    given = {key: getattr(args, name) for key, name in (flags or {}).items()
             if getattr(args, name, None) is not None and getattr(args, name) is not False}
    for item in overrides:
        key = parse_override(item)[0]
        if key in given:  # no silent choice between the two
            raise InputError(f"--{flags[key].replace('_', '-')} and {item} both set {key}; give one")
    return load_config(cls, getattr(args, "config", None), overrides, given)


def _job_config(cls: type, args: argparse.Namespace, inputs=lambda cfg: []):
    """A recipe's config (--config YAML, KEY=VALUE, --out), its out directory checked before any work."""
    from premem.files import check_output

    cfg = _config(cls, args, {"out": "out"})
    check_output(cfg.out, [args.config, *inputs(cfg)], kind="dir", what="--out" if args.out else "out")
    return cfg


def _settings_epilog(parser: argparse.ArgumentParser, module: str, name: str) -> None:
    """--help ends with every KEY=VALUE setting of the verb's config dataclass and its docstring (built only
    when --help is asked for: the config's module may import pandas and torch)."""
    plain = parser.format_help

    def with_settings() -> str:
        import importlib
        import textwrap

        from premem.config import settings_help

        if parser.formatter_class is not argparse.RawDescriptionHelpFormatter and parser.description:
            parser.description = textwrap.fill(parser.description, 100)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = "settings (KEY=VALUE, or in --config YAML):\n\n" + settings_help(
            getattr(importlib.import_module(module), name))
        return plain()

    parser.format_help = with_settings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["curate", "loop"]:  # `premem curate loop` is the curate-loop verb
        argv = ["curate-loop", *argv[2:]]
    # KEY=VALUE overrides may sit anywhere among the options, so they are collected from
    # what argparse leaves over rather than declared as a positional.
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if hasattr(args, "overrides"):
        args.overrides = list(extra)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from premem.logs import quiet_libraries

    quiet_libraries(args.verbose)  # Ray's and transformers' own messages only with -v
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"premem: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `premem ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("premem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
