"""One row of a dataset -> one canonical Example: text or chat columns, the answer, the id.

Text columns may be strings or TRL conversational lists of {role, content} messages; a bad
row fails here, naming file, row and field (examples.py says which columns each format reads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from premem.data.io import Table
from premem.errors import InputError


@dataclass(frozen=True)
class Example:
    example_id: int
    """Stable id: the id column if the config names one, else the row's 0-based position in the file."""
    question: str
    """The query."""
    solution: str
    """The reasoning trace the model is finetuned on (the target, before templating)."""
    answer: str
    """The gold final answer."""
    rejected: str | None = None
    """Preference data only: the rejected response."""


# In these formats the solution is free-form model text, so the answer may be found by the
# grader's lenient extraction; gsm8k and math solutions must carry the answer in canonical form.
FREE_FORM = {"prompt_completion", "messages", "preference"}

_ANSWER_MARK = {"gsm8k": "'####'", "math": "\\boxed{}"}


@dataclass
class RowReader:
    """What turning one row into an Example needs, fixed once per dataset."""

    fmt: str
    columns: dict[str, str]
    grader: Any
    grader_name: str
    table: Table

    def example(self, row: dict, i: int) -> Example:
        where, columns = self.table.where(i), self.columns
        example_id = int_id(row.get(columns["id"]), where, columns["id"]) if "id" in columns else i
        question_value = _text_value(row, columns["question"], where)
        same_column = columns["question"] == columns["solution"]
        question = question_text(question_value, same_column, columns["question"], where)
        solution = _response_text(_text_value(row, columns["solution"], where), columns["solution"], where)
        rejected = None
        # canonical rows hold a null rejected response unless they are preference data
        if "rejected" in columns and not (self.fmt == "canonical" and row.get(columns["rejected"]) is None):
            rejected = _response_text(_text_value(row, columns["rejected"], where), columns["rejected"], where)
            if rejected.strip() == solution.strip():
                raise InputError(
                    f"{where}: fields '{columns['solution']}' and '{columns['rejected']}' hold the same response; "
                    "a preference pair needs two different ones"
                )
        return Example(example_id, question, solution, self.answer(row, solution, where), rejected)

    def answer(self, row: dict, solution: str, where: str) -> str:
        """The answer column's value when non-empty, else the answer found in the solution."""
        columns = self.columns
        if "answer" in columns:
            value = row.get(columns["answer"])
            if value is not None and str(value).strip():
                return str(value).strip()
        answer = self.grader.gold_from_solution(solution)
        if not answer and self.fmt in FREE_FORM:
            answer = self.grader.extract_flexible(solution)
        if answer:
            return answer
        column_note = f"field '{columns['answer']}' empty and " if "answer" in columns else ""
        if self.fmt in FREE_FORM:
            found_none = f"the {self.grader_name} grader found none"
        else:
            found_none = f"no {_ANSWER_MARK.get(self.grader_name, 'final answer')}"
        raise InputError(f"{where}: no final answer ({column_note}{found_none} in field '{columns['solution']}')")


def _text_value(row: dict, column: str, where: str) -> str | list:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
        raise InputError(f"{where}: field '{column}' is missing or empty")
    if not isinstance(value, (str, list)):
        kind = type(value).__name__
        raise InputError(f"{where}: field '{column}' is {kind}, expected text or a list of chat messages")
    return value


def question_text(value: str | list, same_column_as_solution: bool, column: str, where: str) -> str:
    """The user turn of a conversation (or the string itself).

    A chat that also holds the solution (the messages format) gives the last user turn
    before its last assistant turn; a prompt gives its last user turn. Earlier turns and
    system messages are dropped: examples are single-turn, which loses the context of a
    genuinely multi-turn chat.
    """
    if isinstance(value, str):
        return value
    messages = _messages(value, column, where)
    if same_column_as_solution:
        last_assistant = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        messages = messages[:last_assistant]
    return _last_turn(messages, "user", column, where)


def _response_text(value: str | list, column: str, where: str) -> str:
    """The last assistant turn of a conversation (or the string itself)."""
    if isinstance(value, str):
        return value
    return _last_turn(_messages(value, column, where), "assistant", column, where)


def _messages(value: list, column: str, where: str) -> list[dict]:
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InputError(
                f"{where}: field '{column}' is a list but not of chat messages ({{role, content}} with text content)"
            )
    return value


def _last_turn(messages: list[dict], role: str, column: str, where: str) -> str:
    for m in reversed(messages):
        if m["role"] == role:
            if not m["content"].strip():
                raise InputError(f"{where}: field '{column}' has an empty {role} message")
            return m["content"]
    raise InputError(f"{where}: field '{column}' has no {role} message")


def int_id(value: Any, where: str, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise InputError(f"{where}: id {value!r} in field '{column}' is not an integer")
