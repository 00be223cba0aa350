"""`premem probe track`: log π(response | prompt) of every probe response at every checkpoint of a run.

For each checkpoint (find_checkpoints; `base` adds the starting model as step 0) and each row
of a probe set (premem.data.probes), the summed and per-token mean log-probability of the
response under the paper template (question + "\\nAnswer:" -> " " + response + "\\nDone."),
teacher-forced, through the sampling backends' `target_logprobs`. Plus the greedy response
y* of each probe prompt: the argmax token at each position of [prompt; y+] (teacher forcing on
the chosen response), and its log-probability as Ren & Sutherland's code measures it: the sum
over the positions of the argmax token's log-probability under that same teacher forcing,
sum_t max_v log π(v | x, y+_<t). That is the mass the model puts on its own favourite next token
along the chosen response, which the squeezing effect inflates (the backends' `target_argmax`).
Its text is kept in the row (type `greedy`, column text). Only the Backend protocol is used, so
every backend tracks probes the same way.

One task per checkpoint, run by Ray actors (premem.execution: one kept pool, with
checkpoint affinity and retries); each finished task is written as its own part of the store
(`parts/probe_scores/run=<run>.step=<step>.probes.parquet`), so a re-run skips what is done.
The probe set is recorded in the store's datasets table (split `probes`): a store tracks one.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from premem.data.probes import PROBES_FILE, ProbeSet, check_probes_match, load_probes
from premem.errors import InputError
from premem.runs import Checkpoint, find_checkpoints
from premem.execution import ExecConfig
from premem.sampling.actors import CheckpointWork, SamplerActor
from premem.execution import BackendOptions
from premem.sampling.backend import Backend, SamplingParams, TargetArgmax, TargetLogprob
from premem.store import ScoreStore

log = logging.getLogger(__name__)

TABLE = "probe_scores"


@dataclass
class ProbeTrackConfig:
    """What `premem probe track` follows, on which checkpoints, and where it writes."""

    run: str = ""
    """Run directory: checkpoint-<step>/ folders (or anything premem score reads)."""
    probes: str = ""
    """Probe set directory written by premem probe build (probes.jsonl + manifest.json)."""
    store: str = ""
    """Score store directory to write table probe_scores to (created if missing; a re-run resumes it)."""
    data: str = ""
    """The preference data the probes were built from: refuse a probe set built for other data."""
    base: str = ""
    """Also track this model (the run's starting model) as step 0, so the first row is before training."""
    run_name: str | None = None
    """Name of the run in the store (default: the run directory's name)."""
    base_model: str | None = None
    """Base model directory for LoRA adapters (default: what adapter_config.json names)."""
    exec: ExecConfig = field(default_factory=ExecConfig)
    """How the work runs: backend, its options, Ray actors and cluster, progress bar."""

    def validate(self) -> None:
        """Refuse every setting that cannot work, before anything is read, written or started."""
        from premem.sampling.job import check_store_path

        for name in ("run", "probes", "store"):
            if not getattr(self, name):
                raise InputError(f"probe track: say which {name} (--{name})")
        check_store_path(self.store)
        self.exec.validate()


@dataclass
class ProbeTask(CheckpointWork):
    """Every probe row of one checkpoint (run_tasks needs .affinity, .where and .part)."""

    checkpoint: Checkpoint
    keys: list[tuple[int, str]]  # (probe_id, type) per row
    prompt_ids: list[list[int]]
    target_ids: list[list[int]]
    greedy_ids: list[int]  # probe ids with a chosen response: their y*
    greedy_prompt_ids: list[list[int]]
    greedy_chosen_ids: list[list[int]]
    cache_dir: str | None = None  # vLLM's merged LoRA / GGUF copies: the job's, not the actor's (kept across jobs)

    @property
    def part(self) -> str:
        return f"run={self.checkpoint.run}.step={self.checkpoint.step}.probes"


@dataclass
class ProbeResult:
    task: ProbeTask
    scores: list[TargetLogprob]  # per row of task.keys
    greedy: list[TargetArgmax]  # per probe of task.greedy_ids: its y* and y*'s log-probability
    seconds: float
    pid: int


def score_task(backend: Backend, task: ProbeTask) -> ProbeResult:
    """One checkpoint's probe rows and greedy responses, through any backend's teacher forcing."""
    start = time.perf_counter()
    scores = backend.target_logprobs(task.prompt_ids, task.target_ids)
    greedy = backend.target_argmax(task.greedy_prompt_ids, task.greedy_chosen_ids) if task.greedy_ids else []
    return ProbeResult(task, scores, greedy, time.perf_counter() - start, os.getpid())


class ProbeActor(SamplerActor):
    """A sampler actor that scores probe tasks: teacher-forced log-probs and the greedy y*."""

    def __init__(self, backend: str, options: BackendOptions, verbose: bool = False):
        super().__init__(backend, options, SamplingParams(), verbose)

    def run(self, task: ProbeTask) -> ProbeResult:  # type: ignore[override]
        return score_task(self.load(task.checkpoint, task.cache_dir), task)


@dataclass
class TrackSummary:
    run: str
    checkpoints: list[int]
    tasks_run: int
    tasks_skipped: int
    retries: int
    seconds: float


def track(cfg: ProbeTrackConfig) -> TrackSummary:
    """Score every probe response at every checkpoint of cfg.run into cfg.store; resumes."""
    from premem.sampling.encoding import check_tokenizers, context_length
    from premem.sampling.job import recorded_splits
    from premem.models import load_config

    cfg.validate()
    probes = load_probes(cfg.probes)
    if cfg.data:
        from premem.data import DataConfig, load_example_set

        check_probes_match(probes, load_example_set(DataConfig(path=cfg.data)))
    options = cfg.exec.options
    checkpoints = find_checkpoints(cfg.run, cfg.run_name, cfg.base_model, allow_pickle=options.allow_pickle)
    run = checkpoints[0].run
    if cfg.base:
        if checkpoints[0].step == 0:
            raise InputError(f"base: {cfg.run} has a checkpoint at step 0 already")
        base = find_checkpoints(cfg.base, allow_pickle=options.allow_pickle)[-1]
        checkpoints.insert(0, replace(base, run=run, step=0))
    tokenizer = check_tokenizers(checkpoints, options)
    context = context_length(load_config(checkpoints[0], options))
    encoded = encode_probes(probes, tokenizer, context)

    record = {"path": str(probes.path / PROBES_FILE), "n_examples": len(probes.rows), "format": "probes"}
    existing = ScoreStore(cfg.store) if Path(cfg.store).is_dir() else None
    if existing is not None and "probes" in recorded_splits(existing):
        existing.check_dataset("probes", probes.fingerprint, **record)  # refuses another probe set; reads only
    done = stored_keys(existing) if existing else set()
    # vLLM's merged copies of LoRA / GGUF checkpoints: under the store (carried by the tasks: the actors are kept)
    cache_dir = options.cache_dir or str(Path(cfg.store).resolve() / "cache")
    tasks = [ProbeTask(c, *encoded, cache_dir=cache_dir) for c in checkpoints]
    expected = [(pid, t) for pid, t in encoded[0]] + [(pid, "greedy") for pid in encoded[3]]
    todo = [t for t in tasks if not all((run, t.checkpoint.step, pid, ty) in done for pid, ty in expected)]
    log.info("%s: %d checkpoints, %d already tracked", run, len(tasks), len(tasks) - len(todo))

    pool = nullcontext([])
    if todo:
        from premem.execution import pool as actor_pool

        args = (cfg.exec.backend, replace(options, cache_dir=None))
        pool = actor_pool(cfg.exec, ProbeActor, args, n=min(cfg.exec.actors, len(todo)))
    with pool as actors:  # the process's live actors, or new ones, or refused by the cluster: before any write
        store = ScoreStore(cfg.store, create=True)
        store.check_dataset("probes", probes.fingerprint, **record)
        start = time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"probing {run}", unit="ckpt", disable=not cfg.exec.progress)

        def on_result(result: ProbeResult) -> None:
            store.write_part(TABLE, result.task.part, result_rows(result, tokenizer))
            bar.update(1)

        retries = 0
        if todo:
            from premem.execution import run_tasks

            retries = run_tasks(actors, todo, on_result)
        bar.close()
    store.compact(TABLE)
    return TrackSummary(run, [c.step for c in checkpoints], len(todo), len(tasks) - len(todo), retries,
                        time.perf_counter() - start)


def encode_probes(probes: ProbeSet, tokenizer, context: int):
    """(keys, prompt ids, target ids) of every row, and (probe ids, prompt ids, chosen ids) for the greedy y*."""
    keys, prompts, targets, greedy = [], [], [], ([], [], [])
    for i, r in enumerate(probes.rows):
        p = tokenizer(r.prompt + "\nAnswer:")["input_ids"]  # the paper template, as premem score renders it
        t = tokenizer(" " + r.response + "\nDone.", add_special_tokens=False)["input_ids"]
        if len(p) + len(t) > context:
            raise InputError(
                f"{probes.path / PROBES_FILE} row {i}: prompt and response take {len(p) + len(t)} tokens, more than "
                f"the model's context of {context}"
            )
        keys.append((r.probe_id, r.type))
        prompts.append(p)
        targets.append(t)
        if r.type == "chosen":
            for lst, v in zip(greedy, (r.probe_id, p, t)):
                lst.append(v)
    return keys, prompts, targets, *greedy


def stored_keys(store: ScoreStore) -> set[tuple[str, int, int, str]]:
    if not store.has(TABLE):
        return set()
    df = store.read(TABLE)
    return set(zip(df["run"], df["step"].astype(int), df["probe_id"].astype(int), df["type"]))


def result_rows(result: ProbeResult, tokenizer) -> pd.DataFrame:
    """The probe_scores rows of one checkpoint: every probe row, then each prompt's greedy y*."""
    c = result.task.checkpoint
    rows = [(c.run, c.step, pid, ty, s.sum_logprob, s.n_tokens, None)
            for (pid, ty), s in zip(result.task.keys, result.scores)]
    rows += [(c.run, c.step, pid, "greedy", g.sum_logprob, g.n_tokens,
              tokenizer.decode(list(g.tokens), skip_special_tokens=True))
             for pid, g in zip(result.task.greedy_ids, result.greedy)]
    df = pd.DataFrame(rows, columns=["run", "step", "probe_id", "type", "sum_logprob", "n_tokens", "text"])
    df["mean_logprob"] = df["sum_logprob"] / df["n_tokens"]
    df["text"] = df["text"].astype(object)
    return df[["run", "step", "probe_id", "type", "sum_logprob", "n_tokens", "mean_logprob", "text"]]
