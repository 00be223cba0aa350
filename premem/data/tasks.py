"""The tiny benchmarks behind one set of calls: arith (premem.data.arith) and skills (premem.data.skills).

A recipe names its task (`task: arith | skills`) and keeps each benchmark's settings under its own key
(`benchmark:` for arith, `skills:` for skills); everything downstream (the base model's pretraining text,
the data files, the curation loop's generator) asks this module, so it never needs to know which.

    bench = benchmark_of("skills", cfg.benchmark, cfg.skills)
    train, test = generate(bench)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from premem.data import arith, skills
from premem.data.arith import ArithConfig
from premem.data.skills import SkillsConfig
from premem.errors import InputError

TASKS = ("arith", "skills")
Benchmark = ArithConfig | SkillsConfig


def benchmark_of(task: str, arith_cfg: ArithConfig, skills_cfg: SkillsConfig, prefix: str = "") -> Benchmark:
    """The settings of the task a recipe names (its `benchmark:` or its `skills:` key)."""
    if task not in TASKS:
        raise InputError(f"{prefix}task: unknown task {task!r}; known: {', '.join(TASKS)}")
    return skills_cfg if task == "skills" else arith_cfg


def key_of(bench: Benchmark) -> str:
    """Where a recipe's config keeps these settings, for error messages: "skills." or "benchmark."."""
    return "skills." if isinstance(bench, SkillsConfig) else "benchmark."


def _module(bench: Benchmark):
    return skills if isinstance(bench, SkillsConfig) else arith


def generate(bench: Benchmark) -> tuple[list[dict], list[dict]]:
    """(train, test) problems: dicts with question, answer (GSM8K form) and final."""
    return _module(bench).generate(bench)


def write_benchmark(bench: Benchmark, data_dir: str | Path) -> tuple[Path, Path]:
    """train.jsonl and test.jsonl in data_dir (GSM8K form); the same settings write the same files."""
    return arith.write_splits(*generate(bench), data_dir)


def pretraining_texts(bench: Benchmark, n_problems: int, fact_passes: int) -> list[str]:
    """The related text a base model for this task is pretrained on."""
    return _module(bench).pretraining_texts(bench, n_problems=n_problems, fact_passes=fact_passes)


def fresh_problems(bench: Benchmark, n: int, seed: int, avoid: set[str]) -> list[dict]:
    """n i.i.d. problems of the task, none of whose questions is in avoid."""
    if isinstance(bench, SkillsConfig):
        return skills.fresh_problems(bench, n, seed, avoid)
    gen = dataclasses.replace(bench, n_train=0, n_test=4 * n + len(avoid) + 16, seed=seed)
    _, pool = arith.generate(gen)
    out = [p for p in pool if p["question"] not in avoid][:n]
    if len(out) < n:
        raise InputError(f"benchmark: could not draw {n} new problems (the task has too few distinct questions)")
    return out


def similar_problems(bench: Benchmark, templates: list[dict], seed: int, avoid: set[str],
                     near: int | None = None) -> list[dict]:
    """One new problem like each template ({question, solution}): arith keeps the operations in order (and,
    with near, the numbers within +-near); skills keeps the family."""
    if isinstance(bench, SkillsConfig):
        return skills.similar_problems([t["question"] for t in templates], bench, seed, avoid)
    return arith.similar_problems([t["solution"] for t in templates], bench, seed, avoid, near=near)


def skill_of(bench: Benchmark, question: str, answer: str) -> str:
    """What a problem's skill is, for per-skill tables: its family (skills) or its operations (arith)."""
    return skills.family_of(question) if isinstance(bench, SkillsConfig) else arith.structure(answer)
