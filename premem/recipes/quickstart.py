"""`premem quickstart`: the whole story on a CPU in minutes, with nothing to download.

    1. benchmark   seeded arithmetic word problems in GSM8K form (premem.data.arith)
    2. base model  a tiny Llama and tokenizer built locally, pretrained briefly on related text
    3. train       a sweep of SFT runs (lr x epochs x data fraction) with premem train
    4. score       every checkpoint of every run, on Ray actors (premem score)
    5. predict     test accuracy from training metrics alone (premem predict)
    6. curate      the training examples with the lowest pre-memorization accuracy (premem curate)
    7. report      one self-contained HTML file (premem report)

Everything lands under `out`. Each stage reuses finished work: the benchmark is regenerated
identically from its seed, the base model is kept while its settings match, finished runs are
skipped by the sweep, and scoring resumes by construction. So a second invocation is quick,
and a killed one picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from premem.data import DataConfig
from premem.data.arith import ArithConfig
from premem.data.skills import SkillsConfig
from premem.data.tasks import benchmark_of, key_of, write_benchmark
from premem.errors import InputError
from premem.execution import BackendOptions, ExecConfig, check_number
from premem.files import atomic_path
from premem.sampling.backend import SamplingParams
from premem.train.base_model import BaseModelConfig, build_base_model
from premem.train.config import SweepConfig, TrainConfig, check_recipe_train, check_sweep

log = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    """What `premem quickstart` builds, trains, scores and writes."""

    out: str = "premem-quickstart"
    """Directory for everything: data/, base/, runs/, store/, predict.png, curated/, report.html."""
    task: str = "arith"
    """The tiny benchmark: arith (its settings under benchmark) or skills (under skills)."""
    benchmark: ArithConfig = field(default_factory=lambda: ArithConfig(n_train=256, n_test=128, max_number=20, max_operand=6))
    """The tiny reasoning benchmark (task arith)."""
    skills: SkillsConfig = field(default_factory=lambda: SkillsConfig(n_train=256, n_test=128))
    """The skills benchmark (task skills): problem families that need different skills."""
    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    """The tiny base model."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(batch_size=8, lr=3e-3, epochs=8, save_every="doubling", max_length=512)
    )
    """Settings every run shares (model, train data and out are filled in by the quickstart)."""
    sweep: SweepConfig = field(
        default_factory=lambda: SweepConfig(lr=[1e-3, 3e-3], epochs=[4, 32], data_fraction=[0.25, 1.0])
    )
    """The grid of runs: one per combination."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(samples=4, max_new_tokens=96))
    """How answers are sampled at every checkpoint."""
    exec: ExecConfig = field(
        default_factory=lambda: ExecConfig(options=BackendOptions(threads=1, batch_size=64), actors=2))
    """How scoring runs (backend, its options, Ray actors: one pool for every run) and whether bars show."""
    tau: str | float | None = None
    """Memorization threshold on log(log(ppl)), auto (chosen by nested leave-one-run-out), or unset: the default
    premem predict and report use (auto where at least 3 runs have test scores, else the paper's -2.3)."""
    curate_fraction: float = 0.25
    """Share of the training examples, lowest pre-memorization accuracy first, in curated/ (premem curate's output)."""


@dataclass
class QuickstartResult:
    out: Path
    runs: list[str]
    prediction: object  # premem.metrics.predict.Prediction
    report: Path
    curated: Path
    seconds: dict[str, float]


def summary(result: QuickstartResult) -> str:
    """What `premem quickstart` prints at the end: the time per stage, the fit table, where the outputs are."""
    from premem.metrics.predict import fit_table

    took = result.seconds
    return (f"\npremem quickstart: {len(result.runs)} runs in {result.out} ({sum(took.values()):.0f} s: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")\n\n" + fit_table(result.prediction)
            + f"\n\ncurated subset (lowest pre-memorization accuracy): {result.curated}\nreport: {result.report}")


def quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    """Run every stage into cfg.out, reusing what an earlier invocation finished."""
    validate(cfg)
    out = Path(cfg.out)
    seconds: dict[str, float] = {}

    def stage(name: str):
        seconds[name] = time.perf_counter()
        log.info("quickstart: %s", name)

    stage("benchmark")
    bench = benchmark_of(cfg.task, cfg.benchmark, cfg.skills)
    train_path, test_path = write_benchmark(bench, out / "data")
    stage("base model")
    base = build_base_model(cfg.model, bench, out / "base", cfg.exec.progress)
    stage("train")
    run_dirs = train_runs(cfg, base, train_path, out / "runs")
    stage("score")
    store = score_runs(cfg, run_dirs, train_path, test_path, out / "store")
    stage("predict")
    from premem.metrics.predict import predict
    from premem.metrics.premem import TrainingCurves
    from premem.report.plots import prediction_scatter
    from premem.store import ScoreStore

    curves = TrainingCurves.from_store(ScoreStore(store))
    prediction = predict(curves, cfg.tau)  # tau unset: the rule predict and report share, so all three agree
    prediction_scatter(prediction, out / "predict.png")
    stage("curate")
    from premem.curate import CurateConfig, curate

    # the registry's premem_low, as `premem curate` runs it: the subset, its TRL form and a manifest
    curated = curate(CurateConfig(store=str(store), data=DataConfig(path=str(train_path)), strategy="premem_low",
                                  budget=float(cfg.curate_fraction), tau=prediction.tau,
                                  out=str(out / "curated"))).subset
    stage("report")
    from premem.report import build_report

    report = build_report(store, out / "report.html", cfg.tau)  # the report says how tau was chosen
    seconds["end"] = time.perf_counter()
    names = list(seconds)
    took = {a: round(seconds[b] - seconds[a], 1) for a, b in zip(names, names[1:])}
    with atomic_path(out / "summary.json") as tmp:
        fit = {k: v for k, v in prediction.to_dict().items() if k != "points"}
        tmp.write_text(json.dumps({"seconds": took, "runs": [d.name for d in run_dirs], "prediction": fit}, indent=1))
    return QuickstartResult(out, [d.name for d in run_dirs], prediction, report, curated, took)


def validate(cfg: QuickstartConfig) -> None:
    """Every setting, checked before anything is written: one InputError naming the first bad field."""
    from premem.metrics.predict import AUTO_MIN_RUNS, check_tau  # sklearn: imported only when needed

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    bench = benchmark_of(cfg.task, cfg.benchmark, cfg.skills)
    bench.validate(key_of(bench), min_train=1)
    cfg.model.validate("model.")
    check_recipe_train(cfg.train, "train.")
    check_sweep(cfg.sweep, "sweep.")
    cfg.sampling.validate("sampling.")
    cfg.exec.validate()
    tau = check_tau(cfg.tau)
    check_number("curate_fraction", cfg.curate_fraction, lambda f: 0 < f <= 1, "a number in (0, 1]")
    n_runs = 1
    for values in (cfg.sweep.lr, cfg.sweep.epochs, cfg.sweep.data_fraction, cfg.sweep.seed):
        n_runs *= len(values) if values else 1
    need = AUTO_MIN_RUNS if tau == "auto" else 2
    if n_runs < need:
        raise InputError(f"sweep: {n_runs} run(s) is too few to predict test accuracy across runs (needs {need}"
                         + (", tau=auto chooses tau on the others)" if tau == "auto" else ")"))


def train_runs(cfg: QuickstartConfig, base: Path, train_path: Path, runs_dir: Path) -> list[Path]:
    from premem.train.api import sweep

    run_cfg = replace(cfg.train, model=str(base), train=DataConfig(path=str(train_path)), out=str(runs_dir),
                      progress=cfg.exec.progress)
    return sweep(run_cfg, cfg.sweep)


def score_runs(cfg: QuickstartConfig, run_dirs: list[Path], train_path: Path, test_path: Path, store: Path) -> Path:
    """Every run into one store. The first run that has work starts Ray and the actors; every later one (and a
    later call in this process) finds them running, engines loaded (premem.execution keeps one pool)."""
    from premem.sampling.job import ScoreConfig, score

    for run in run_dirs:
        score(ScoreConfig(run=str(run), store=str(store), train=DataConfig(path=str(train_path)),
                          test=DataConfig(path=str(test_path)), sampling=cfg.sampling, exec=cfg.exec, shard_size=64,
                          sample="all"))  # every pair: the fit table compares against train accuracy
    return store
