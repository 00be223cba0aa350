"""The curation loop (Kang et al., Algorithm 1) on any data with checkable answers.

A round trains a run on the data so far (from the same base model each time), scores every
checkpoint, ranks the training examples with a strategy (premem_low: lowest pre-memorization
accuracy first), asks a generator for new examples like the top-ranked ones, and adds them.

    premem curate loop --config configs/curate/loop_tiny.yaml
    from premem.curate.loop import LoopConfig, loop; table = loop(cfg)

    out/round<k>/data.jsonl          the data of round k (round 0: the start data, rewritten)
    out/round<k>/run/, store/        its training run and score store (premem score's layout)
    out/store/curation_rounds.parquet    one row per round: sizes, strategy, generator, data hash,
                                         train / pre-memorization / test accuracy, where its run is
    out/store/curation_examples.parquet  every example by the round that added it and its template

A killed loop resumes: a round's data file, once written, is read back instead of being made
again (a generator need not be deterministic), and training and scoring reuse finished work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from premem.curate.generators import GeneratorConfig, make_generator
from premem.data import DataConfig, load_example_set
from premem.errors import InputError
from premem.files import atomic_path
from premem.sampling.backend import BackendOptions, SamplingParams
from premem.store import ScoreStore
from premem.train.sft import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Rounds of train -> score -> rank -> collect new examples like the top-ranked ones -> add."""

    out: str = "premem-loop"
    """Directory for every round's data, run and store, and the loop's record (out/store)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The start data (any format premem reads, with checkable final answers)."""
    test: DataConfig | None = None
    """Held-out data: each round's test accuracy at the end of its run (optional)."""
    model: str = ""
    """Base model directory every round's run starts from."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_every="doubling"))
    """How each round is trained (model, data and out are filled in; checkpoints early enough to see the
    pre-memorization phase: save_every=doubling)."""
    sizes: list[int] = field(default_factory=list)
    """Training-set size after each round (each round adds sizes[k] - sizes[k-1] examples)."""
    strategy: str = "premem_low"
    """Which examples new ones are made like: premem_low, loss, difficulty, cartography, s2l, random."""
    params: dict[str, Any] = field(default_factory=dict)
    """The strategy's parameters, e.g. {threshold: 0.5}."""
    tau: float = -2.3
    """Memorization threshold on log(log(ppl)) for premem_low (premem predict --tau auto estimates it)."""
    template_fraction: float = 0.25
    """New examples are made like the top-ranked fraction of the data so far, cycling through them."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """Where new examples come from: arith, python (your function) or llm (a model and a rewrite prompt)."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(samples=4))
    """How answers are sampled when scoring."""
    options: BackendOptions = field(default_factory=lambda: BackendOptions(threads=1, batch_size=64))
    """How the scoring backend loads and runs checkpoints."""
    backend: str = "hf"
    """Scoring backend: hf or vllm."""
    actors: int = 1
    """Ray sampler actors for scoring."""
    seed: int = 0
    """Seed of training, tie-breaking and generation."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class RoundResult:
    data: Any  # the round's ExampleSet
    run: Path
    store: Path
    test_acc: float  # NaN without test data
    inp: Any = None  # CurationInput for the strategies (None when the train split was not scored)


def loop(cfg: LoopConfig) -> pd.DataFrame:
    """Run every round (resuming finished ones); returns the curation_rounds table."""
    from premem.curate.strategies import get_strategy

    validate(cfg)
    strategy = get_strategy(cfg.strategy, cfg.params)  # bad names and parameters fail before any work
    for key in ("data", "test"):  # a bare path will do
        if isinstance(getattr(cfg, key), (str, Path)):
            setattr(cfg, key, DataConfig(path=str(getattr(cfg, key))))
    start = load_example_set(cfg.data)
    sizes = [len(start.examples)] + list(cfg.sizes)
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise InputError(f"sizes: expected sizes growing from the start data's {sizes[0]} examples, got {cfg.sizes}")
    generate = make_generator(cfg.generator, start.grader)
    held_out = set()
    if cfg.test is not None:
        held_out = {ex.question for ex in load_example_set(cfg.test).examples}

    out = Path(cfg.out)
    record = ScoreStore(out / "store", create=True)
    rows = [_row(ex) for ex in start.examples]
    _write_data(out / "round0", rows, start.grader, templates=[-1] * len(rows), record=record, k=0)
    for k, size in enumerate(sizes):
        where = out / f"round{k}"
        rows = _read_rows(where, start.grader, expect_prefix=rows)
        began = time.monotonic()
        res = train_and_score(DataConfig(path=str(where / "data.jsonl"), grader=start.grader), where, cfg.model,
                              cfg.train, cfg.test, cfg.sampling, cfg.options, cfg.backend, cfg.actors, cfg.seed,
                              tau=cfg.tau, score_train=True, progress=cfg.progress)
        pts = res.inp.curves().points(cfg.tau)
        last = pts[pts["step"] == pts["step"].max()].iloc[0]
        summary = {"round": k, "examples": len(rows), "added": len(rows) - (sizes[k - 1] if k else 0),
                   "strategy": cfg.strategy if k else "start", "generator": cfg.generator.kind if k else "start",
                   "data_sha256": res.data.fingerprint, "run_dir": str(res.run), "store_dir": str(res.store),
                   "train_acc": float(last["train_acc"]), "premem": float(last["premem"]),
                   "frac_memorized": float(last["frac_memorized"]), "test_acc": res.test_acc,
                   "seconds": round(time.monotonic() - began, 1)}
        record.append("curation_rounds", pd.DataFrame([summary]), replace=True)
        log.info("round %d: %d examples, train acc %.3f, premem %.3f, test acc %.3f", k, len(rows),
                 summary["train_acc"], summary["premem"], res.test_acc)
        if k + 1 < len(sizes) and not (out / f"round{k + 1}" / "data.jsonl").is_file():
            n = sizes[k + 1] - len(rows)
            chosen = pick_templates(strategy, res.inp, cfg.template_fraction, n, cfg.seed)
            new = generate([{"example_id": i, **rows[i]} for i in chosen], seed=cfg.seed * 1000 + k + 1,
                           avoid=held_out | {r["question"] for r in rows})
            if not new:
                raise InputError(f"generator {cfg.generator.kind}: made no new examples in round {k + 1}")
            if len(new) < n:
                log.warning("round %d: the generator made %d of the %d examples asked for", k + 1, len(new), n)
            made = [chosen[r.get("template", j)] for j, r in enumerate(new)]  # llm rows say which template
            _write_data(out / f"round{k + 1}", rows + [_row_dict(r) for r in new], start.grader,
                        templates=made, record=record, k=k + 1, first_id=len(rows))
    table = record.read("curation_rounds")
    return table[table["round"] < len(sizes)].reset_index(drop=True)


def validate(cfg: LoopConfig) -> None:
    """The loop's own numbers and choices, checked before any data is read or anything written
    (the start data's size, which sizes must grow from, is checked once it is read)."""
    from premem.sampling.backend import check_execution, check_int, check_number
    from premem.train.sft import check_config, check_scheduler

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    if not isinstance(cfg.sizes, list) or not cfg.sizes:
        raise InputError(f"sizes: expected a non-empty list of training-set sizes, one per round, got {cfg.sizes!r}")
    for i, n in enumerate(cfg.sizes):
        check_int(f"sizes[{i}]", n, 1)
    check_number("template_fraction", cfg.template_fraction, lambda f: 0 < f <= 1, "a fraction in (0, 1]")
    check_number("tau", cfg.tau, lambda t: True, "a finite number")
    check_int("seed", cfg.seed, 0)
    if not cfg.model or not Path(cfg.model).is_dir():
        raise InputError(f"model {cfg.model!r}: the loop needs a base model directory")
    try:  # every round trains with these: fail now, not after round 0 is written
        check_config(dataclasses.replace(cfg.train, model=cfg.model, out=str(out / "round0" / "run")))
        check_scheduler(cfg.train.lr_scheduler)
    except InputError as e:
        raise InputError(f"train.{e}") from None
    cfg.sampling.validate("sampling.")
    check_execution(cfg.backend, cfg.options, cfg.actors, 0)


# -- one round, shared with the data-efficiency experiment -----------------------------------


def train_and_score(data: DataConfig, where: Path, model: str, train_cfg: TrainConfig, test: DataConfig | None,
                    sampling: SamplingParams, options: BackendOptions, backend: str, actors: int, seed: int,
                    tau: float | None, score_train: bool, progress: bool) -> RoundResult:
    """Train a run on data into where/run, score it into where/store: every checkpoint on the training
    examples (when score_train), the last one on the test queries (when test is given)."""
    from premem.curate.strategies import CurationInput
    from premem.sampling.job import ScoreConfig, score
    from premem.train.sft import train

    run = train(dataclasses.replace(train_cfg, model=str(model), train=data, out=str(where / "run"), run_name="run",
                                    seed=seed, progress=progress))
    common = dict(run=str(run), store=str(where / "store"), train=data, sampling=sampling, options=options,
                  backend=backend, actors=actors, shard_size=64, progress=progress)
    if score_train:  # every checkpoint's training metrics: what the strategies rank by
        score(ScoreConfig(**common, test=None))
    acc = float("nan")
    if test is not None:  # test accuracy at the end of the run: a learning curve's point
        score(ScoreConfig(**common, test=test, train_examples="none", checkpoints="last"))
        t = ScoreStore(where / "store").read("test_scores")
        t = t[t["step"] == t["step"].max()]
        acc = float(t["n_correct"].sum() / t["n_samples"].sum())
    data_set = load_example_set(data)
    inp = None
    if score_train:
        store = ScoreStore(where / "store")
        inp = CurationInput(data_set, store.read("train_scores"), store.runs(), ["run"], tau=tau)
    return RoundResult(data_set, run, where / "store", acc, inp)


def pick_templates(strategy, inp, fraction: float, n: int, seed: int) -> list[int]:
    """The ids of the top-ranked fraction of the examples, in rank order, cycled to n."""
    k = max(1, round(fraction * len(inp.ids)))
    s = strategy.select(inp, k, seed).scores
    chosen = s[s["selected"]].sort_values("rank")["example_id"].astype(int).tolist()
    return (chosen * (n // len(chosen) + 1))[:n]


# -- the round's data file and the record ----------------------------------------------------


def _row(ex) -> dict:
    return {"question": ex.question, "solution": ex.solution, "answer": ex.answer}


def _row_dict(r: dict) -> dict:
    return {"question": r["question"], "solution": r["solution"], "answer": r.get("answer", "")}


def _file_row(r: dict, grader: str) -> dict:
    # gsm8k-graded data keeps GSM8K's shape (the answer is inside the solution); math keeps MATH's
    if grader == "gsm8k":
        return {"question": r["question"], "answer": r["solution"]}
    return {"problem": r["question"], "solution": r["solution"], "answer": r["answer"]}


def _write_data(where: Path, rows: list[dict], grader: str, templates: list[int], record: ScoreStore, k: int,
                first_id: int = 0) -> None:
    """Write a round's data (once: an existing file is the round's data) and record its new examples."""
    path = where / "data.jsonl"
    if not path.is_file():
        where.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                for r in rows:
                    f.write(json.dumps(_file_row(r, grader), ensure_ascii=False) + "\n")
    new = rows[first_id:]
    record.append("curation_examples", pd.DataFrame({
        "round": k, "example_id": np.arange(first_id, first_id + len(new)), "template_id": templates[: len(new)],
        "question": [r["question"] for r in new]}))


def _read_rows(where: Path, grader: str, expect_prefix: list[dict]) -> list[dict]:
    """The round's data as rows; it must start with the previous round's (a round only adds)."""
    ds = load_example_set(DataConfig(path=str(where / "data.jsonl"), grader=grader))
    rows = [_row(ex) for ex in ds.examples]
    prefix = [(r["question"], r["solution"]) for r in expect_prefix]
    if [(r["question"], r["solution"]) for r in rows[: len(prefix)]] != prefix:
        raise InputError(f"{where / 'data.jsonl'}: does not start with the previous round's data; "
                         "it was changed since the loop wrote it (remove the rounds from here on to redo them)")
    return rows
