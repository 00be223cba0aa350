"""Answer graders: read the final answer out of a reasoning trace and decide if it is right.

Two graders, picked by name with `get_grader`:

- "gsm8k": the answer is the number after "####" (GSM8K's own format, and the paper's).
- "math":  the answer is the last \\boxed{...}; equivalence is decided by HF math-verify.

Each grader extracts an answer two ways. *Strict* accepts only the trained format ("#### 42",
"\\boxed{42}"); *flexible* also accepts "The answer is 42" and, failing that, the last number
(GSM8K) or the last $...$ span (MATH). Strict is what the paper counts; flexible shows how much
of the gap is format rather than reasoning.

    grader = get_grader("gsm8k")
    gold = grader.gold_from_solution(row["answer"])     # "72"
    grade = grader.grade(sample_text, gold)             # Grade(strict_answer="72", ...)

Model samples in the paper's format end with "\\nDone."; everything from there on is ignored.

The graders live in one module each (gsm8k.py, math.py; math.py says how math-verify's
timeouts work), on what they share (base.py); this module is their registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from premem.data.grading.base import Grade, Grader, GraderBase, cut_at_done
from premem.data.grading.gsm8k import GSM8KGrader, normalize_number
from premem.data.grading.math import MathGrader, last_boxed, normalize_latex
from premem.errors import InputError

__all__ = [
    "GRADERS", "Disagreement", "GSM8KGrader", "Grade", "Grader", "GraderBase", "MathGrader", "cut_at_done",
    "get_grader", "grade_gold_against_solutions", "last_boxed", "normalize_latex", "normalize_number",
]

GRADERS: dict[str, type] = {"gsm8k": GSM8KGrader, "math": MathGrader}


def get_grader(name: str) -> Grader:
    if name not in GRADERS:
        raise InputError(f"unknown grader {name!r}; known: {', '.join(GRADERS)}")
    return GRADERS[name]()


@dataclass(frozen=True)
class Disagreement:
    index: int  # position of the row
    row_id: Any  # the row's unique_id (or id) field, else its index
    gold: str | None  # the answer field (or what gold_from_solution read)
    strict_answer: str | None  # what the grader read from the solution
    flexible_answer: str | None


def grade_gold_against_solutions(
    rows: Iterable[dict[str, Any]],
    grader: Grader,
    answer_field: str | None,
    solution_field: str,
) -> tuple[int, int, list[Disagreement]]:
    """How often the grader marks a dataset's own solutions correct: (n_agree, n_total, misses).

    With answer_field the gold is that field (MATH: `answer` against the last box of
    `solution`); with answer_field=None it is what gold_from_solution reads from the solution
    itself (GSM8K: the "####" line). A row agrees when strict and flexible grades are both right.
    """
    n_agree, n_total, disagreements = 0, 0, []
    for index, row in enumerate(rows):
        solution = row[solution_field]
        gold = grader.gold_from_solution(solution) if answer_field is None else str(row[answer_field])
        grade = grader.grade(solution, gold) if gold is not None else Grade(None, None, False, False)
        n_total += 1
        if grade.strict_correct and grade.flexible_correct:
            n_agree += 1
        else:
            row_id = row.get("unique_id", row.get("id", index))
            disagreements.append(Disagreement(index, row_id, gold, grade.strict_answer, grade.flexible_answer))
    return n_agree, n_total, disagreements
