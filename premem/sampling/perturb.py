"""The per-example robustness probe of Kang et al. (arXiv 2411.07681): `premem score perturbations=[...]`.

Each training prompt is followed by a perturbation, text the model must continue from (the paper's: " First"
and " We know that", appended after "Answer:"). At every checkpoint k answers are sampled to each perturbed
prompt and graded against the example's gold answer, like the unperturbed samples; an example's robustness is
its accuracy under perturbation. The paper finds it predicted by per-example pre-memorization accuracy, and not
by train accuracy: a memorized example is answered right from its own prompt, and wrong once that is changed.

A perturbation is part of the prompt: the prompt and the perturbation are tokenized together, as one text, and
what is graded is what the model wrote after it. The work is cut into tasks of one checkpoint x perturbation x
shard of the training queries (split "robustness"), graded in the actors, and written as parts of two tables:

    robustness_scores    run x step x train example x perturbation: n_samples, n_correct, n_unparsed
    robustness_samples   the same x sample: text, n_tokens, gold, answers and grades (as `samples`)

Resuming is as for the other tables: a task is done when its score rows are stored, and a query's seed depends
on (seed, step, perturbation, example id) alone. Every training query the job scores is sampled under every
perturbation at every checkpoint, whatever `sample` skips of the unperturbed ones.
"""

from __future__ import annotations

import hashlib
import reprlib
from dataclasses import dataclass

import numpy as np
from premem.errors import InputError
from premem.sampling.actors import Task
from premem.sampling.backend import SamplingParams
from premem.sampling.encoding import Encoded
from premem.store import ScoreStore

SPLIT = "robustness"  # the tasks' split: their parts and tables are robustness_*
SCORES, SAMPLES = "robustness_scores", "robustness_samples"
TABLES = (SAMPLES, SCORES)  # in writing order: a task's score part, written last, marks it done


@dataclass
class PerturbedTask(Task):
    """A task on training queries whose prompts are followed by `perturbation` (premem.sampling.actors.Task)."""

    perturbation: str = ""

    @property
    def part(self) -> str:
        c = self.checkpoint  # the text may hold any character; its hash names the part, whatever the list order
        return f"run={c.run}.step={c.step}.split={SPLIT}.p={digest(self.perturbation)}.shard={self.shard:05d}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_perturbations(perturbations, train_examples: str) -> None:
    """Refuse a perturbation list that cannot work (ScoreConfig.validate): one line naming the field."""
    if not isinstance(perturbations, (list, tuple)):
        raise InputError(f"perturbations: expected a list of texts (e.g. [\" First\", \" We know that\"]), "
                         f"got {perturbations!r}")
    for i, p in enumerate(perturbations):
        if not isinstance(p, str) or not p:
            raise InputError(f"perturbations[{i}]: expected a non-empty text, got {p!r}")
    if len(set(perturbations)) < len(perturbations):
        twice = next(p for p in perturbations if list(perturbations).count(p) > 1)
        raise InputError(f"perturbations: {twice!r} is listed twice")
    if perturbations and train_examples == "none":
        raise InputError("perturbations: perturb the training prompts, but train_examples=none scores no training "
                         "queries")


def query_seed(seed: int, step: int, perturbation: str, example_id: int) -> int:
    """A perturbed query's sampling seed: a function of these four alone (its own stream: split index 2)."""
    text = int(digest(perturbation), 16)
    return int(np.random.SeedSequence([seed, step, 2, example_id, text]).generate_state(1)[0] >> 1)


def encode_perturbed(train: Encoded, template, tokenizer, context: int, params: SamplingParams,
                     perturbations: list[str], path: str) -> dict[str, Encoded]:
    """Per perturbation, the training queries with prompt + perturbation tokenized as one text (the model continues
    it), each checked against the context as the unperturbed prompts are."""
    chat = getattr(template, "tokenizer", None) is not None  # chat prompts carry their own special tokens
    out = {}
    for p in perturbations:
        prompts, caps = [], []
        for ex in train.examples:
            ids = tokenizer(template.render(ex).prompt + p, add_special_tokens=not chat)["input_ids"]
            if len(ids) + 1 > context:
                raise InputError(f"{path} example {ex.example_id}: prompt and perturbation {reprlib.repr(p)} take "
                                 f"{len(ids)} tokens, leaving no room in the model's context of {context}")
            prompts.append(ids)
            caps.append(max(1, min(params.max_new_tokens, context - len(ids))))
        out[p] = Encoded(train.examples, prompts, None, caps)
    return out


def perturbed_tasks(checkpoints, encoded: dict[str, Encoded], params: SamplingParams, shard_size: int, **task):
    """Every checkpoint x perturbation x shard of the training queries, as PerturbedTasks (`task`: the fields every
    task of the job shares: cache_dir, grader, count); golds from the examples."""
    out = []
    for c in checkpoints:
        for p, enc in encoded.items():
            order = sorted(range(len(enc.examples)), key=lambda i: enc.examples[i].example_id)
            for shard, start in enumerate(range(0, len(order), shard_size)):
                idx = order[start : start + shard_size]
                ids = [enc.examples[i].example_id for i in idx]
                out.append(PerturbedTask(
                    checkpoint=c, split=SPLIT, shard=shard, example_ids=ids,
                    prompt_ids=[enc.prompt_ids[i] for i in idx], target_ids=None,
                    seeds=[query_seed(params.seed, c.step, p, e) for e in ids],
                    max_new_tokens=[enc.max_new_tokens[i] for i in idx],
                    golds=[enc.examples[i].answer for i in idx], perturbation=p, **task))
    return out


def stored_keys(store: ScoreStore | None) -> set[tuple[str, int, int, str]]:
    """(run, step, example_id, perturbation) of every stored robustness score row, compacted or in parts."""
    if store is None or not store.has(SCORES):
        return set()
    df = store.read(SCORES)
    return set(zip(df["run"], df["step"].astype(int), df["example_id"].astype(int), df["perturbation"]))


def done(task: PerturbedTask, keys: set) -> bool:
    c = task.checkpoint
    return all((c.run, c.step, e, task.perturbation) in keys for e in task.example_ids)

