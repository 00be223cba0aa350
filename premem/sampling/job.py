"""`premem score`: sample and score every checkpoint of a finetuning run into a score store.

For each checkpoint: the gold target's perplexity for every training example (teacher
forcing), and k graded samples for every training and test query. The work is cut into
tasks of one checkpoint x one split x one shard of examples and handed to Ray actors.

Resuming is by construction: every finished task is written as its own part of the store
(atomic rename), and a restarted job skips the tasks whose parts exist. A query's sampling
seed is derived from (seed, step, split, example id) alone, so a task re-run after a crash
gives exactly the rows it would have given; the final tables equal an uninterrupted run's.

Memorization-aware sampling (`sample`, premem.sampling.skipping): a training pair whose
accuracy the pre-memorization formula never reads is not sampled, only its perplexity measured;
a shard's train tasks then run in step order, each released when the one before it is written.

The robustness probe (`perturbations`, premem.sampling.perturb): each training prompt followed by each
perturbation, k samples per query per checkpoint, graded into robustness_scores as tasks of their own.

Everything that can be wrong with the input is checked before anything is written or the
first actor starts: every setting (ScoreConfig.validate), no checkpoints, a checkpoint whose
tokenizer differs, a prompt longer than the model's context, data whose ids changed since the
store was started, more actors than the Ray cluster can place.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from premem.data import DataConfig, get_template, load_example_set
from premem.errors import InputError
from premem.execution import ExecConfig
from premem.files import check_output
from premem.models import load_config
from premem.runs import RUN_COLUMNS, RUN_INFO, Checkpoint, find_checkpoints, read_run_info
from premem.sampling.backend import SamplingParams, check_int, check_number
from premem.sampling.encoding import Encoded, check_tokenizers, context_length, encode
from premem.sampling import perturb
from premem.sampling.perturb import check_perturbations
from premem.sampling.skipping import LOWEST_AUTO_TAU, SAMPLE_MODES, Chains, plan_skipping, records_sampling
from premem.store import ScoreStore

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class ScoreConfig:
    """What `premem score` scores, with which backend, and where it writes."""

    run: str = ""
    """Run directory: checkpoint-<step>/ folders, a final model, LoRA adapters or .gguf files."""
    store: str = ""
    """Score store directory to write (created if missing; a re-run resumes it)."""
    train: DataConfig = field(default_factory=DataConfig)
    """Training data: every example gets its gold perplexity and k samples per checkpoint."""
    test: DataConfig | None = None
    """Test data: k samples per query per checkpoint (optional)."""
    train_examples: str = "trained"
    """Which training examples to score: trained (those the run's premem_run.json lists, else all), all, or
    none (test queries only: a run's test accuracy without its training metrics)."""
    checkpoints: str = "all"
    """Which checkpoints to score: all, or last (the end of the run only)."""
    run_name: str | None = None
    """Name of the run in the store (default: the run directory's name)."""
    base_model: str | None = None
    """Base model for LoRA adapters (default: what adapter_config.json names)."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """How answers are sampled."""
    template: str = "paper"
    """Prompt template: paper (question + "\\nAnswer:") or chat (the tokenizer's chat template)."""
    count: str = "strict"
    """Which extraction counts a sample correct in n_correct: strict (#### / \\boxed) or flexible."""
    shard_size: int = 64
    """Examples per task; a killed job loses at most one task per actor."""
    sample: str = "exact"
    """Which training pairs to sample: exact (skip a pair whose pre-memorization accuracy is 0 whatever it
    samples: PreMem at every checkpoint as if all were sampled), final (also skip memorized pairs before the
    last checkpoint: the final per-example PreMem exact), or all (every pair: train accuracy needs it)."""
    sample_tau: float | None = None
    """The lowest tau you will analyse with (memorized: log(log(ppl)) < tau): skips are exact at it and any
    higher tau, and predict / curate refuse a lower one (default: the low end of the tau=auto grid, -4)."""
    perturbations: list[str] = field(default_factory=list)
    """The robustness probe (Kang et al.): texts appended to every training prompt, e.g. [" First", " We know that"]
    (the paper's, after "Answer:"); each checkpoint then also samples k answers to each training query per
    perturbation, the model continuing after it, graded into robustness_scores (default: none)."""
    exec: ExecConfig = field(default_factory=ExecConfig)
    """How the work runs: backend, its options, Ray actors and cluster, progress bar."""

    def validate(self) -> None:
        """Refuse every setting that cannot work, before anything is read, written or started."""
        if not self.run:
            raise InputError("run: say which run to score (--run RUN_DIR)")
        check_store_path(self.store)
        for name, choices in (("count", ("strict", "flexible")), ("train_examples", ("trained", "all", "none")),
                              ("checkpoints", ("all", "last"))):
            value = getattr(self, name)
            if value not in choices:
                raise InputError(f"{name}: expected {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
        if self.train_examples == "none" and not self.has_test:
            raise InputError("train_examples=none scores test queries only: say which test data (--test)")
        check_int("shard_size", self.shard_size, 1)
        if self.sample not in SAMPLE_MODES:
            raise InputError(f"sample: expected exact, final or all, got {self.sample!r}")
        if self.sample_tau is not None:
            check_number("sample_tau", self.sample_tau, lambda t: True, "a number")
        check_perturbations(self.perturbations, self.train_examples)
        self.sampling.validate()
        self.exec.validate()

    @property
    def has_test(self) -> bool:
        return self.test is not None and bool(self.test.path)

    @property
    def skip_tau(self) -> float | None:
        """The tau skips are decided at; None when every pair is sampled."""
        if self.sample == "all":
            return None
        return LOWEST_AUTO_TAU if self.sample_tau is None else float(self.sample_tau)


def check_store_path(store: str) -> None:
    """A score store is a directory: refuse a path that cannot become one before anything is written there
    (the output check every verb runs, for callers from Python too)."""
    if not store:
        raise InputError("store: say where to write the scores (--store DIR)")
    check_output(store, kind="dir", what="store")


@dataclass
class ScoreSummary:
    run: str
    checkpoints: list[int]
    tasks_total: int
    tasks_run: int
    tasks_skipped: int
    retries: int
    generated_tokens: int
    seconds: float
    pairs_skipped: int = 0  # training pairs not sampled (sample=exact|final), this job
    pairs_sampled: int = 0  # pairs (train and test) sampled, this job
    grading_seconds: float = 0.0  # the actors' time grading this job's samples (beside sampling, not on the driver)


def query_seed(seed: int, step: int, split: str, example_id: int) -> int:
    """A query's sampling seed: a function of these four alone, never of batching or order."""
    return int(np.random.SeedSequence([seed, step, SPLITS.index(split), example_id]).generate_state(1)[0] >> 1)


def score(cfg: ScoreConfig) -> ScoreSummary:
    """Score every checkpoint of cfg.run into cfg.store. Resumes a store it has written before.

    Every setting, the input and the Ray cluster's room for the actors are checked before anything
    is written; an error in a task is a TaskFailed naming the checkpoint.
    """
    cfg.validate()
    options = cfg.exec.options
    checkpoints = find_checkpoints(cfg.run, cfg.run_name, cfg.base_model, allow_pickle=options.allow_pickle)
    if cfg.checkpoints == "last":
        checkpoints = checkpoints[-1:]
    run = checkpoints[0].run
    meta = run_metadata(cfg.run)
    data = {} if cfg.train_examples == "none" else {"train": load_example_set(cfg.train)}
    if cfg.has_test:
        data["test"] = load_example_set(cfg.test)

    tokenizer = check_tokenizers(checkpoints, options)
    template = get_template(cfg.template, tokenizer)
    context = context_length(load_config(checkpoints[0], options))
    encoded = {split: encode(ds, template, tokenizer, context, cfg.sampling, split) for split, ds in data.items()}
    if "train" in data and cfg.train_examples == "trained" and meta.get("train_example_ids") is not None:
        encoded["train"] = only_trained(encoded["train"], meta["train_example_ids"], cfg.run, data["train"].path)
    stop = cfg.sampling.stop if cfg.sampling.stop is not None else template.stop
    params = SamplingParams(**{**cfg.sampling.__dict__, "stop": list(stop)})
    perturbed = perturb.encode_perturbed(encoded["train"], template, tokenizer, context, cfg.sampling,
                                         cfg.perturbations, data["train"].path) if cfg.perturbations else {}

    existing = ScoreStore(cfg.store) if Path(cfg.store).is_dir() else None
    if existing is not None:
        check_data_unchanged(existing, data)
    scored = {split: stored_keys(existing, score_table(split)) if existing else set() for split in data}
    scored[perturb.SPLIT] = perturb.stored_keys(existing) if perturbed else set()
    # vLLM's merged LoRA / GGUF copies: only under the directories the user named. The tasks carry it, so that
    # actors kept from an earlier job (another store) serve this one too
    cache_dir = options.cache_dir or str(Path(cfg.store).resolve() / "cache")
    # graded in the actors (premem.sampling.results): each task carries its golds and which grader reads them (the
    # name load_example_set resolved and checked)
    answers = {split: {ex.example_id: ex.answer for ex in ds.examples} for split, ds in data.items()}
    tasks = [replace(t, cache_dir=cache_dir, grader=data[split].grader,
                     golds=[answers[split][e] for e in t.example_ids], count=cfg.count)
             for c in checkpoints for split in data for t in make_tasks(c, split, encoded[split], params, cfg.shard_size)]
    if perturbed:  # the robustness probe: every training query under every perturbation
        tasks += perturb.perturbed_tasks(checkpoints, perturbed, params, cfg.shard_size, cache_dir=cache_dir,
                                         grader=data["train"].grader, count=cfg.count)
    todo = [t for t in tasks if not task_done(t, scored)]
    chains = plan_skipping(cfg, existing, run, checkpoints, todo)
    log.info("%s: %d checkpoints, %d tasks, %d already done", run, len(checkpoints), len(tasks), len(tasks) - len(todo))

    actors = nullcontext([])
    if todo:
        from premem.execution import pool
        from premem.sampling.actors import SamplerActor

        args = (cfg.exec.backend, replace(options, cache_dir=None), params)
        actors = pool(cfg.exec, SamplerActor, args, n=min(cfg.exec.actors, len(todo)))
    with actors as started:  # the process's live actors, or new ones, or refused by the cluster: before any write
        return write_scores(cfg, run, meta, checkpoints, data, tasks, todo, started, chains)


def write_scores(cfg: ScoreConfig, run: str, meta: dict, checkpoints, data, tasks, todo, actors,
                 chains: Chains | None = None) -> ScoreSummary:
    """The writing half of score(): record the run and its data, run the tasks, compact the tables."""
    store = ScoreStore(cfg.store, create=True)
    for split, ds in data.items():
        store.check_dataset(split, ds)
    # a row recorded before premem recorded sampling settings gets them: this job's skips need its sample_tau
    store.append("runs", run_row(run, cfg, meta), replace=not records_sampling(store, run))

    start = time.perf_counter()
    tokens = 0
    counts = {"skipped": 0, "sampled": 0, "grading_s": 0.0}
    bar = tqdm(total=len(todo), desc=f"scoring {run}", unit="shard", disable=not cfg.exec.progress)

    def on_result(result) -> list:
        nonlocal tokens
        split, samples, scores = result.task.split, result.samples, result.scores  # graded by the actor
        store.write_part(samples_table(split), result.task.part, samples)  # first: the scores part marks it done
        store.write_part(score_table(split), result.task.part, scores)
        tokens += int(samples["n_tokens"].sum())
        unsampled = int(scores["n_samples"].eq(0).sum())
        counts["skipped"] += unsampled
        counts["sampled"] += len(scores) - unsampled
        counts["grading_s"] += result.grading_s
        bar.update(1)
        bar.set_postfix(step=result.task.checkpoint.step, tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
        # the next checkpoint of this shard, now that its M_{t-1} is known
        return chains.done(result.task, scores) if chains is not None and split == "train" else []

    retries = 0
    if todo:
        from premem.execution import run_tasks

        first = todo if chains is None else [t for t in todo if t.split != "train"] + chains.first()
        retries = run_tasks(actors, first, on_result)
    bar.close()
    for table in ("samples", "train_scores", "test_scores", *perturb.TABLES):
        store.compact(table)
    return ScoreSummary(
        run, [c.step for c in checkpoints], len(tasks), len(todo), len(tasks) - len(todo), retries, tokens,
        time.perf_counter() - start, counts["skipped"], counts["sampled"], counts["grading_s"],
    )


def check_data_unchanged(store: ScoreStore, data: dict) -> None:
    """Refuse data that changed since the store was started (reads only: a new split is recorded later)."""
    recorded = recorded_splits(store)
    for split, ds in data.items():
        if split in recorded:
            store.check_dataset(split, ds)


def recorded_splits(store: ScoreStore) -> set[str]:
    """The splits whose data the store has recorded (its datasets table)."""
    return set(store.read("datasets")["split"]) if store.has("datasets") else set()


def run_metadata(run_dir: str | Path) -> dict:
    """The run's premem_run.json (written by `premem train`), or {} for runs made elsewhere."""
    meta = read_run_info(run_dir) or {}
    ids = meta.get("train_example_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
        raise InputError(f"{Path(run_dir) / RUN_INFO}: train_example_ids must be a list of integers")
    return meta


def run_row(run: str, cfg: ScoreConfig, meta: dict) -> pd.DataFrame:
    """The run's row of runs.parquet: where it is, how it was scored, and how it was trained."""
    row = {"run": run, "path": str(Path(cfg.run).resolve()), "backend": cfg.exec.backend,
           "sample": cfg.sample, "sample_tau": cfg.skip_tau}  # the tau skips are exact from (premem.store)
    row |= {k: meta[k] for k in RUN_COLUMNS if meta.get(k) is not None}
    if meta.get("train_example_ids") is not None:
        row["train_example_ids"] = [int(i) for i in meta["train_example_ids"]]
    return pd.DataFrame([row])


def only_trained(enc: Encoded, ids: list[int], run_dir, data_path: str) -> Encoded:
    """enc restricted to the examples the run trained on: the others' scores would go unused."""
    index = {ex.example_id: i for i, ex in enumerate(enc.examples)}
    missing = [i for i in ids if i not in index]
    if missing:
        raise InputError(
            f"{Path(run_dir) / RUN_INFO}: trained on example {missing[0]}, which {data_path} does not hold "
            "(is this the run's training data?)"
        )
    keep = sorted({index[i] for i in ids})
    return Encoded(
        [enc.examples[i] for i in keep],
        [enc.prompt_ids[i] for i in keep],
        None if enc.target_ids is None else [enc.target_ids[i] for i in keep],
        [enc.max_new_tokens[i] for i in keep],
    )


def score_table(split: str) -> str:
    return f"{split}_scores"  # perturb.SPLIT's: robustness_scores


def samples_table(split: str) -> str:
    return perturb.SAMPLES if split == perturb.SPLIT else "samples"


def stored_keys(store: ScoreStore, table: str) -> set[tuple[str, int, int]]:
    """(run, step, example_id) of every stored score row, compacted or still in parts."""
    if not store.has(table):
        return set()
    df = store.read(table)
    return set(zip(df["run"], df["step"].astype(int), df["example_id"].astype(int)))


def task_done(task, scored: dict[str, set]) -> bool:
    """A task is done when all its score rows are stored (its samples are written before them)."""
    if task.split == perturb.SPLIT:
        return perturb.done(task, scored[task.split])
    c = task.checkpoint
    return all((c.run, c.step, e) in scored[task.split] for e in task.example_ids)


# -- preparing the work ----------------------------------------------------------------------


def make_tasks(c: Checkpoint, split: str, enc: Encoded, params: SamplingParams, shard_size: int):
    from premem.sampling.actors import Task

    check_int("shard_size", shard_size, 1)
    order = sorted(range(len(enc.examples)), key=lambda i: enc.examples[i].example_id)
    for shard, start in enumerate(range(0, len(order), shard_size)):
        idx = order[start : start + shard_size]
        ids = [enc.examples[i].example_id for i in idx]
        yield Task(
            checkpoint=c,
            split=split,
            shard=shard,
            example_ids=ids,
            prompt_ids=[enc.prompt_ids[i] for i in idx],
            target_ids=None if enc.target_ids is None else [enc.target_ids[i] for i in idx],
            seeds=[query_seed(params.seed, c.step, split, e) for e in ids],
            max_new_tokens=[enc.max_new_tokens[i] for i in idx],
        )
