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

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from premem.data import DataConfig, load_example_set
from premem.data.arith import ArithConfig, generate, pretraining_texts, write_jsonl
from premem.errors import InputError
from premem.files import atomic_path
from premem.sampling.backend import BackendOptions, SamplingParams, check_int, check_number
from premem.train.sft import SweepConfig, TrainConfig, check_config, check_scheduler

log = logging.getLogger(__name__)


@dataclass
class BaseModelConfig:
    """The tiny decoder every run starts from."""

    hidden_size: int = 64
    """Width (heads * 32: head size 32 is one vLLM's CPU kernels support)."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 2
    """Attention heads."""
    vocab_size: int = 1024
    """Byte-level BPE vocabulary trained on the benchmark's text."""
    pretrain_steps: int = 800
    """Causal-LM steps on the related text before any finetuning."""
    pretrain_lr: float = 3e-3
    """Peak learning rate of the pretraining."""
    pretrain_problems: int = 2000
    """Problems, in the pretraining corpus's own phrasing, among the related text."""
    fact_passes: int = 8
    """Times each arithmetic fact appears in the related text."""
    seed: int = 0
    """Seed of the initial weights and of the pretraining batches."""


@dataclass
class QuickstartConfig:
    """What `premem quickstart` builds, trains, scores and writes."""

    out: str = "premem-quickstart"
    """Directory for everything: data/, base/, runs/, store/, predict.png, curated/, report.html."""
    benchmark: ArithConfig = field(default_factory=lambda: ArithConfig(n_train=256, n_test=128, max_number=20, max_operand=6))
    """The tiny reasoning benchmark."""
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
    actors: int = 2
    """Ray sampler actors (one thread each)."""
    tau: str | float | None = None
    """Memorization threshold on log(log(ppl)), auto (chosen by nested leave-one-run-out), or unset: the default
    premem predict and report use (auto where at least 3 runs have test scores, else the paper's -2.3)."""
    curate_fraction: float = 0.25
    """Share of the training examples, lowest pre-memorization accuracy first, in curated/ (premem curate's output)."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class QuickstartResult:
    out: Path
    runs: list[str]
    prediction: object  # premem.metrics.predict.Prediction
    report: Path
    curated: Path
    seconds: dict[str, float]


def quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    """Run every stage into cfg.out, reusing what an earlier invocation finished."""
    validate(cfg)
    out = Path(cfg.out)
    seconds: dict[str, float] = {}

    def stage(name: str):
        seconds[name] = time.perf_counter()
        log.info("quickstart: %s", name)

    stage("benchmark")
    train_path, test_path = write_benchmark(cfg.benchmark, out / "data")
    stage("base model")
    base = build_base_model(cfg.model, cfg.benchmark, out / "base", cfg.progress)
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
    check_benchmark(cfg.benchmark, "benchmark.", min_train=1)
    check_base_model(cfg.model, "model.")
    check_train(cfg.train, "train.")
    check_sweep(cfg.sweep, "sweep.")
    cfg.sampling.validate("sampling.")
    check_int("actors", cfg.actors, 1)
    tau = check_tau(cfg.tau)
    check_number("curate_fraction", cfg.curate_fraction, lambda f: 0 < f <= 1, "a number in (0, 1]")
    n_runs = 1
    for values in (cfg.sweep.lr, cfg.sweep.epochs, cfg.sweep.data_fraction, cfg.sweep.seed):
        n_runs *= len(values) if values else 1
    need = AUTO_MIN_RUNS if tau == "auto" else 2
    if n_runs < need:
        raise InputError(f"sweep: {n_runs} run(s) is too few to predict test accuracy across runs (needs {need}"
                         + (", tau=auto chooses tau on the others)" if tau == "auto" else ")"))


# -- checks every recipe shares (curation and probes use them too) ----------------------------


def check_benchmark(b: ArithConfig, prefix: str, min_train: int) -> None:
    check_int(prefix + "n_train", b.n_train, min_train)
    check_int(prefix + "n_test", b.n_test, 1)
    steps = list(b.steps) if isinstance(b.steps, (list, tuple)) else None
    if not (steps and len(steps) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in steps)
            and 1 <= steps[0] <= steps[1]):
        raise InputError(f"{prefix}steps: expected [fewest, most] operations per problem, 1 <= fewest <= most, "
                         f"got {b.steps!r}")
    check_int(prefix + "max_number", b.max_number, 2)  # a problem starts with 2..max_number things
    check_int(prefix + "max_operand", b.max_operand, 1)
    check_int(prefix + "phrasings", b.phrasings, 1)
    if b.phrasings > 6:
        raise InputError(f"{prefix}phrasings: expected 1..6 (the phrasings each step has), got {b.phrasings!r}")
    check_int(prefix + "seed", b.seed, 0)


def check_base_model(m: BaseModelConfig, prefix: str) -> None:
    for name, least in (("hidden_size", 1), ("layers", 1), ("heads", 1), ("pretrain_steps", 1),
                        ("pretrain_problems", 0), ("fact_passes", 1), ("seed", 0)):
        check_int(prefix + name, getattr(m, name), least)
    if m.hidden_size % m.heads:
        raise InputError(f"{prefix}hidden_size: {m.hidden_size} is not a multiple of heads ({m.heads})")
    check_int(prefix + "vocab_size", m.vocab_size, 260)  # byte-level BPE: 256 bytes and 4 special tokens at least
    check_number(prefix + "pretrain_lr", m.pretrain_lr, lambda lr: lr > 0, "a number > 0")


def check_train(t: TrainConfig, prefix: str, method: str = "sft") -> None:
    """A recipe's training settings (model, data and out are the recipe's own), with train's own checks."""
    try:
        check_config(dataclasses.replace(t, model=t.model or "base", out=t.out or "runs"))
        check_scheduler(t.lr_scheduler)
    except InputError as e:
        raise InputError(f"{prefix}{e}") from None
    if t.method != method:
        raise InputError(f"{prefix}method {t.method!r}: these runs must use method={method}")


def check_sweep(sweep: SweepConfig, prefix: str) -> None:
    """Each list of the grid: non-empty where given, no value twice, every value one a run can take."""
    rules = {
        "lr": lambda name, v: check_number(name, v, lambda lr: lr > 0, "a number > 0"),
        "epochs": lambda name, v: check_int(name, v, 1),
        "data_fraction": lambda name, v: check_number(name, v, lambda f: 0 < f <= 1, "a number in (0, 1]"),
        "seed": lambda name, v: check_int(name, v, 0),
    }
    for key, check in rules.items():
        values = getattr(sweep, key)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            raise InputError(f"{prefix}{key}: expected a non-empty list, got {values!r}")
        for i, v in enumerate(values):
            check(f"{prefix}{key}[{i}]", v)
        if len(set(values)) < len(values):
            raise InputError(f"{prefix}{key}: {values} lists a value twice (the same run twice)")


def write_benchmark(cfg: ArithConfig, data_dir: Path) -> tuple[Path, Path]:
    """train.jsonl and test.jsonl; the same seed writes the same files, so later stages can reuse work."""
    train, test = generate(cfg)
    paths = data_dir / "train.jsonl", data_dir / "test.jsonl"
    for rows, path in zip((train, test), paths):
        write_jsonl(rows, path)
    return paths


def build_base_model(cfg: BaseModelConfig, bench: ArithConfig, base: Path, progress: bool = True,
                     vocab_rows: list[dict] | None = None) -> Path:
    """The tiny model, pretrained on related text; reused while its settings are unchanged.

    vocab_rows: finetuning-style problems the tokenizer also learns from (default: the benchmark's
    training problems). Without them the traces' phrasings split into ~35% more tokens, and every
    run learns less from the same examples."""
    from premem.train.tiny import build_tiny_model, pretrain_briefly

    marker = base / "premem_base.json"
    settings = {"model": dataclasses.asdict(cfg), "benchmark": dataclasses.asdict(bench)}
    if vocab_rows is None:  # the default follows from the benchmark's settings, already recorded
        vocab_rows = generate(bench)[0]
    else:
        settings["vocab_rows"] = dataset_fingerprint_rows(vocab_rows)
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(settings)):
        log.info("base model: reusing %s", base)
        return base
    marker.unlink(missing_ok=True)
    texts = pretraining_texts(bench, n_problems=cfg.pretrain_problems, fact_passes=cfg.fact_passes)
    # the tokenizer also sees the finetuning traces, so their words are whole tokens
    vocab_text = texts + [r["question"] + "\nAnswer: " + r["answer"] for r in vocab_rows]
    build_tiny_model(vocab_text, base, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, layers=cfg.layers,
                     heads=cfg.heads, seed=cfg.seed)
    loss = pretrain_briefly(base, texts, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, seed=cfg.seed, threads=1,
                             progress=progress)
    log.info("base model: pretrained %d steps, last loss %.3f", cfg.pretrain_steps, loss)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(settings, indent=1))
    return base


def dataset_fingerprint_rows(rows: list[dict]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(r["question"] + r["answer"] for r in rows).encode()).hexdigest()[:16]


def train_runs(cfg: QuickstartConfig, base: Path, train_path: Path, runs_dir: Path) -> list[Path]:
    from premem.train.sft import sweep

    run_cfg = dataclasses.replace(
        cfg.train, model=str(base), train=DataConfig(path=str(train_path)), out=str(runs_dir), progress=cfg.progress
    )
    return sweep(run_cfg, cfg.sweep)


def score_runs(cfg: QuickstartConfig, run_dirs: list[Path], train_path: Path, test_path: Path, store: Path) -> Path:
    from premem.sampling.job import ScoreConfig, score

    for run in run_dirs:
        score(
            ScoreConfig(
                run=str(run),
                store=str(store),
                train=DataConfig(path=str(train_path)),
                test=DataConfig(path=str(test_path)),
                sampling=cfg.sampling,
                options=BackendOptions(threads=1, batch_size=64),
                actors=cfg.actors,
                shard_size=64,
                progress=cfg.progress,
            )
        )
    return store
