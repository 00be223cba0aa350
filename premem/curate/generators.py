"""Generators: where the curation loop's new examples come from.

A generator is asked for one new example like each template (an example the strategy ranked
first) and answers with rows {"question", "solution"[, "answer"]}:

    class Generator(Protocol):
        def __call__(self, templates: list[dict], seed: int, avoid: set[str]) -> list[dict]: ...

templates are canonical examples {"example_id", "question", "solution", "answer"}; avoid
holds the questions already in the data (or held out), which a new example must not repeat.
Five kinds (GeneratorConfig.kind):

- arith: the tiny benchmark's own problem maker (premem.data.arith.similar_problems): the
  template's operations in the same order, new numbers, names and things.
- skills: the skills benchmark's (premem.data.skills.similar_problems): the template's family
  (its skill), everything else new.
- copy: the templates themselves, again: upsampling (Kang et al. compare collecting new data
  like the low pre-memorization examples with repeating them).
- python: a user's callable, "package.module:function" or "path/to/file.py:function", with the
  signature above. Its rows are checked (`check_rows`); a bad one is an error naming it.
- llm: a model served by a sampling backend (hf or vllm), given a rewrite prompt built from
  each template. Its answers are parsed into question and solution; those without a final
  answer the grader can read, or repeating a question, are dropped and asked for again (up
  to `attempts` times). A new solution is the model's own, so its answer is only as right
  as that model: use a strong one, or check the rows before trusting them.

i.i.d. mixing (`iid_mix`): a share of each round's new examples drawn straight from the task's
distribution instead of like a template (`make_iid`; the arith and skills tasks have one). Curated data drifts
from the test distribution; mixing holds it. iid_mix=1 is i.i.d. data scaling, the baseline every
strategy is measured against.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from premem.data import tasks
from premem.data.arith import ArithConfig
from premem.data.grading import get_grader
from premem.data.skills import SkillsConfig
from premem.errors import InputError
from premem.execution import ExecConfig, check_int, check_number
from premem.sampling.backend import SamplingParams

log = logging.getLogger(__name__)

REWRITE_PROMPT = (
    "Write a new problem like the example: the same kind of reasoning and the same number of steps, "
    "with new numbers, names and things. Then solve it step by step, ending with the final answer.\n\n"
    "Example problem: {question}\nExample solution: {solution}\n\nNew problem:"
)
SOLUTION_MARK = "\nSolution:"  # the llm generator's answers read "<question>\nSolution: <solution>"


class Generator(Protocol):
    def __call__(self, templates: list[dict], seed: int, avoid: set[str]) -> list[dict]: ...


@dataclass
class GeneratorConfig:
    """Where the loop's new examples come from."""

    kind: str = "arith"
    """arith or skills (a tiny benchmark's problem maker), copy (the templates again: upsampling), python (your
    callable) or llm (a model and a rewrite prompt)."""
    function: str = ""
    """python: the callable, "package.module:function" or "path/to/file.py:function"."""
    benchmark: ArithConfig = field(default_factory=lambda: ArithConfig(n_train=0, max_number=20, max_operand=6))
    """arith: the task's settings (ranges of numbers and operands)."""
    skills: SkillsConfig = field(default_factory=lambda: SkillsConfig(n_train=0))
    """skills: the task's settings (families, ranges)."""
    near: int | None = None
    """arith: None, new numbers anywhere in range; k, the start and each operand within +-k of the template's."""
    model: str = ""
    """llm: the model directory (safetensors; exec.options says whether pickle or remote code may load)."""
    prompt: str = REWRITE_PROMPT
    """llm: the rewrite prompt, with {question} and {solution} of the template; the model continues it with
    the new question, then "Solution:" and the new solution."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(samples=1, temperature=0.8,
                                                                           max_new_tokens=256, stop=["\nNew problem:"]))
    """llm: how the new examples are sampled (one per template and attempt)."""
    exec: ExecConfig = field(default_factory=ExecConfig)
    """llm: how the model runs: exec.backend (hf or vllm) and exec.options, the same keys as every job's exec; it
    runs in the loop's own process, one engine, so exec.actors, gpus_per_actor and address are not read."""
    attempts: int = 3
    """llm: times a template is asked again when its answer does not parse."""
    iid_mix: float = 0.0
    """Share of each round's new examples drawn i.i.d. from the task instead of like a template (arith and
    skills only; 1: i.i.d. data scaling, no templates)."""
    seed: int | None = None
    """The round that grows the data to n examples generates with seed + n (its i.i.d. share with seed + n +
    IID_SEED); default: the loop's seed * 1000 + the round."""

    def validate(self, prefix: str = "generator.") -> None:
        """The settings every kind shares, checked before the loop reads or writes anything."""
        if self.kind not in KINDS:
            raise InputError(f"{prefix}kind: unknown generator {self.kind!r}; known: {', '.join(KINDS)}")
        check_number(prefix + "iid_mix", self.iid_mix, lambda m: 0 <= m <= 1, "a share in [0, 1]")
        if self.iid_mix and self.kind not in IID_KINDS:
            raise InputError(f"{prefix}iid_mix: i.i.d. draws need the task's own distribution, which only the arith "
                             f"and skills generators have (kind is {self.kind})")
        if self.seed is not None:
            check_int(prefix + "seed", self.seed, 0)
        if self.near is not None:
            check_int(prefix + "near", self.near, 0)
        if self.kind == "llm":
            self.exec.validate(prefix + "exec.")


KINDS = ("arith", "skills", "copy", "python", "llm")
IID_KINDS = ("arith", "skills")  # the kinds that know their task's distribution
IID_SEED = 1000  # the i.i.d. share draws with seed + IID_SEED: a stream apart from the templated examples'


def make_generator(cfg: GeneratorConfig, grader: str) -> Generator:
    """The generator cfg names; everything it needs is checked now, before a round runs."""
    if cfg.kind in IID_KINDS:
        return lambda templates, seed, avoid: [
            {"question": p["question"], "solution": p["answer"]}
            for p in tasks.similar_problems(task_of(cfg), templates, seed, avoid, near=cfg.near)
        ]
    if cfg.kind == "copy":  # the same examples again: a repeat is the point, so avoid does not apply
        return lambda templates, seed, avoid: [
            {"question": t["question"], "solution": t["solution"], "answer": t["answer"]} for t in templates]
    if cfg.kind == "python":
        return _checked(load_callable(cfg.function), cfg.function, grader)
    if cfg.kind == "llm":
        if not cfg.model:
            raise InputError("generator.model: the llm generator needs a model directory")
        if "{question}" not in cfg.prompt:
            raise InputError("generator.prompt: the rewrite prompt must contain {question}")
        return LLMGenerator(cfg, grader)
    raise InputError(f"generator.kind: unknown generator {cfg.kind!r}; known: {', '.join(KINDS)}")


def make_iid(cfg: GeneratorConfig) -> Callable[[int, int, set[str]], list[dict]] | None:
    """draw(n, seed, avoid): n new examples straight from the task's distribution, none in avoid (None when
    cfg.iid_mix is 0)."""
    if not cfg.iid_mix:
        return None
    if cfg.kind not in IID_KINDS:
        raise InputError(f"generator.iid_mix: i.i.d. draws need the task's own distribution, which only the arith "
                         f"and skills generators have (kind is {cfg.kind})")
    return lambda n, seed, avoid: [{"question": p["question"], "solution": p["answer"]}
                                   for p in tasks.fresh_problems(task_of(cfg), n, seed + IID_SEED, avoid)]


def task_of(cfg: GeneratorConfig) -> tasks.Benchmark:
    """The settings of the task an arith or skills generator draws from."""
    return cfg.skills if cfg.kind == "skills" else cfg.benchmark


def load_callable(spec: str) -> Callable:
    """"package.module:function" or "path/to/file.py:function" -> the function."""
    where = f"generator.function {spec!r}"
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise InputError(f"{where}: expected package.module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"{where}: {path} does not exist")
            spec_ = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as e:  # an import error in the user's module is theirs to see, in one line
        raise InputError(f"{where}: cannot import {module_name}: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"{where}: {module_name} has no callable {name!r}")
    return fn


def check_rows(rows, n: int, avoid: set[str], grader: str, where: str) -> list[dict]:
    """A generator's rows as {"question", "solution", "answer"}: n of them, each complete and new."""
    if not isinstance(rows, list) or len(rows) != n:
        got = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
        raise InputError(f"{where}: expected a list of {n} rows (one per template), got {got}")
    g = get_grader(grader)
    out, seen = [], set(avoid)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                for k in ("question", "solution")):
            raise InputError(f"{where}: row {i}: expected a dict with non-empty string question and solution")
        answer = row.get("answer") or g.gold_from_solution(row["solution"])
        if not answer:
            raise InputError(f"{where}: row {i}: no final answer (give one, or end the solution as {grader} data does)")
        if row["question"] in seen:
            raise InputError(f"{where}: row {i}: the question is already in the data (or held out): {row['question'][:60]!r}")
        seen.add(row["question"])
        out.append({"question": row["question"], "solution": row["solution"], "answer": str(answer)})
    return out


def _checked(fn: Callable, name: str, grader: str) -> Generator:
    def generate(templates, seed, avoid):
        return check_rows(fn(templates, seed=seed, avoid=set(avoid)), len(templates), avoid, grader,
                          f"generator {name}")

    return generate


class LLMGenerator:
    """New examples written by a model from a rewrite prompt, through a sampling backend."""

    def __init__(self, cfg: GeneratorConfig, grader: str):
        from premem.runs import find_checkpoints

        self.cfg, self.grader = cfg, get_grader(grader)
        self.checkpoint = find_checkpoints(cfg.model, allow_pickle=cfg.exec.options.allow_pickle)[-1]

    def __call__(self, templates: list[dict], seed: int, avoid: set[str]) -> list[dict]:
        from premem.models import load_tokenizer
        from premem.sampling.engines import make_backend

        tokenizer = load_tokenizer(self.checkpoint, self.cfg.exec.options)
        backend = make_backend(self.cfg.exec.backend, self.checkpoint, self.cfg.exec.options)
        params = SamplingParams(**{**self.cfg.sampling.__dict__, "samples": 1})
        out: list[dict | None] = [None] * len(templates)
        seen, rejected = set(avoid), 0
        try:
            for attempt in range(self.cfg.attempts):
                todo = [i for i, r in enumerate(out) if r is None]
                if not todo:
                    break
                prompts = [tokenizer(self.cfg.prompt.format(question=templates[i]["question"],
                                                            solution=templates[i]["solution"]))["input_ids"]
                           for i in todo]
                seeds = [seed * 1_000_003 + attempt * 10_007 + i for i in todo]
                for i, samples in zip(todo, backend.generate(prompts, params, seeds)):
                    row = parse_rewrite(samples[0].text, self.grader)
                    if row is None or row["question"] in seen:
                        rejected += 1
                        continue
                    seen.add(row["question"])
                    out[i] = {**row, "template": i}
        finally:
            backend.close()
        made = [r for r in out if r is not None]
        log.info("llm generator: %d of %d new examples (%d answers rejected: no question, no final answer, or a "
                 "repeat)", len(made), len(templates), rejected)
        return made


def parse_rewrite(text: str, grader) -> dict | None:
    """"<question>\\nSolution: <solution>" -> a row, or None when a part or the final answer is missing."""
    question, sep, solution = text.partition(SOLUTION_MARK)
    question, solution = question.strip(), solution.strip()
    if not sep or not question or not solution:
        return None
    answer = grader.gold_from_solution(solution)
    return {"question": question, "solution": solution, "answer": answer} if answer else None
