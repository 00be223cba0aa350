"""The curation loop and the data-efficiency experiment on the tiny benchmark (Kang et al., Algorithm 1).

One round of the loop: train on the data so far, score the run, rank its training examples
with a strategy (premem_low ranks the lowest pre-memorization accuracy first), and collect
new examples like the top-ranked ones from a generator; add them and train again. `random`
is i.i.d. scaling: new examples straight from the task's distribution.

The experiment runs the loop for every strategy from the same i.i.d. start, for several
seeds, and compares learning curves: test accuracy against the number of training examples.
A strategy's data-efficiency ratio at a budget is the number of i.i.d. examples needed to
reach its test accuracy (read off the i.i.d. curve, interpolated in log examples) divided by
the examples it used.

    out/seed<s>/start/                 data.jsonl, run/, store/      (shared by all strategies)
    out/seed<s>/<strategy>/round<k>/   data.jsonl, run/, store/
    out/rounds.parquet                 one row per (seed, strategy, round): examples, test accuracy
    out/curves.parquet, curves.png, efficiency.csv

Every run and store is reused when present, so a killed experiment resumes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from premem.curate.loop import pick_templates, train_and_score
from premem.data import DataConfig
from premem.data.arith import ArithConfig, generate, similar_problems, write_jsonl
from premem.errors import InputError
from premem.files import atomic_path
from premem.recipes.quickstart import (
    BaseModelConfig,
    build_base_model,
    check_base_model,
    check_benchmark,
    check_train,
    write_benchmark,
)
from premem.sampling.backend import BackendOptions, SamplingParams, check_int, check_number
from premem.train.sft import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class CurationConfig:
    """The data-efficiency experiment: learning curves of curation strategies on the tiny benchmark."""

    out: str = "premem-curation"
    """Directory for everything (runs, stores, rounds.parquet, curves.png, efficiency.csv)."""
    benchmark: ArithConfig = field(default_factory=lambda: ArithConfig(n_train=0, n_test=256, max_number=20, max_operand=6))
    """The task; its test problems are the held-out set (training problems come from the generator)."""
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
    actors: int = 2
    """Ray sampler actors."""
    progress: bool = True
    """Show progress bars."""


def experiment(cfg: CurationConfig) -> pd.DataFrame:
    """Run every strategy's loop for every seed; returns the rounds table (also written to out/)."""
    validate(cfg)
    strategies = ["random"] + [s for s in cfg.strategies if s != "random"]
    sizes = [cfg.start] + list(cfg.budgets)
    out = Path(cfg.out)
    _, test_path = write_benchmark(dataclasses.replace(cfg.benchmark, n_train=0), out / "data")
    # the tokenizer learns the traces' words from problems no run trains on
    vocab = fresh_problems(cfg.benchmark, 256, seed=999, avoid=test_questions(cfg.benchmark))
    base = build_base_model(cfg.model, cfg.benchmark, out / "base", cfg.progress, vocab_rows=vocab)

    rows = []
    for seed in cfg.seeds:
        start = fresh_problems(cfg.benchmark, cfg.start, seed=1000 + seed, avoid=test_questions(cfg.benchmark))
        for name in strategies:
            label = name if name == "random" else name + (f"-near{cfg.near}" if cfg.near is not None else "") + (
                f"-mix{cfg.iid_mix:g}" if cfg.iid_mix else "")
            data = start
            for k, size in enumerate(sizes):
                where = out / f"seed{seed}" / ("start" if k == 0 else f"{label}/round{k}")
                last = k == len(sizes) - 1
                acc, scores = run_round(cfg, base, data, test_path, where, seed, score_train=not last)
                rows.append({"seed": seed, "strategy": label, "round": k, "examples": len(data), "test_acc": acc})
                save_rounds(rows, out)  # every round on record as soon as it is done
                log.info("seed %d %s round %d: %d examples, test accuracy %.3f", seed, label, k, len(data), acc)
                if not last:
                    nxt = out / f"seed{seed}" / label / f"round{k + 1}"
                    data = data + collect(cfg, name, data, scores, nxt, size_next=sizes[k + 1], seed=seed)
        data = start
        for size in cfg.iid_budgets:  # i.i.d. beyond the last round, for the efficiency ratios
            data = data + fresh_problems(cfg.benchmark, size - len(data), seed=2000 + seed + size,
                                         avoid=test_questions(cfg.benchmark) | {r["question"] for r in data})
            acc, _ = run_round(cfg, base, data, test_path, out / f"seed{seed}" / f"random/iid{size}", seed, score_train=False)
            rows.append({"seed": seed, "strategy": "random", "round": -1, "examples": len(data), "test_acc": acc})
    return save_rounds(rows, out)


def validate(cfg: CurationConfig) -> None:
    """Every setting, checked before anything is written: one InputError naming the first bad field."""
    from premem.curate.strategies import get_strategy

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    check_benchmark(cfg.benchmark, "benchmark.", min_train=0)  # training problems come from the generator
    check_base_model(cfg.model, "model.")
    check_train(cfg.train, "train.")
    check_int("start", cfg.start, 1)
    _check_sizes("budgets", cfg.budgets, cfg.start, "start", allow_empty=False)
    _check_sizes("iid_budgets", cfg.iid_budgets, cfg.budgets[-1], "the last budget", allow_empty=True)
    if not isinstance(cfg.strategies, list) or not cfg.strategies:
        raise InputError(f"strategies: expected a non-empty list of strategy names, got {cfg.strategies!r}")
    for name in cfg.strategies:
        get_strategy(name)  # an unknown name fails now, not after an hour of training
    if not isinstance(cfg.seeds, list) or not cfg.seeds:
        raise InputError(f"seeds: expected a non-empty list of seeds, got {cfg.seeds!r}")
    for i, seed in enumerate(cfg.seeds):
        check_int(f"seeds[{i}]", seed, 0)
    if len(set(cfg.seeds)) < len(cfg.seeds):
        raise InputError(f"seeds: {cfg.seeds} lists a seed twice")
    check_number("template_fraction", cfg.template_fraction, lambda f: 0 < f <= 1, "a fraction in (0, 1]")
    if cfg.near is not None:
        check_int("near", cfg.near, 0)
    check_number("iid_mix", cfg.iid_mix, lambda m: 0 <= m <= 1, "a share in [0, 1]")
    check_number("tau", cfg.tau, lambda t: True, "a finite number")
    cfg.sampling.validate("sampling.")
    check_int("actors", cfg.actors, 1)


def _check_sizes(name: str, sizes, after: int, after_name: str, allow_empty: bool) -> None:
    """Training-set sizes: integers growing from `after`, each round adding examples."""
    if not isinstance(sizes, list) or (not sizes and not allow_empty):
        raise InputError(f"{name}: expected a non-empty list of training-set sizes, got {sizes!r}")
    for i, n in enumerate(sizes):
        check_int(f"{name}[{i}]", n, 1)
    if any(b <= a for a, b in zip([after] + sizes, sizes)):
        raise InputError(f"{name}: expected sizes growing from {after_name} ({after}), got {sizes}")


def save_rounds(rows: list[dict], out: Path) -> pd.DataFrame:
    """Write rows into out/rounds.parquet, keeping the rows of other strategies and seeds run there before
    (a strategy run again replaces its own rows); returns the whole table."""
    key = ["seed", "strategy", "round", "examples"]
    table = pd.DataFrame(rows)
    if (out / "rounds.parquet").is_file():
        old = pd.read_parquet(out / "rounds.parquet")
        if set(key) <= set(old.columns):
            mine = old.set_index(key).index.isin(table.set_index(key).index)
            table = pd.concat([old[~mine], table], ignore_index=True)
    table = table.sort_values(["seed", "strategy", "round", "examples"], ignore_index=True)
    with atomic_path(out / "rounds.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return table


# -- one round -------------------------------------------------------------------------------


def run_round(cfg: CurationConfig, base: Path, data: list[dict], test_path: Path, where: Path, seed: int,
              score_train: bool) -> tuple[float, object]:
    """Train on data, score the run; returns (test accuracy at the last checkpoint, CurationInput or None)."""
    data_path = write_jsonl(data, where / "data.jsonl")
    res = train_and_score(DataConfig(path=str(data_path)), where, str(base), cfg.train, DataConfig(path=str(test_path)),
                          cfg.sampling, BackendOptions(threads=1, batch_size=64), "hf", cfg.actors, seed, tau=cfg.tau,
                          score_train=score_train, progress=cfg.progress)
    return res.test_acc, res.inp


def collect(cfg: CurationConfig, strategy: str, data: list[dict], inp, where: Path, size_next: int, seed: int) -> list[dict]:
    """New problems for the next round: i.i.d. for random, else like the strategy's top-ranked examples."""
    n = size_next - len(data)
    taken = test_questions(cfg.benchmark) | {r["question"] for r in data}
    if strategy == "random":
        return fresh_problems(cfg.benchmark, n, seed=3000 + seed + size_next, avoid=taken)
    from premem.curate.strategies import get_strategy

    iid = fresh_problems(cfg.benchmark, round(cfg.iid_mix * n), seed=5000 + seed + size_next, avoid=taken) \
        if cfg.iid_mix else []
    taken |= {p["question"] for p in iid}
    chosen = pick_templates(get_strategy(strategy), inp, cfg.template_fraction, n - len(iid), seed)
    new = similar_problems([data[i]["answer"] for i in chosen], cfg.benchmark, seed=4000 + seed + size_next, avoid=taken,
                           near=cfg.near) + iid
    with atomic_path(where / "collected.jsonl") as tmp:  # what the round asked for, for the record
        pd.DataFrame({"template_id": chosen + [-1] * len(iid), "question": [p["question"] for p in new]}
                     ).to_json(tmp, orient="records", lines=True)
    return new


def fresh_problems(cfg: ArithConfig, n: int, seed: int, avoid: set[str]) -> list[dict]:
    """n i.i.d. problems of the task, none of whose questions is in avoid."""
    gen = dataclasses.replace(cfg, n_train=0, n_test=4 * n + len(avoid) + 16, seed=seed)
    _, pool = generate(gen)
    out = [p for p in pool if p["question"] not in avoid][:n]
    if len(out) < n:
        raise InputError(f"benchmark: could not draw {n} new problems (the task has too few distinct questions)")
    return out


def test_questions(cfg: ArithConfig) -> set[str]:
    return {p["question"] for p in generate(dataclasses.replace(cfg, n_train=0))[1]}


# -- the learning curves ---------------------------------------------------------------------


def curves(rounds: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of test accuracy over seeds per (strategy, examples); the start size counts for all."""
    start = rounds[rounds["round"] == 0]
    rows = [rounds[rounds["round"] != 0]]
    for name in rounds["strategy"].unique():
        rows.append(start.assign(strategy=name))
    full = pd.concat(rows, ignore_index=True).drop_duplicates(["seed", "strategy", "examples"])
    return (full.groupby(["strategy", "examples"], as_index=False)["test_acc"]
            .agg(mean="mean", std="std", n_seeds="size"))


def efficiency(curve: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and size: i.i.d. examples needed to reach its mean accuracy / examples it used."""
    iid = curve[curve["strategy"] == "random"].sort_values("examples")
    x, y = np.log(iid["examples"].to_numpy(float)), iid["mean"].to_numpy(float)
    y = np.maximum.accumulate(y)  # a learning curve read as "best accuracy reached by n examples"
    out = []
    for row in curve.itertuples():
        if row.examples <= iid["examples"].min():
            continue
        if row.mean > y[-1]:
            needed, bound = float(np.exp(x[-1])), ">"
        else:  # the fewest i.i.d. examples whose accuracy reaches row.mean: first crossing, log-linear between points
            i = int(np.argmax(y >= row.mean))
            t = 0.0 if i == 0 or y[i] == y[i - 1] else (row.mean - y[i - 1]) / (y[i] - y[i - 1])
            needed, bound = float(np.exp(x[i] if i == 0 else x[i - 1] + t * (x[i] - x[i - 1]))), ""
        out.append({"strategy": row.strategy, "examples": row.examples, "test_acc": row.mean,
                    "iid_examples_needed": needed, "ratio": needed / row.examples, "bound": bound})
    return pd.DataFrame(out)


def plot_curves(curve: pd.DataFrame, path: str | Path) -> Path:
    """Test accuracy against training-set size per strategy, error bars one std over seeds (the report's figure)."""
    from premem.report import plots

    return plots.save(plots.learning_curves(curve), path)
