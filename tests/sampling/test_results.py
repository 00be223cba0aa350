"""Task results as store rows, as the sampler actors build them (premem.sampling.results)."""

import math
from pathlib import Path

import pandas as pd
import pytest

from premem.data.grading import get_grader
from premem.runs import Checkpoint
from premem.sampling.actors import Task
from premem.sampling.backend import Completion, TargetLogprob
from premem.sampling.results import result_tables
from premem.sampling.skipping import SkipRule

# MATH answers: right in another form, wrong, unboxed, and one that is each sample of two queries
ANSWERS = {
    0: ["so $\\boxed{0.5}$", "$\\boxed{\\frac{2}{4}}$", "$\\boxed{3}$"],
    1: ["The answer is $\\dfrac{6}{4}$.", "$\\boxed{1.5}$", "no idea"],
}
GOLDS = {0: "\\frac{1}{2}", 1: "\\frac{3}{2}"}


def target(perplexity: float, n: int = 3) -> TargetLogprob:
    return TargetLogprob(-n * math.log(perplexity), n)


def task(**kw) -> Task:
    ids = sorted(ANSWERS)
    return Task(Checkpoint("run", 10, Path("/run/checkpoint-10"), "full"), "train", 0, ids, [[1]] * 2, [[2]] * 2,
                [0, 1], grader="math", golds=[GOLDS[i] for i in ids], **kw)


def completions() -> list[list[Completion]]:
    return [[Completion(text, 7) for text in ANSWERS[i]] for i in sorted(ANSWERS)]


@pytest.fixture(scope="module")
def math_grader():
    grader = get_grader("math")
    yield grader
    grader.close()


@pytest.mark.parametrize("count", ["strict", "flexible"])
def test_rows_hold_the_graders_own_grades_and_counts(math_grader, count):
    targets = [target(2.7), target(1.4)]
    samples, scores = result_tables(task(count=count), completions(), targets, math_grader)
    expected = [math_grader.grade(text, GOLDS[i]) for i in sorted(ANSWERS) for text in ANSWERS[i]]
    assert list(samples["correct_strict"]) == [g.strict_correct for g in expected] == [True, True, False, False,
                                                                                         True, False]
    assert list(samples["correct_flexible"]) == [g.flexible_correct for g in expected]
    assert list(samples["answer_flexible"].fillna("-")) == [g.flexible_answer or "-" for g in expected]
    assert list(scores["n_samples"]) == [3, 3]
    assert list(scores["n_correct"]) == ([2, 1] if count == "strict" else [2, 2])  # "The answer is" counts only flexibly
    assert list(scores["n_unparsed"]) == ([0, 2] if count == "strict" else [0, 1])
    assert list(scores["perplexity"]) == pytest.approx([2.7, 1.4])


def test_a_skipped_query_keeps_its_row_without_samples(math_grader):
    rule = SkipRule(tau=-2.0, best_before=(0.0, 0.0), before_last=False)  # never accurate while unmemorized
    targets = [target(1.01), target(100.0)]  # example 0 memorized (log log 1.01 = -4.6): skipped
    only = rule.to_sample(targets)
    comps = [c if keep else [] for c, keep in zip(completions(), only)]
    samples, scores = result_tables(task(skip=rule), comps, targets, math_grader)
    assert set(samples["example_id"]) == {1}
    assert scores.set_index("example_id")[["n_samples", "skipped"]].to_dict("index") == {
        0: {"n_samples": 0, "skipped": "exact"}, 1: {"n_samples": 3, "skipped": ""}}
    assert isinstance(scores, pd.DataFrame) and scores["n_correct"].dtype == "int64"
