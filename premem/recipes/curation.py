"""The data-efficiency experiment on the tiny benchmark (Kang et al., Algorithm 1): do curation
strategies beat i.i.d. data scaling?

For every seed, every strategy runs the curation loop (premem.curate.loop) from the same i.i.d.
start: train on the data so far, score the run, rank its training examples with the strategy
(premem_low ranks the lowest pre-memorization accuracy first), and collect new problems like the
top-ranked ones from the task's own generator; add them and train again. `random` is i.i.d.
scaling: the loop with every new problem drawn straight from the task (generator.iid_mix=1). The
experiment compares learning curves: test accuracy against the number of training examples. A
strategy's data-efficiency ratio at a budget is the number of i.i.d. examples needed to reach its
test accuracy (read off the i.i.d. curve, interpolated in log examples) divided by the examples it
used (premem.metrics.curves).

    out/seed<s>/start/                  data.jsonl, run/, store/: round 0, shared by every loop of the seed
    out/seed<s>/<strategy>/             the strategy's loop: round<k>/ (data.jsonl, run/, store/) and
                                        store/ (its record: curation_rounds, curation_examples)
    out/seed<s>/iid/                    the loop of i.i.d. sizes beyond the rounds (iid_budgets)
    out/curves.csv, efficiency.csv, curves.png, report.html

    from premem.recipes.curation import CurationConfig, experiment, summary
    print(summary(experiment(CurationConfig(out="cur", seeds=[0]))))

Every run and store is reused when present, so a killed experiment resumes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from premem.curate.generators import GeneratorConfig
from premem.curate.loop import LoopConfig, loop
from premem.data import DataConfig
from premem.data.arith import ArithConfig, write_jsonl
from premem.data.skills import SkillsConfig
from premem.data.tasks import Benchmark, benchmark_of, fresh_problems, generate, key_of, skill_of, write_benchmark
from premem.errors import InputError
from premem.execution import BackendOptions, ExecConfig, check_int, check_number
from premem.metrics.curves import (IID_LOOP, IID_STRATEGY, comparisons, curves, efficiency, read_rounds,
                                   strategy_order)
from premem.metrics.skill_mix import skill_tables
from premem.report import plots
from premem.report.curation import build_curation_report
from premem.sampling.backend import SamplingParams
from premem.train.base_model import BaseModelConfig, build_base_model
from premem.train.config import TrainConfig, check_recipe_train

log = logging.getLogger(__name__)


@dataclass
class CurationConfig:
    """The data-efficiency experiment: learning curves of curation strategies on the tiny benchmark."""

    out: str = "premem-curation"
    """Directory for everything (runs, stores and records per loop, curves.png, efficiency.csv, report.html)."""
    task: str = "arith"
    """The tiny benchmark: arith (its settings under benchmark) or skills (under skills)."""
    benchmark: ArithConfig = field(default_factory=lambda: ArithConfig(n_train=0, n_test=256, max_number=20, max_operand=6))
    """The arith task; its test problems are the held-out set (training problems come from the generator)."""
    skills: SkillsConfig = field(default_factory=lambda: SkillsConfig(n_train=0, n_test=256))
    """The skills task (problem families that need different skills; premem/data/skills.py)."""
    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    """The tiny base model every run starts from."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(batch_size=8, lr=3e-3, epochs=32, save_every="doubling", max_length=512)
    )
    """How each round's run is trained (model, data and out are filled in)."""
    start: int = 128
    """i.i.d. examples every strategy starts from. With 64, most of them sit at pre-memorization accuracy 0 and a
    ranking has little to go on; from 128 on, it is spread."""
    budgets: list[int] = field(default_factory=lambda: [256, 512])
    """Training-set sizes after each round (each round adds budget[k] - budget[k-1] examples)."""
    iid_budgets: list[int] = field(default_factory=lambda: [1024])
    """Extra i.i.d. sizes beyond the rounds, so the i.i.d. curve reaches the accuracies strategies reach."""
    strategies: list[str] = field(default_factory=lambda: ["random", "premem_low", "loss", "difficulty", "cartography", "s2l"])
    """Strategies to compare (random is i.i.d. scaling and is always run)."""
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Further loops, each a strategy with parameters under a label of its own: {label: {strategy: name,
    params: {...}}}, e.g. {premem_low-rel0.15: {strategy: premem_low, params: {factor: 0.15}}}."""
    upsample: list[str] = field(default_factory=list)
    """Strategies also run in upsample mode: each round adds copies of the top-ranked examples instead of new
    problems like them (labelled <strategy>-upsample; Kang et al. compare both)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds: of the start set, the generator and training."""
    template_fraction: float = 0.25
    """Each round collects new problems like the top-ranked quarter (this fraction) of the data so far, cycling
    through them: a strategy only matters if it picks a region, not everything."""
    near: int | None = None
    """How alike a collected problem is to its template: None, the same operations with new numbers anywhere in
    range; k, also the start and each operand within +-k of the template's (the same facts, nearly). Strategies
    run with it are labelled <strategy>-near<k>."""
    iid_mix: float = 0.0
    """Share of each round's new problems drawn i.i.d. instead of like the templates (0: none). Strategies run
    with it are labelled <strategy>-mix<share>: curated data drifts from the test distribution, mixing holds it."""
    tau: float = -2.6
    """Memorization threshold for premem_low (the quickstart's auto value on this benchmark)."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(samples=4, max_new_tokens=96))
    """How answers are sampled."""
    exec: ExecConfig = field(default_factory=lambda: ExecConfig(options=BackendOptions(threads=1, batch_size=64),
                                                                actors=2))
    """How scoring runs: backend (hf or vllm), its options, Ray actors, cluster, progress bars."""


@dataclass
class CurationResult:
    """What the experiment found, and where it wrote it."""

    out: Path
    rounds: pd.DataFrame  # one row per (seed, strategy, round): examples, test_acc (premem.metrics.curves.rounds)
    curves: pd.DataFrame  # mean and std of test accuracy over seeds per (strategy, examples)
    efficiency: pd.DataFrame  # the data-efficiency ratios against i.i.d. scaling
    report: Path
    comparisons: pd.DataFrame | None = None  # premem_low against every other strategy per size (paired by seed)
    skills: tuple[pd.DataFrame, pd.DataFrame] | None = None  # premem.metrics.skill_mix.skill_tables: (mix, accuracy)


# where the loops' new problems are drawn from: seed + these + the size a round grows to (the numbers the
# experiment has drawn with since before it ran through the loop, so a seed's problems stay the same)
START_SEED, VOCAB_SEED, IID_BUDGET_SEED, RANDOM_SEED, LIKE_SEED = 1000, 999, 1000, 2000, 4000


def experiment(cfg: CurationConfig) -> CurationResult:
    """Run every strategy's loop for every seed, then write curves.csv, efficiency.csv, curves.png and
    report.html into cfg.out (reusing every finished run and store)."""
    validate(cfg)
    out = Path(cfg.out)
    bench = task_settings(cfg)
    _, test_path = write_benchmark(dataclasses.replace(bench, n_train=0), out / "data")
    held_out = test_questions(bench)
    # the tokenizer learns the traces' words from problems no run trains on
    vocab = fresh_problems(bench, 256, seed=VOCAB_SEED, avoid=held_out)
    base = build_base_model(cfg.model, bench, out / "base", cfg.exec.progress, vocab_rows=vocab)
    for seed in cfg.seeds:
        start = fresh_problems(bench, cfg.start, seed=START_SEED + seed, avoid=held_out)
        write_jsonl(start, out / f"seed{seed}" / "start" / "data.jsonl")  # round 0 of every loop of this seed
        for loop_cfg in seed_loops(cfg, seed, base, test_path):
            loop(loop_cfg)
    return write_results(out, bench)


def seed_loops(cfg: CurationConfig, seed: int, base: Path, test_path: Path) -> list[LoopConfig]:
    """The loops of one seed: i.i.d. scaling (random) first, then each strategy, then the i.i.d.-only sizes."""
    def one(name: str, strategy: str, sizes: list[int], generator: GeneratorConfig, params=None) -> LoopConfig:
        start = Path(cfg.out) / f"seed{seed}" / "start"
        return LoopConfig(params=dict(params or {}), out=str(Path(cfg.out) / f"seed{seed}" / name), data=DataConfig(path=str(start / "data.jsonl")),
                          test=DataConfig(path=str(test_path)), model=str(base), train=cfg.train, sizes=list(sizes),
                          strategy=strategy, tau=cfg.tau, template_fraction=cfg.template_fraction, generator=generator,
                          sampling=cfg.sampling, exec=cfg.exec, seed=seed, score_train=False, round0=str(start),
                          name=name)

    def task(seed_base: int, iid_mix: float, near: int | None = None, kind: str = "") -> GeneratorConfig:
        return GeneratorConfig(kind=kind or cfg.task, benchmark=cfg.benchmark, skills=cfg.skills, near=near,
                               iid_mix=iid_mix, seed=seed_base + seed)

    loops = [one(IID_STRATEGY, IID_STRATEGY, cfg.budgets, task(RANDOM_SEED, 1.0))]
    for name in cfg.strategies:
        if name != IID_STRATEGY:
            loops.append(one(label(cfg, name), name, cfg.budgets, task(LIKE_SEED, cfg.iid_mix, cfg.near)))
    for name, v in cfg.variants.items():
        loops.append(one(name, v["strategy"], cfg.budgets, task(LIKE_SEED, cfg.iid_mix, cfg.near), v.get("params")))
    for name in cfg.upsample:  # the same ranking, its top examples repeated instead of new ones made like them
        loops.append(one(f"{name}-upsample", name, cfg.budgets, task(LIKE_SEED, 0.0, kind="copy")))
    if cfg.iid_budgets:  # i.i.d. beyond the last round, for the efficiency ratios
        loops.append(one(IID_LOOP, IID_STRATEGY, cfg.iid_budgets, task(IID_BUDGET_SEED, 1.0)))
    return loops


def task_settings(cfg: CurationConfig) -> Benchmark:
    """The settings of the task cfg names (benchmark for arith, skills for skills)."""
    return benchmark_of(cfg.task, cfg.benchmark, cfg.skills)


def label(cfg: CurationConfig, strategy: str) -> str:
    """A strategy's name in the curves: with -near<k> and -mix<share> when those are set."""
    return strategy + (f"-near{cfg.near}" if cfg.near is not None else "") + (f"-mix{cfg.iid_mix:g}" if cfg.iid_mix else "")


def write_results(out: Path, bench: Benchmark | None = None) -> CurationResult:
    """Curves and ratios from every loop's record under out (other strategies and seeds run there before
    included), written as curves.csv, efficiency.csv, comparisons.csv, curves.png and report.html; given the
    task's settings, also what each strategy collected and taught per skill (skill_mix.csv, skill_acc.csv)."""
    rounds = read_rounds(out)
    skills = None
    if bench is not None:
        skills = skill_tables(out, lambda q, a: skill_of(bench, q, a))
        skills[0].to_csv(out / "skill_mix.csv", index=False)
        skills[1].to_csv(out / "skill_acc.csv", index=False)
    curve = curves(rounds)
    eff = efficiency(curve, rounds)
    compare = comparisons(rounds)
    compare.to_csv(out / "comparisons.csv", index=False)
    curve.to_csv(out / "curves.csv", index=False)
    eff.to_csv(out / "efficiency.csv", index=False)
    plots.save(plots.learning_curves(curve, strategy_order(curve)), out / "curves.png")
    return CurationResult(out, rounds, curve, eff, build_curation_report(out), compare, skills)


def summary(result: CurationResult) -> str:
    """What `premem experiment curation` prints: the curves by size, the efficiency ratios, where the files are."""
    out, curve = result.out, result.curves
    table = curve.assign(acc=[f"{m:.3f} ± {s:.3f}" for m, s in zip(curve["mean"], curve["se"].fillna(0))])
    eff = result.efficiency
    eff = eff.assign(ratio=[f"{b}{r:.2f}" for b, r in zip(eff["bound"], eff["ratio"])],
                     per_seed=[f"{m:.2f} ± {s:.2f}" if pd.notna(s) else f"{m:.2f}" if pd.notna(m) else "–"
                               for m, s in zip(eff["ratio_mean"], eff["ratio_se"])])
    lines = [
        "\ntest accuracy (mean ± standard error over seeds) by training-set size\n",
        table.pivot(index="strategy", columns="examples", values="acc").to_string(),
        "\ndata efficiency: i.i.d. examples needed for the same test accuracy / examples used "
        "(ratio: of the mean curves; per_seed: mean ± standard error of each seed's own ratio)\n",
        eff[["strategy", "examples", "test_acc", "iid_examples_needed", "ratio", "per_seed"]].to_string(
            index=False, float_format=lambda v: f"{v:.3f}"),
    ]
    compare = result.comparisons
    if compare is not None and not compare.empty:
        shown = compare.assign(diff=[f"{d:+.3f} ± {s:.3f}" for d, s in zip(compare["diff"], compare["se"].fillna(0))],
                               ahead=compare["ahead"].map({True: "yes", False: "no"}))
        lines += ["\npremem_low minus each strategy, test accuracy (mean ± standard error over seeds, paired by seed);"
                  " ahead: by more than two standard errors\n", shown.to_string(index=False)]
    if result.skills is not None and not result.skills[0].empty:
        from premem.metrics.skill_mix import summary_tables

        share, accuracy = summary_tables(*result.skills)
        curated = result.rounds.loc[result.rounds["round"] > 0, "examples"]  # the largest size the strategies reach
        top = int(curated.max()) if len(curated) else accuracy.index.get_level_values("examples").max()
        lines += ["\nshare of each skill among the examples a strategy added (mean over seeds and rounds)\n",
                  share.to_string(float_format=lambda v: f"{v:.2f}"),
                  f"\ntest accuracy per skill at {top} examples (mean over seeds)\n",
                  accuracy.xs(top, level="examples").to_string(float_format=lambda v: f"{v:.2f}")]
    return "\n".join(lines + [
        f"\n{out / 'curves.png'}  {out / 'efficiency.csv'}  {out / 'curves.csv'}  {out / 'comparisons.csv'}",
        f"records: {out}/seed<s>/<strategy>/store (curation_rounds, curation_examples)",
        f"report: {result.report}",
    ])


def validate(cfg: CurationConfig) -> None:
    """Every setting, checked before anything is written: one InputError naming the first bad field."""
    from premem.curate.strategies import get_strategy

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    bench = task_settings(cfg)
    bench.validate(key_of(bench), min_train=0)  # training problems come from the generator
    cfg.model.validate("model.")
    check_recipe_train(cfg.train, "train.")
    check_int("start", cfg.start, 1)
    _check_sizes("budgets", cfg.budgets, cfg.start, "start", allow_empty=False)
    _check_sizes("iid_budgets", cfg.iid_budgets, cfg.budgets[-1], "the last budget", allow_empty=True)
    if not isinstance(cfg.strategies, list) or not cfg.strategies:
        raise InputError(f"strategies: expected a non-empty list of strategy names, got {cfg.strategies!r}")
    for name in cfg.strategies:
        get_strategy(name)  # an unknown name fails now, not after an hour of training
    if not isinstance(cfg.variants, dict):
        raise InputError(f"variants: expected a mapping label -> {{strategy, params}}, got {cfg.variants!r}")
    for name, v in cfg.variants.items():
        if not isinstance(v, dict) or set(v) - {"strategy", "params"} or not isinstance(v.get("strategy"), str):
            raise InputError(f"variants.{name}: expected {{strategy: name, params: {{...}}}}, got {v!r}")
        if name in cfg.strategies or name == IID_LOOP:
            raise InputError(f"variants.{name}: the label is already a strategy's loop; give the variant its own")
        try:
            get_strategy(v["strategy"], v.get("params") or {})
        except InputError as e:
            raise InputError(f"variants.{name}: {e}") from None
    if not isinstance(cfg.upsample, list):
        raise InputError(f"upsample: expected a list of strategy names, got {cfg.upsample!r}")
    for i, name in enumerate(cfg.upsample):
        if name == IID_STRATEGY:
            raise InputError(f"upsample[{i}]: random has no ranking to upsample by (it is i.i.d. scaling)")
        try:
            get_strategy(name)
        except InputError as e:
            raise InputError(f"upsample[{i}]: {e}") from None
    if not isinstance(cfg.seeds, list) or not cfg.seeds:
        raise InputError(f"seeds: expected a non-empty list of seeds, got {cfg.seeds!r}")
    for i, seed in enumerate(cfg.seeds):
        check_int(f"seeds[{i}]", seed, 0)
    if len(set(cfg.seeds)) < len(cfg.seeds):
        raise InputError(f"seeds: {cfg.seeds} lists a seed twice")
    check_number("template_fraction", cfg.template_fraction, lambda f: 0 < f <= 1, "a fraction in (0, 1]")
    if cfg.near is not None:
        check_int("near", cfg.near, 0)
        if cfg.task != "arith":
            raise InputError(f"near: keeps an arith problem's numbers; the {cfg.task} task has no such option")
    check_number("iid_mix", cfg.iid_mix, lambda m: 0 <= m <= 1, "a share in [0, 1]")
    check_number("tau", cfg.tau, lambda t: True, "a finite number")
    cfg.sampling.validate("sampling.")
    cfg.exec.validate("exec.")


def _check_sizes(name: str, sizes, after: int, after_name: str, allow_empty: bool) -> None:
    """Training-set sizes: integers growing from `after`, each round adding examples."""
    if not isinstance(sizes, list) or (not sizes and not allow_empty):
        raise InputError(f"{name}: expected a non-empty list of training-set sizes, got {sizes!r}")
    for i, n in enumerate(sizes):
        check_int(f"{name}[{i}]", n, 1)
    if any(b <= a for a, b in zip([after] + sizes, sizes)):
        raise InputError(f"{name}: expected sizes growing from {after_name} ({after}), got {sizes}")


def test_questions(cfg: Benchmark) -> set[str]:
    return {p["question"] for p in generate(dataclasses.replace(cfg, n_train=0))[1]}
