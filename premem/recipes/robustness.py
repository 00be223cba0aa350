"""`premem experiment robustness`: the paper's per-example robustness probe on the quickstart's runs.

Kang et al. (arXiv 2411.07681) follow each training prompt by a perturbation (" First", " We know that", after
"Answer:") and call an example's accuracy under perturbation its robustness; per-example pre-memorization train
accuracy predicts it, plain train accuracy does not (a memorized example is right, and fragile). This recipe
measures the same on the tiny benchmark:

    1. quickstart   benchmark, base model, the sweep of runs, their store (premem quickstart: work it finished
                    before, in quickstart.out, is reused)
    2. probe        every checkpoint of every run scored again into out/store: the training queries only, every
                    pair sampled, and each training prompt under each perturbation (premem score perturbations=)
    3. analyse      per example and checkpoint: robustness, pre-memorization accuracy (at the quickstart's tau),
                    train accuracy, gold-trace perplexity (premem.metrics.robustness)

    out/store/            the probe's score store (train_scores, robustness_scores, their samples)
    out/examples.csv      every trained example at every checkpoint: robustness and its predictors
    out/robustness.csv    Pearson and Spearman of each predictor with robustness, pooled and per run, n
    out/comparison.csv    premem's |Spearman| minus each other predictor's, with a 95% bootstrap interval
    out/robustness.png, out/report.html

The probe's store resumes like any score store, so a killed experiment picks up where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from premem.data import DataConfig
from premem.errors import InputError
from premem.execution import check_int
from premem.files import atomic_path
from premem.recipes.quickstart import QuickstartConfig, quickstart
from premem.recipes.quickstart import validate as check_quickstart

log = logging.getLogger(__name__)


@dataclass
class RobustnessConfig:
    """The per-example robustness probe (Kang et al.) on the quickstart's runs."""

    out: str = "premem-robustness"
    """Directory for the experiment's outputs: store/, examples.csv, robustness.csv, comparison.csv, robustness.png,
    report.html."""
    quickstart: QuickstartConfig = field(default_factory=QuickstartConfig)
    """The runs to probe: premem quickstart's settings (run first; it reuses what it finished in quickstart.out)."""
    perturbations: list[str] = field(default_factory=lambda: [" First", " We know that"])
    """Texts each training prompt is followed by, the model continuing after them (the paper's two)."""
    bootstrap: int = 1000
    """Resamples of the examples behind the comparison's 95% intervals."""
    detector: str = "tau"
    """How pre-memorization accuracy decides memorization: tau (the quickstart's) or relative (the relative
    detector, its factor chosen on the quickstart's store as premem predict --detector relative chooses it)."""


@dataclass
class RobustnessResult:
    out: Path
    runs: list[str]
    tau: float
    correlations: pd.DataFrame
    comparison: pd.DataFrame
    accuracy: pd.DataFrame  # at the last checkpoints, with no perturbation and under each (by_perturbation)
    seconds: dict[str, float]
    factor: float | None = None  # the relative detector's factor, when it decided memorization


def experiment(cfg: RobustnessConfig) -> RobustnessResult:
    """Run the quickstart, probe every checkpoint of its runs, and write the tables, the figure and the report."""
    validate(cfg)
    out = Path(cfg.out)
    took = {}
    start = time.perf_counter()
    qs = quickstart(cfg.quickstart)
    took["quickstart"] = time.perf_counter() - start
    store = probe(cfg, qs.runs)
    took["probe"] = time.perf_counter() - start - took["quickstart"]
    factor = None
    if cfg.detector == "relative":
        from premem.metrics.detectors import chosen_factor

        factor = chosen_factor(Path(cfg.quickstart.out) / "store")
    result = analyse(cfg, out, store, qs.runs, float(qs.prediction.tau), factor)
    took["analyse"] = time.perf_counter() - start - took["quickstart"] - took["probe"]
    result.seconds.update({k: round(v, 1) for k, v in took.items()})
    return result


def validate(cfg: RobustnessConfig) -> None:
    """Every setting, checked before anything is written: one InputError naming the first bad field."""
    from premem.sampling.perturb import check_perturbations

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    if out.resolve() == Path(cfg.quickstart.out).resolve():
        raise InputError(f"out: {out} is quickstart.out too; the probe's store and report go elsewhere")
    try:
        check_quickstart(cfg.quickstart)
    except InputError as e:  # its fields are under quickstart. here
        raise InputError(f"quickstart.{e}") from None
    check_perturbations(cfg.perturbations, "trained")
    if not cfg.perturbations:
        raise InputError("perturbations: give at least one, e.g. [\" First\", \" We know that\"]")
    check_int("bootstrap", cfg.bootstrap, 1)
    if cfg.detector not in ("tau", "relative"):
        raise InputError(f"detector: expected tau or relative, got {cfg.detector!r}")


def probe(cfg: RobustnessConfig, runs: list[str]) -> Path:
    """Every run of the quickstart into out/store, on the quickstart's actors (one pool per process)."""
    from premem.sampling.job import ScoreConfig, score

    qs = Path(cfg.quickstart.out)
    store = Path(cfg.out) / "store"
    train = qs / "data" / "train.jsonl"  # where premem quickstart writes its benchmark
    for run in runs:
        score(ScoreConfig(run=str(qs / "runs" / run), store=str(store), train=DataConfig(path=str(train)),
                          sampling=cfg.quickstart.sampling, exec=cfg.quickstart.exec, shard_size=64,
                          sample="all", perturbations=list(cfg.perturbations)))  # train accuracy needs every pair
    return store


def analyse(cfg: RobustnessConfig, out: Path, store_dir: Path, runs: list[str], tau: float,
            factor: float | None = None) -> RobustnessResult:
    from premem.metrics.robustness import by_perturbation, compare, correlations, examples
    from premem.report.plots import save
    from premem.report.robustness import build_report, robustness_figure
    from premem.store import ScoreStore

    store = ScoreStore(store_dir)
    frame = examples(store, tau, factor)
    corr = correlations(frame)
    accuracy = by_perturbation(store, frame)
    comparison = compare(frame, n_boot=cfg.bootstrap)
    for name, df in (("examples", frame), ("robustness", corr), ("comparison", comparison)):
        with atomic_path(out / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
    fig = robustness_figure(frame, corr)
    save(fig, out / "robustness.png")
    last = frame[frame["last"]]
    facts = {
        "experiment": str(out.resolve()), "runs": f"{len(runs)} (premem quickstart in {cfg.quickstart.out})",
        "perturbations": ", ".join(repr(p) for p in cfg.perturbations),
        "samples": f"{cfg.quickstart.sampling.samples} per query per perturbation (temperature "
                   f"{cfg.quickstart.sampling.temperature:g}), every checkpoint",
        "tau": (f"{tau:g} (the quickstart's; memorized when log(log(ppl)) < tau)" if factor is None else
                f"none: the relative detector, factor {factor:g} (chosen on the quickstart's store)"),
        "examples at the last checkpoints": f"{len(last)}; mean robustness {last['robustness'].mean():.3f}",
    }
    build_report(out / "report.html", frame, corr, comparison, accuracy, facts, fig)
    return RobustnessResult(out, runs, tau if factor is None else math.nan, corr, comparison, accuracy, {},
                            factor)


def summary(result: RobustnessResult) -> str:
    """What `premem experiment robustness` prints: the correlations pooled and per run, the comparison, the time."""
    corr = result.correlations
    last = corr[corr["examples"] == "last"].drop(columns="examples")
    pooled = corr[(corr["examples"] != "last") & (corr["runs"] == "all runs") & (corr["predictor"] != "train_acc")
                  | (corr["examples"] == "all") & (corr["runs"] == "all runs")].drop(columns="runs")
    took = result.seconds
    fmt = {"float_format": lambda v: f"{v:.3f}", "formatters": {"spearman_p": "{:.1e}".format}}
    return "\n".join([
        f"\npremem experiment robustness: {len(result.runs)} runs, "
        + (f"tau {result.tau:g} " if result.factor is None else f"relative detector, factor {result.factor:g} ")
        + 
        f"({sum(took.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")",
        "\naccuracy of the training prompts' samples at each run's last checkpoint, as they are and perturbed\n",
        result.accuracy.to_string(index=False, **fmt),
        "\ncorrelation with per-example robustness at each run's last checkpoint\n", last.to_string(index=False, **fmt),
        "\npooled over runs: every checkpoint (all), and the last checkpoint's examples answered right in every "
        "sample (solved: train accuracy 1)\n", pooled.to_string(index=False, **fmt),
        "\npremem's |Spearman| minus each other predictor's (last checkpoints, pooled; 95% bootstrap interval)\n",
        result.comparison.to_string(index=False, **fmt),
        f"\n{result.out / 'robustness.csv'}  {result.out / 'examples.csv'}  {result.out / 'robustness.png'}",
        f"report: {result.out / 'report.html'}",
    ])
