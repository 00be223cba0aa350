"""What every grader shares: the Grade it returns, the Grader protocol, and reading a sample up to its stop string."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Grade:
    strict_answer: str | None  # answer found by strict extraction (None = unparsed)
    flexible_answer: str | None  # answer found by flexible extraction
    strict_correct: bool
    flexible_correct: bool


class Grader(Protocol):
    name: str

    def extract_strict(self, text: str) -> str | None: ...
    def extract_flexible(self, text: str) -> str | None: ...
    def gold_from_solution(self, solution: str) -> str | None: ...
    def equivalent(self, predicted: str, gold: str) -> bool: ...
    def grade(self, text: str, gold: str) -> Grade: ...
    def grade_many(self, pairs: list[tuple[str, str]]) -> list[Grade]: ...


# -----------------------------------------------------------------------------
# pieces both graders use

# "The answer is 42" (also "The final answer is 42"); the last such phrase wins.
_ANSWER_IS = re.compile(r"the (?:final )?answer is", re.IGNORECASE)


def cut_at_done(text: str) -> str:
    """The sample up to the paper's stop string "\\nDone." (a model that ran on is cut there)."""
    return text.split("\nDone.", 1)[0]


def after_answer_is(text: str) -> str | None:
    """The text after the last "The answer is", or None when the phrase is absent."""
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    return None if last is None else text[last.end():]


class GraderBase:
    """grade() is the same for every grader: extract both ways, compare each with the gold."""

    name = ""

    def grade(self, text: str, gold: str) -> Grade:
        strict = self.extract_strict(text)
        flexible = self.extract_flexible(text)
        strict_ok = strict is not None and bool(gold) and self.equivalent(strict, gold)
        if flexible == strict:  # the common case; don't pay for the comparison twice
            flexible_ok = strict_ok
        else:
            flexible_ok = flexible is not None and bool(gold) and self.equivalent(flexible, gold)
        return Grade(strict, flexible, strict_ok, flexible_ok)

    def grade_many(self, pairs: list[tuple[str, str]]) -> list[Grade]:
        """grade() of every (text, gold) pair, in order (a grader with costly checks does them together)."""
        return [self.grade(text, gold) for text, gold in pairs]
