"""The `premem` command: a table of verbs, each a config class, a library function and a printer.

One override path (configure): --config YAML, then KEY=VALUE (read by each field's type), then the flags, each
setting a dotted key as given (`--actors 2` is exec.actors=2). Modules are named, imported when used (a fast
--help). InputError ends here as one line on stderr (`premem: error: ...`) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from premem import commands
from premem.commands import lib, tau_type
from premem.errors import InputError
from premem.version import __version__


KINDS = {"int": {"type": int, "metavar": "N"}, "float": {"type": float, "metavar": "X"}, "tau": {"type": tau_type},
         "yes": {"action": "store_true"}, "list": {"action": "append"}}


def flag(name: str, key: str | None = None, help: str | None = None, **kw) -> tuple:
    """A verb's flag: it sets the config's dotted `key` (help: the key's docstring), or is the verb's own."""
    return name, key, help, kw


def keys(*specs: str) -> tuple:
    """Flags that each set a config key, as "--flag key [int|float|tau|yes|list]"."""
    return tuple(flag(name, key, None, **KINDS[kind[0]] if kind else {"metavar": key.rpartition(".")[2].upper()})
                 for name, key, *kind in map(str.split, specs))


@dataclass(frozen=True)
class Out:
    """An output directory (a config key), checked before any work against the inputs: premem.files.check_output."""

    key: str
    inputs: tuple[str, ...] = ()
    replaces: bool | Callable[[Any, argparse.Namespace], bool] = False
    inside: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verb:
    help: str
    run: str | Callable  # "module:function" called with the config; a callable gets (config, flags)
    show: str | Callable  # "module:function" called with the result; a callable gets (result, config, flags)
    config: str | None = None  # "module:Class" filled by --config, KEY=VALUE and the flags; None: the flags only
    flags: tuple = ()
    needs: tuple[tuple[str, str], ...] = ()  # (key, the error when it is unset), checked in order
    outs: tuple[Out, ...] = ()
    params: str | None = None  # a KEY=VALUE naming no field goes into this mapping (strategy parameters)
    epilog: Callable[[], str] | None = None
    example: str = ""  # KEY=VALUE settings for the description


def get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def call(spec: str | Callable, first: Any, *rest: Any) -> Any:
    return lib(spec)(first) if isinstance(spec, str) else spec(first, *rest)


TAU = ("memorization threshold on log(log(perplexity)), or 'auto' to choose it by nested leave-one-run-out "
       "(default: auto where at least 3 runs have test scores, else -2.3, the paper's GSM8K value)")
CONFIG = flag("--config", help="YAML config (see configs/); KEY=VALUE overrides it, flags override both")
EXEC = (flag("--backend", "exec.backend", choices=["hf", "vllm"]), *keys(
    "--actors exec.actors int", "--gpus-per-actor exec.gpus_per_actor float", "--address exec.address",
    "--run-name run_name"))
JOB = (CONFIG, *keys("--out out"))
VERBS: dict[str, Verb] = {
    "experiment curation": Verb(
        "learning curves of curation strategies: does premem_low beat i.i.d. data scaling? Rounds of train, score, "
        "rank and collect from one i.i.d. start, per strategy and seed", "premem.recipes.curation:experiment",
        "premem.recipes.curation:summary", "premem.recipes.curation:CurationConfig", JOB, outs=(Out("out"),),
        example="seeds=[0] strategies=[random,premem_low] budgets=[128] exec.backend=vllm"),
    "experiment probes": Verb(
        "learning dynamics: probe SFT, off-policy DPO and the extend recipe on every checkpoint; flag squeezing",
        "premem.recipes.probes:experiment", "premem.recipes.probes:summary", "premem.recipes.probes:ProbesConfig", JOB,
        outs=(Out("out"),), example="seeds=[0] dpo_from=[1]"),
    "experiment robustness": Verb(
        "per-example robustness under perturbed prompts, against premem", "premem.recipes.robustness:experiment",
        "premem.recipes.robustness:summary", "premem.recipes.robustness:RobustnessConfig", JOB, outs=(Out("out"),)),
    "quickstart": Verb(
        "the whole story on a CPU in minutes: benchmark, train, score, predict, curate, report (a re-run reuses work)",
        "premem.recipes.quickstart:quickstart", "premem.recipes.quickstart:summary",
        "premem.recipes.quickstart:QuickstartConfig", JOB, outs=(Out("out"),),
        example="sweep.lr=[1e-3,3e-3] exec.actors=2 (configs/quickstart.yaml)"),
    "predict": Verb(
        "predict test accuracy from training metrics: R², leave-one-run-out R² and MAE over a store's checkpoints, with "
        "baselines; or save the fit and predict runs without test scores from it", commands.predict,
        commands.show_predict, flags=(
            flag("--store", help="score store directory (runs/train_scores/test_scores.parquet)", required=True),
            flag("--tau", help=TAU, type=tau_type), flag("--json", help="print one JSON object", action="store_true"),
            flag("--compact", help="with --json: on one line", action="store_true"),
            flag("--detector", help=commands.DETECT, choices=commands.DETECTORS, default="tau"),
            flag("--plot", help="write a predicted-vs-actual scatter plot (.png, .svg, .pdf)", metavar="FILE"),
            flag("--save-fit", help="save the fit, its 90%% band and the band's coverage as JSON", metavar="FILE"),
            flag("--fit", help="predict every run from a saved fit, with its band (test scores not needed)",
                 metavar="FILE"))),
    "report": Verb(
        "write a self-contained HTML report of a score store", commands.report, lambda out, *_: f"report: {out}", flags=(
            flag("--store", help="score store directory", required=True),
            flag("--out", help="HTML file to write (default report.html)", default="report.html"),
            flag("--tau", help=TAU + "; as premem predict", type=tau_type),
            flag("--fit", help="draw predicted test accuracy from a saved fit (predict --save-fit)", metavar="FILE"))),
    "curate": Verb(
        "select a curated subset of the training data from a score store, in the data's own format, as TRL "
        "prompt/completion JSONL and with a manifest", "premem.curate:curate", "premem.curate.api:summary",
        "premem.curate:CurateConfig", (CONFIG, *keys(
            "--store store", "--data data.path", "--strategy strategy", "--budget budget", "--out out", "--run runs list",
            "--tau tau tau", "--seed seed int", "--overwrite overwrite yes")),
        needs=(("out", "curate: say where to write the subset (--out DIR)"),), outs=(Out("out", ("store", "data.path"),
        replaces=True),), params="params", epilog=commands.strategies, example="mode=upsample data.fields.question=query"),
    "curate-loop": Verb(
        "the curation loop: train, score, rank, collect examples like the top-ranked (also: premem curate loop)",
        "premem.curate.loop:loop", lambda table, cfg, _: lib("premem.curate.loop:summary")(table, cfg.out),
        "premem.curate.loop:LoopConfig", JOB, outs=(Out("out", ("data.path", "test.path", "model")),),
        example="sizes=[192,256] generator.kind=python (configs/curate/loop_tiny.yaml)"),
    "data check": Verb(
        "load a dataset, grade its gold traces against their answers, optionally export canonical JSONL",
        lambda cfg, args: lib("premem.data.check:check_data")(cfg, args.out),
        lambda result, _, args: json.dumps(result.to_dict(), indent=1) if args.json else str(result),
        "premem.data:DataConfig", (CONFIG, *keys("--data path", "--format format", "--grader grader", "--split split",
                                                 "--limit limit int"),
                                   flag("--out", help="write the canonical examples here", metavar="FILE.jsonl"),
                                   flag("--json", help="print one JSON object", action="store_true")),
        example="fields.question=query"),
    "score": Verb(
        "sample and score every checkpoint of a run into a score store, on Ray actors (a killed job resumes)",
        "premem.sampling.job:score", lambda s, cfg, _: commands.done(s, "tasks run") + f"{s.generated_tokens} tokens generated "
        f"in {s.seconds:.1f} s -> {cfg.store}", "premem.sampling.job:ScoreConfig", (CONFIG, *keys(
            "--run run", "--train train.path", "--test test.path", "--store store", "--samples sampling.samples int",
            "--allow-pickle exec.options.allow_pickle yes", "--trust-remote-code exec.options.trust_remote_code yes"),
            *EXEC), needs=(("run", "score: say which run to score (--run RUN_DIR)"),
                           ("store", "store: say where to write the scores (--store DIR)")),
        outs=(Out("store", ("run", "train.path", "test.path", "base_model"), inside=("run",)),),
        example="sampling.temperature=0.8 shard_size=64 exec.options.threads=1"),
    "watch": Verb(
        "score runs while they train: each checkpoint once complete, on actors kept warm; predictions and the report "
        "updated after each (stops when every run has finished, at --until, after --idle, on Ctrl-C)",
        "premem.watch.watcher:watch", "premem.watch.watcher:summary", "premem.watch:WatchConfig", (CONFIG, *keys(
            "--run runs list", "--train train.path", "--test test.path", "--store store", "--fit fit", "--report report",
            "--until until int", "--idle idle float", "--poll poll float", "--samples sampling.samples int"), *EXEC[:4]),
        example="sampling.temperature=0.8 exec.options.threads=1 state_file=trainer_state.json"),
    "regrade": Verb(
        "re-grade stored samples (no sampling) and recompute the score tables",
        lambda args, _: lib("premem.sampling.regrade:regrade")(lib("premem.store:ScoreStore")(args.store), args.grader,
                                                               args.count),
        lambda changed, args, _: f"regraded {args.store}: strict grades changed per split: {changed}", flags=(
            flag("--store", help="score store written by premem score", required=True),
            flag("--grader", help="grader to apply (default: the one recorded per split)", choices=["gsm8k", "math"]),
            flag("--count", help="extraction that counts as correct", choices=["strict", "flexible"], default="strict"))),
    "train": Verb(
        "finetune a model (TRL SFT or DPO) into checkpoints premem can score; one run or a sweep", commands.train,
        lambda lines, *_: "\n".join(lines), "premem.train.config:TrainConfig", (CONFIG, *keys(
            "--model model", "--train train.path", "--out out", "--run-name run_name", "--workers workers int",
            "--allow-pickle allow_pickle yes", "--trust-remote-code trust_remote_code yes"),
            flag("--sweep", help="run the config's sweep grid (a grid of one without one)", action="store_true")),
        needs=(("out", "out: say where to write the run (--out DIR)"),),  # a run started again is cleared: not a sweep
        outs=(Out("out", ("model", "train.path", "ref_model"), replaces=lambda c, a: not (a.sweep or c.sweep)),),
        example="lr=1e-5 epochs=3 workers=2 method=dpo"),
    "probe build": Verb(
        "draw probe prompts from preference data and make their responses of every type",
        "premem.sampling.probe_build:build_probes", "premem.data.probes:summary", "premem.data.probes:ProbeBuildConfig", (
            CONFIG, *keys("--data data", "--out out", "--n n int", "--seed seed int", "--irrelevant irrelevant",
                          "--model model")), outs=(Out("out", ("data", "irrelevant", "model"), replaces=True),)),
    "probe track": Verb(
        "log π(response | prompt) of every probe response at every checkpoint of a run, on Ray actors",
        "premem.sampling.probes:track", lambda s, cfg, _: commands.done(s, "tracked") + f"{s.seconds:.1f} s -> {cfg.store} "
        f"(probe_scores)\n\n" + commands.probes(cfg.store, [s.run]),
        "premem.sampling.probes:ProbeTrackConfig", (CONFIG, *keys(
            "--run run", "--probes probes", "--store store", "--data data", "--base base"), *EXEC),
        outs=(Out("store", ("run", "probes", "data", "base"), inside=("run", "probes")),)),
    "probe show": Verb(
        "the per-type table and squeezing verdict of runs a store has probe scores for",
        lambda args, _: commands.probes(args.store, args.run), lambda text, *_: text, flags=(
            flag("--store", help="score store directory", required=True),
            flag("--run", help="show this run (repeat for several; default all)", action="append", metavar="RUN"))),
}
GROUPS = {"experiment": ("experiments on the tiny benchmark", "NAME"), "data": ("load, validate and export datasets",
          "ACTION"), "probe": ("learning dynamics of a run: log-probs of probe responses of many types", "ACTION")}


def configure(verb: Verb, args: argparse.Namespace) -> Any:
    """The one override path: --config, then KEY=VALUE, then the flags given; then the verb's checks."""
    if verb.config is None:
        return args
    from premem.config import load_config, parse_override
    from premem.files import check_output

    cls, overrides = lib(verb.config), list(args.overrides)
    if verb.params:  # a KEY=VALUE naming no field is a parameter: mode=upsample is params.mode
        names = {f.name for f in fields(cls)}
        overrides = [o if o.partition("=")[0].split(".")[0] in names else f"{verb.params}.{o}" for o in overrides]
    flag_of = {key: name for name, key, _, _ in verb.flags if key}
    given = {k: v for k in flag_of if (v := getattr(args, k)) is not None and v is not False}  # 0 is given
    for item in overrides:
        if (key := parse_override(item)[0]) in given:  # no silent choice between the two
            raise InputError(f"{flag_of[key]} and {item} both set {key}; give one")
    cfg = load_config(cls, args.config, overrides, given)
    if missing := next((message for key, message in verb.needs if not get(cfg, key)), None):
        raise InputError(missing)
    for out in (o for o in verb.outs if get(cfg, o.key)):  # an unset output: the job says so
        check_output(get(cfg, out.key), [args.config, *(get(cfg, k) for k in out.inputs)], kind="dir",
                     what=flag_of[out.key] if out.key in given else out.key, inside=[get(cfg, k) for k in out.inside],
                     replaces=out.replaces(cfg, args) if callable(out.replaces) else out.replaces)
    return cfg


class OneLineErrors(argparse.ArgumentParser):
    """argparse's errors (a bad --tau, a missing --store, an unknown flag) as premem's: one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"premem: error: {self.prog}: {message} (see {self.prog} --help)\n")


def with_help(parser: argparse.ArgumentParser, verb: Verb) -> None:
    """--help, built when asked for (the config's module may import torch): a config flag's help is its
    setting's docstring, and the epilog lists every KEY=VALUE setting with its docstring and default."""
    plain = parser.format_help

    def format_help() -> str:
        from premem.config import key_doc, settings_help
        cls = lib(verb.config) if verb.config else None
        for action in (a for a in parser._actions if cls and a.help is None):  # a flag that sets a config key
            action.help = key_doc(cls, action.dest).replace("%", "%%")
        parts = [verb.epilog()] if verb.epilog else []
        parts += ["settings (KEY=VALUE, or in --config YAML):\n\n" + settings_help(cls)] if cls else []
        parser.epilog = "\n\n".join(parts) or None
        return plain()

    parser.format_help = format_help


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="premem", description="Pre-memorization data curation for LLM finetuning: score runs, "
                           "predict test accuracy, curate data.")
    parser.add_argument("--version", action="version", version=f"premem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    top, groups = parser.add_subparsers(dest="verb", required=True, metavar="VERB"), {}
    for name, verb in VERBS.items():
        group, _, sub = name.rpartition(" ")
        if group and group not in groups:
            groups[group] = top.add_parser(group, help=GROUPS[group][0]).add_subparsers(
                dest=f"{group}_verb", required=True, metavar=GROUPS[group][1])
        p = (groups[group] if group else top).add_parser(
            sub, prog=f"premem {name.replace('-', ' ')}", help=verb.help, formatter_class=argparse.RawDescriptionHelpFormatter,
            description=textwrap.fill(verb.help[0].upper() + verb.help[1:] + "." + bool(verb.example) * (
                f" Settings: --config YAML and/or KEY=VALUE anywhere on the line, e.g. {verb.example}."), 100))
        for flag_name, key, help_, kw in verb.flags:
            p.add_argument(flag_name, dest=key or flag_name.lstrip("-").replace("-", "_"), help=help_, **kw)
        p.set_defaults(name=name, overrides=[])
        with_help(p, verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["curate", "loop"]:  # `premem curate loop` is the curate-loop verb
        argv = ["curate-loop", *argv[2:]]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # KEY=VALUE may sit anywhere: it is what argparse leaves over
    verb = VERBS[args.name]
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad or (extra and verb.config is None):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    args.overrides = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    lib("premem.logs:quiet_libraries")(args.verbose)  # Ray's and transformers' own messages only with -v
    try:
        cfg = configure(verb, args)
        if (text := call(verb.show, call(verb.run, cfg, args), cfg, args)) is not None:
            print(text)
        return 0
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
