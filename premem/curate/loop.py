"""The curation loop (Kang et al., Algorithm 1) on any data with checkable answers.

A round trains a run on the data so far (from the same base model each time), scores every
checkpoint, ranks the training examples with a strategy (premem_low: lowest pre-memorization
accuracy first), asks a generator for new examples like the top-ranked ones, and adds them
(generator.iid_mix: a share of them drawn i.i.d. from the task instead; 1 is i.i.d. data scaling).

    premem curate loop --config configs/curate/loop_tiny.yaml
    from premem.curate.loop import LoopConfig, loop; table = loop(cfg)

    out/round<k>/data.jsonl          the data of round k (round 0: the start data, rewritten)
    out/round<k>/run/, store/        its training run and score store (premem score's layout)
    out/store/curation_rounds.parquet    one row per round: seed, loop name, sizes, strategy, generator,
                                         data hash, train / pre-memorization / test accuracy, where its run is
    out/store/curation_examples.parquet  every example by the round that added it and its template

Round 0 may live elsewhere (`round0`), so that loops from the same start share its run: the
data-efficiency experiment (premem.recipes.curation) runs one loop per (seed, strategy) that way,
and its learning curves are read from these records (premem.metrics.curves).

A killed loop resumes: a round's data file, once written, is read back instead of being made
again (a generator need not be deterministic), and training and scoring reuse finished work.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from premem.curate.generators import GeneratorConfig, make_generator, make_iid
from premem.data import DataConfig, load_example_set
from premem.errors import InputError
from premem.execution import BackendOptions, ExecConfig, check_int, check_number
from premem.files import atomic_path
from premem.metrics.premem import PAPER_TAU
from premem.sampling.backend import SamplingParams
from premem.store import ScoreStore
from premem.train.config import TrainConfig

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
    tau: float = PAPER_TAU
    """Memorization threshold on log(log(ppl)) for premem_low (premem predict --tau auto estimates it)."""
    template_fraction: float = 0.25
    """New examples are made like the top-ranked fraction of the data so far, cycling through them."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """Where new examples come from: arith, python (your function) or llm (a model and a rewrite prompt);
    iid_mix: the share drawn i.i.d. from the task instead."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(samples=4))
    """How answers are sampled when scoring."""
    exec: ExecConfig = field(default_factory=lambda: ExecConfig(options=BackendOptions(threads=1, batch_size=64)))
    """How scoring runs: backend (hf or vllm), its options, Ray actors, cluster, progress bars."""
    seed: int = 0
    """Seed of training, tie-breaking and generation."""
    score_train: bool = True
    """Score every round's training examples (the record's train and pre-memorization accuracy); false: only
    the rounds whose ranking makes the next round's data (the others' record has NaN there)."""
    round0: str = ""
    """Directory of round 0 (the start data's data.jsonl, run/ and store/); default out/round0. Loops from the
    same start data, base model and training settings may share one: the first runs it, the others reuse it."""
    name: str = ""
    """The loop's name in its record (curation_rounds' loop column); default: the strategy."""


@dataclass
class RoundResult:
    data: Any  # the round's ExampleSet
    run: Path
    store: Path
    test_acc: float  # NaN without test data
    inp: Any = None  # CurationInput for the strategies (None when the train split was not scored)


def loop(cfg: LoopConfig) -> pd.DataFrame:
    """Run every round (resuming finished ones); returns the curation_rounds table. cfg is left as it is."""
    from premem.curate.strategies import get_strategy

    cfg = with_data_configs(cfg)
    validate(cfg)
    strategy = get_strategy(cfg.strategy, cfg.params)  # bad names and parameters fail before any work
    start = load_example_set(cfg.data)
    sizes = [len(start.examples)] + list(cfg.sizes)
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise InputError(f"sizes: expected sizes growing from the start data's {sizes[0]} examples, got {cfg.sizes}")
    generate, draw_iid = make_generator(cfg.generator, start.grader), make_iid(cfg.generator)
    held_out = set()
    if cfg.test is not None:
        held_out = {ex.question for ex in load_example_set(cfg.test).examples}

    out = Path(cfg.out)
    record = ScoreStore(out / "store", create=True)
    rows = [_row(ex) for ex in start.examples]
    _write_data(round_dir(cfg, 0), rows, start.grader, templates=[-1] * len(rows), record=record, k=0)
    for k, size in enumerate(sizes):
        where = round_dir(cfg, k)
        rows = _read_rows(where, start.grader, expect_prefix=rows, size=size)
        last = k + 1 == len(sizes)
        n_new = 0 if last else sizes[k + 1] - len(rows)
        ranks = n_new > round(cfg.generator.iid_mix * n_new)  # the next round has examples made like templates
        began = time.monotonic()
        res = train_and_score(DataConfig(path=str(where / "data.jsonl"), grader=start.grader), where, cfg.model,
                              cfg.train, cfg.test, cfg.sampling, cfg.exec, cfg.seed, tau=cfg.tau,
                              score_train=cfg.score_train or ranks)
        summary = _summary(cfg, k, rows, sizes, res)
        summary["seconds"] = round(time.monotonic() - began, 1)
        record.append("curation_rounds", pd.DataFrame([summary]), replace=True)
        log.info("%s seed %d round %d: %d examples, train acc %.3f, premem %.3f, test acc %.3f", summary["loop"],
                 cfg.seed, k, len(rows), summary["train_acc"], summary["premem"], res.test_acc)
        if not last and not (round_dir(cfg, k + 1) / "data.jsonl").is_file():
            new, made = grow(cfg, strategy, generate, draw_iid, res.inp, rows, k + 1, sizes[k + 1],
                             avoid=held_out | {r["question"] for r in rows})
            _write_data(round_dir(cfg, k + 1), rows + new, start.grader, templates=made, record=record, k=k + 1,
                        first_id=len(rows))
    table = record.read("curation_rounds")
    return table[table["round"] < len(sizes)].reset_index(drop=True)


def with_data_configs(cfg: LoopConfig) -> LoopConfig:
    """A copy of cfg where a bare path for data or test (from Python) is a DataConfig; cfg itself is untouched."""
    def as_data(d):
        return DataConfig(path=str(d)) if isinstance(d, (str, Path)) else d

    return dataclasses.replace(cfg, data=as_data(cfg.data), test=as_data(cfg.test))


def round_dir(cfg: LoopConfig, k: int) -> Path:
    return Path(cfg.round0) if k == 0 and cfg.round0 else Path(cfg.out) / f"round{k}"


def validate(cfg: LoopConfig) -> None:
    """The loop's own numbers and choices, checked before any data is read or anything written
    (the start data's size, which sizes must grow from, is checked once it is read)."""
    from premem.train.config import check_config, check_scheduler

    out = Path(cfg.out)
    for name, path in (("out", out), ("round0", Path(cfg.round0) if cfg.round0 else None)):
        if path is not None and path.exists() and not path.is_dir():
            raise InputError(f"{name}: {path} exists and is not a directory")
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
    cfg.generator.validate("generator.")
    cfg.sampling.validate("sampling.")
    cfg.exec.validate("exec.")


# -- one round, and the next round's new examples ---------------------------------------------


def train_and_score(data: DataConfig, where: Path, model: str, train_cfg: TrainConfig, test: DataConfig | None,
                    sampling: SamplingParams, exec: ExecConfig, seed: int, tau: float | None,
                    score_train: bool) -> RoundResult:
    """Train a run on data into where/run, score it into where/store: every checkpoint on the training
    examples (when score_train), the last one on the test queries (when test is given)."""
    from premem.curate.strategies import CurationInput
    from premem.sampling.job import ScoreConfig, score
    from premem.train.api import train

    run = train(dataclasses.replace(train_cfg, model=str(model), train=data, out=str(where / "run"), run_name="run",
                                    seed=seed, progress=exec.progress))
    # each score call gets its own copy of how it runs: nothing it fills in (a cache directory) reaches the next
    # every pair sampled (sample=all): strategies other than premem_low rank by train accuracy, which skipped
    # pairs would leave undefined
    common = dict(run=str(run), store=str(where / "store"), train=data, sampling=sampling, shard_size=64,
                  sample="all")
    if score_train:  # every checkpoint's training metrics: what the strategies rank by
        score(ScoreConfig(**common, test=None, exec=copy.deepcopy(exec)))
    acc = float("nan")
    if test is not None:  # test accuracy at the end of the run: a learning curve's point
        score(ScoreConfig(**common, test=test, train_examples="none", checkpoints="last", exec=copy.deepcopy(exec)))
        t = ScoreStore(where / "store").read("test_scores")
        t = t[t["step"] == t["step"].max()]
        acc = float(t["n_correct"].sum() / t["n_samples"].sum())
    data_set = load_example_set(data)
    inp = None
    if score_train:
        store = ScoreStore(where / "store")
        inp = CurationInput(data_set, store.read("train_scores"), store.runs(), ["run"], tau=tau)
    return RoundResult(data_set, run, where / "store", acc, inp)


def grow(cfg: LoopConfig, strategy, generate, draw_iid, inp, rows: list[dict], k: int, size: int,
         avoid: set[str]) -> tuple[list[dict], list[int]]:
    """Round k's new rows (size - len(rows) of them) and, per row, the example it was made like (-1: i.i.d.).

    The i.i.d. share is drawn first, so the templated examples avoid it too; they come first in the data."""
    n = size - len(rows)
    seed = cfg.generator.seed + size if cfg.generator.seed is not None else cfg.seed * 1000 + k
    iid = draw_iid(round(cfg.generator.iid_mix * n), seed, avoid) if draw_iid is not None else []
    chosen = pick_templates(strategy, inp, cfg.template_fraction, n - len(iid), cfg.seed) if n > len(iid) else []
    new = generate([{"example_id": i, **rows[i]} for i in chosen], seed=seed,
                   avoid=avoid | {r["question"] for r in iid}) if chosen else []
    if not new and not iid:
        raise InputError(f"generator {cfg.generator.kind}: made no new examples in round {k}")
    if len(new) + len(iid) < n:
        log.warning("round %d: the generator made %d of the %d examples asked for", k, len(new) + len(iid), n)
    made = [chosen[r.get("template", j)] for j, r in enumerate(new)]  # llm rows say which template
    return [_row_dict(r) for r in new + iid], made + [-1] * len(iid)


def pick_templates(strategy, inp, fraction: float, n: int, seed: int) -> list[int]:
    """The ids of the top-ranked fraction of the examples, in rank order, cycled to n."""
    k = max(1, round(fraction * len(inp.ids)))
    s = strategy.select(inp, k, seed).scores
    chosen = s[s["selected"]].sort_values("rank")["example_id"].astype(int).tolist()
    return (chosen * (n // len(chosen) + 1))[:n]


def _summary(cfg: LoopConfig, k: int, rows: list[dict], sizes: list[int], res: RoundResult) -> dict:
    """The round's row of curation_rounds (train and pre-memorization accuracy NaN when not scored)."""
    metrics = dict.fromkeys(("train_acc", "premem", "frac_memorized"), float("nan"))
    if res.inp is not None:
        pts = res.inp.curves().points(cfg.tau)
        last = pts[pts["step"] == pts["step"].max()].iloc[0]
        metrics = {key: float(last[key]) for key in metrics}
    mix = cfg.generator.iid_mix
    generator = "iid" if mix == 1 else cfg.generator.kind + (f"+iid{mix:g}" if mix else "")
    return {"seed": cfg.seed, "loop": cfg.name or cfg.strategy, "round": k, "examples": len(rows),
            "added": len(rows) - (sizes[k - 1] if k else 0), "strategy": cfg.strategy if k else "start",
            "generator": generator if k else "start", "data_sha256": res.data.fingerprint, "run_dir": str(res.run),
            "store_dir": str(res.store), **metrics, "test_acc": res.test_acc}


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


def _read_rows(where: Path, grader: str, expect_prefix: list[dict], size: int) -> list[dict]:
    """The round's data as rows; it must start with the previous round's (a round only adds) and hold the
    round's size (a file made for other sizes is not silently trained on)."""
    ds = load_example_set(DataConfig(path=str(where / "data.jsonl"), grader=grader))
    rows = [_row(ex) for ex in ds.examples]
    prefix = [(r["question"], r["solution"]) for r in expect_prefix]
    if [(r["question"], r["solution"]) for r in rows[: len(prefix)]] != prefix:
        raise InputError(f"{where / 'data.jsonl'}: does not start with the previous round's data; "
                         "it was changed since the loop wrote it (remove the rounds from here on to redo them)")
    if len(rows) != size:
        raise InputError(f"{where / 'data.jsonl'}: holds {len(rows)} examples where this round has {size}: it was "
                         "made for other sizes (remove the rounds from here on to redo them)")
    return rows


def summary(table: pd.DataFrame, out: str | Path) -> str:
    """What `premem curate loop` prints: one line per round, and where the record and the last data are."""
    cols = ["round", "examples", "added", "strategy", "generator", "train_acc", "premem", "test_acc", "seconds"]
    return (f"\n{table[cols].to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n\nrecord: "
            f"{Path(out) / 'store'} (curation_rounds, curation_examples); "
            f"last round's data: {table['run_dir'].iloc[-1].rsplit('/run', 1)[0]}/data.jsonl")
