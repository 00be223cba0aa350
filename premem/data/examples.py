"""Turning the rows of a dataset into canonical examples.

Every later stage (training, sampling, scoring, curation) sees only `Example`s: an integer
id, the question, the solution the model is finetuned on, the gold final answer, and for
preference data the rejected response. `load_examples(DataConfig)` reads a file (see io.py),
works out its row format, maps columns to those fields and checks every row, so that a bad
row fails here, naming file, row and field, instead of as a wrong score hours later.

Formats and their default columns (any of them can be renamed with `fields`):

    gsm8k              question, answer ("reasoning ... #### 42"; the number after #### is the answer)
    math               problem, solution, optional answer (else the last \\boxed{} of the solution)
    prompt_completion  prompt, completion (TRL), optional answer
    messages           messages (a chat; see _question_text for which turns are used), optional answer
    preference         prompt, chosen, rejected (TRL), optional answer
    canonical          question, solution, optional answer, example_id, rejected (what
                       `premem data check --out` writes, so premem reads its own output back)

Text columns may be strings or TRL conversational lists of {role, content} messages.
For prompt_completion, messages and preference a missing answer column means the answer is
extracted from the solution by the grader. `format: auto` picks the first format in
AUTO_ORDER whose columns are all present (after `fields` renames).

Rows that already carry the paper template (prompt ending "\\nAnswer:", response " ...\\nDone.",
as premem curate's `*.prompt_completion.jsonl` files do) are read without it, so that training
and scoring render them exactly once, byte for byte as they were; `rendered` says how to read
them (see DataConfig), and ExampleSet.rendered says what was done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from premem.data.grading import get_grader, last_boxed
from premem.data.io import Table, read_table
from premem.data.templates import PaperTemplate
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


@dataclass
class DataConfig:
    """How the rows of one dataset become canonical examples."""

    path: str = ""
    """File (JSONL, Parquet, CSV) or Hugging Face dataset directory."""
    format: str = "auto"
    """Row shape: auto, gsm8k (question/answer with '#### n'), math (problem/solution, optional answer), prompt_completion (TRL), messages (chat), preference (prompt/chosen/rejected)."""
    fields: dict[str, str] = field(default_factory=dict)
    """Canonical field -> column name overrides, e.g. {question: query, solution: response, answer: final, id: idx}."""
    grader: str = "auto"
    """Answer checker: gsm8k or math; auto picks from the format (math -> math, else gsm8k)."""
    split: str | None = None
    """Split to read from a DatasetDict directory."""
    limit: int | None = None
    """Keep only the first N examples (for quick runs)."""
    rendered: str = "auto"
    """Rows that already carry the paper template: auto (read without it when every row carries it; a mix is an error), paper (every row must), none (use the text as it is: the template is applied on top)."""


CANONICAL_FIELDS = ("id", "question", "solution", "answer", "rejected")

# Default column of each canonical field, per format. "answer" is optional wherever it is a
# default (used when present); "id" is never a default: ids are positions unless named.
FORMAT_COLUMNS: dict[str, dict[str, str]] = {
    "gsm8k": {"question": "question", "solution": "answer"},
    "math": {"question": "problem", "solution": "solution", "answer": "answer"},
    "prompt_completion": {"question": "prompt", "solution": "completion", "answer": "answer"},
    "messages": {"question": "messages", "solution": "messages", "answer": "answer"},
    "preference": {"question": "prompt", "solution": "chosen", "rejected": "rejected", "answer": "answer"},
    # premem's own canonical rows carry their ids and (preference data) rejected responses
    "canonical": {"question": "question", "solution": "solution", "answer": "answer", "id": "example_id",
                  "rejected": "rejected"},
}
FORMATS = tuple(FORMAT_COLUMNS)

# Most specific first: preference data also has a prompt (so it must beat prompt_completion),
# canonical rows have question and answer columns too (so canonical must beat gsm8k), and
# messages comes last because a lone chat column is the weakest signal (datasets that carry a
# chat copy next to question/answer columns are read by those columns).
AUTO_ORDER = ("preference", "prompt_completion", "math", "canonical", "gsm8k", "messages")

RENDERED = ("auto", "paper", "none")

# In these formats the solution is free-form model text, so the answer may be found by the
# grader's lenient extraction; gsm8k and math solutions must carry the answer in canonical form.
_FREE_FORM = {"prompt_completion", "messages", "preference"}

_ANSWER_MARK = {"gsm8k": "'####'", "math": "\\boxed{}"}


def detect_format(columns: list[str], fields: dict[str, str] | None = None) -> str | None:
    """The first format in AUTO_ORDER whose required columns (after renames) are all present."""
    for fmt in AUTO_ORDER:
        mapping = {**FORMAT_COLUMNS[fmt], **(fields or {})}
        if all(mapping[name] in columns for name in _required(fmt)):
            return fmt
    return None


@dataclass(frozen=True)
class ExampleSet:
    """A loaded dataset: its examples, and the format and grader they were read with."""

    path: str
    format: str
    grader: str
    examples: list[Example]
    rendered: str = "none"
    """"paper": the rows carried the paper template and were read without it; "none": raw text."""

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.examples)


def load_examples(cfg: DataConfig) -> list[Example]:
    """Read cfg.path and return its canonical examples, checking every row."""
    return load_example_set(cfg).examples


def load_example_set(cfg: DataConfig) -> ExampleSet:
    """Like load_examples, keeping the resolved format and grader name alongside."""
    _check_config(cfg)
    table = read_table(cfg.path, cfg.split)
    for key, column in cfg.fields.items():  # before format detection, which would hide the cause
        if column not in table.columns:
            raise InputError(
                f"{table.path}: fields.{key} names column {column!r}, which is not in the data "
                f"(columns: {', '.join(table.columns)})"
            )
    fmt = cfg.format
    if fmt == "auto":
        fmt = detect_format(table.columns, cfg.fields)
        if fmt is None:
            expected = "; ".join(f"{f} ({', '.join(_required_columns(f))})" for f in AUTO_ORDER)
            raise InputError(
                f"{table.path}: cannot tell the data format from its columns ({', '.join(table.columns)}); "
                f"expected the columns of one of: {expected}; set format and fields to say how to read it"
            )
    columns = _resolve_columns(fmt, cfg.fields, table)
    rows = table.rows if cfg.limit is None else table.rows[: cfg.limit]
    grader_name = cfg.grader if cfg.grader != "auto" else _auto_grader(fmt, rows, columns["solution"])
    grader = _get_grader(grader_name)
    reader = _RowReader(fmt, columns, grader, grader_name, table)
    examples = [reader.example(row, i) for i, row in enumerate(rows)]
    rendered = _rendered(examples, cfg.rendered, columns, table)
    if rendered == "paper":
        examples = [_without_paper_template(ex, table.where(i), columns) for i, ex in enumerate(examples)]
    _check_unique_ids(examples, table, columns.get("id"))
    return ExampleSet(table.path, fmt, grader_name, examples, rendered)


def dataset_fingerprint(examples: list[Example]) -> str:
    """sha256 of the canonical examples in id order: equal exactly when the data is equal."""
    digest = hashlib.sha256()
    for ex in sorted(examples, key=lambda e: e.example_id):
        record = [ex.example_id, ex.question, ex.solution, ex.answer, ex.rejected]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


# --- config and columns -------------------------------------------------------------------


def _required(fmt: str) -> tuple[str, ...]:
    return ("question", "solution", "rejected") if fmt == "preference" else ("question", "solution")


def _required_columns(fmt: str) -> list[str]:
    return list(dict.fromkeys(FORMAT_COLUMNS[fmt][name] for name in _required(fmt)))


def _check_config(cfg: DataConfig) -> None:
    if not cfg.path:
        raise InputError("data: no path given (set data.path to a file or dataset directory)")
    if cfg.format != "auto" and cfg.format not in FORMAT_COLUMNS:
        raise InputError(f"data.format: unknown format {cfg.format!r}; known: auto, {', '.join(FORMATS)}")
    if not isinstance(cfg.fields, dict):
        raise InputError(f"data.fields: expected a mapping of field to column, got {cfg.fields!r}")
    for key, column in cfg.fields.items():
        if key not in CANONICAL_FIELDS:
            raise InputError(f"data.fields: unknown field {key!r}; known: {', '.join(CANONICAL_FIELDS)}")
        if not isinstance(column, str) or not column:
            raise InputError(f"data.fields.{key}: expected a column name, got {column!r}")
    if cfg.limit is not None and (isinstance(cfg.limit, bool) or not isinstance(cfg.limit, int) or cfg.limit < 1):
        raise InputError(f"data.limit: expected a positive integer, got {cfg.limit!r}")
    if cfg.rendered not in RENDERED:
        raise InputError(f"data.rendered: expected one of {', '.join(RENDERED)}, got {cfg.rendered!r}")


def _resolve_columns(fmt: str, fields: dict[str, str], table: Table) -> dict[str, str]:
    """Canonical field -> column for this table; errors name the missing column and those present."""
    present = ", ".join(table.columns)
    columns = {**FORMAT_COLUMNS[fmt], **fields}
    for key in _required(fmt):
        if columns[key] not in table.columns:
            raise InputError(
                f"{table.path}: format {fmt} needs column {columns[key]!r} for the {key} (columns: {present}); "
                f"rename with fields.{key}=<column>"
            )
    for key in [k for k in columns if k not in _required(fmt)]:
        if columns[key] not in table.columns:
            del columns[key]  # an optional default column that this dataset does not have
    return columns


def _auto_grader(fmt: str, rows: list[dict], solution_column: str) -> str:
    """math for MATH rows, else gsm8k; canonical rows say which by the mark their solutions carry."""
    if fmt == "canonical":
        solutions = [str(row.get(solution_column) or "") for row in rows]
        if all(last_boxed(s) for s in solutions) and not any("####" in s for s in solutions):
            return "math"
    return "math" if fmt == "math" else "gsm8k"


def _get_grader(name: str) -> Any:
    try:
        return get_grader(name)
    except (InputError, KeyError) as e:
        raise InputError(f"data.grader: {e}") from None


# --- one row ------------------------------------------------------------------------------


@dataclass
class _RowReader:
    """What turning one row into an Example needs, fixed once per dataset."""

    fmt: str
    columns: dict[str, str]
    grader: Any
    grader_name: str
    table: Table

    def example(self, row: dict, i: int) -> Example:
        where, columns = self.table.where(i), self.columns
        example_id = _int_id(row.get(columns["id"]), where, columns["id"]) if "id" in columns else i
        question_value = _text_value(row, columns["question"], where)
        same_column = columns["question"] == columns["solution"]
        question = _question_text(question_value, same_column, columns["question"], where)
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
        if not answer and self.fmt in _FREE_FORM:
            answer = self.grader.extract_flexible(solution)
        if answer:
            return answer
        column_note = f"field '{columns['answer']}' empty and " if "answer" in columns else ""
        if self.fmt in _FREE_FORM:
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


def _question_text(value: str | list, same_column_as_solution: bool, column: str, where: str) -> str:
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


# --- rows that already carry the paper template ---------------------------------------------


def _rendered(examples: list[Example], setting: str, columns: dict[str, str], table: Table) -> str:
    """"paper" when the rows are to be read without the paper template they carry, else "none".

    Every row is looked at: a file whose rows disagree would have the template applied twice
    to some rows, or not at all to others, so it is an error naming the first row that differs.
    """
    if setting == "none":
        return "none"
    kinds = [_template_kind(ex) for ex in examples]
    if setting == "paper":
        for i, kind in enumerate(kinds):
            if kind != "paper":
                raise InputError(f"{table.where(i)}: data.rendered=paper, but {_describe(kind, columns)}")
        return "paper"
    first = kinds[0]
    for i, kind in enumerate(kinds):
        if kind == "partial" or kind != first:
            row_0 = "" if i == 0 else ", while row 0 " + ("carries it" if first == "paper" else "does not")
            raise InputError(
                f"{table.where(i)}: {_describe(kind, columns)}{row_0}; the template would be applied twice to "
                "part of the data; fix the rows, or set data.rendered=none to use every row as it is"
            )
    return first


def _template_kind(ex: Example) -> str:
    """paper (prompt and every response carry the paper template), none (none does) or partial."""
    responses = [ex.solution] + ([] if ex.rejected is None else [ex.rejected])
    marks = [PaperTemplate.prompt_carries(ex.question)] + [PaperTemplate.response_carries(r) for r in responses]
    return "paper" if all(marks) else "none" if not any(marks) else "partial"


def _describe(kind: str, columns: dict[str, str]) -> str:
    prompt = f"field '{columns['question']}' ends with {PaperTemplate.PROMPT_END!r}"
    start, end = PaperTemplate.RESPONSE_START, PaperTemplate.RESPONSE_END
    response = f"field '{columns['solution']}' is {start!r} + text + {end!r}"
    if "rejected" in columns:
        response += f", and so is field '{columns['rejected']}'"
    if kind == "paper":
        return f"carries the paper template ({prompt} and {response})"
    if kind == "none":
        return "does not carry the paper template"
    return f"carries the paper template only in part (it takes both: {prompt}; {response})"


def _without_paper_template(ex: Example, where: str, columns: dict[str, str]) -> Example:
    """The example as it was before PaperTemplate.render. The answer stays: graders read only up
    to "\\nDone." (cut_at_done), so it is the same with the template or without."""
    question = PaperTemplate.strip_prompt(ex.question)
    solution = PaperTemplate.strip_response(ex.solution)
    rejected = None if ex.rejected is None else PaperTemplate.strip_response(ex.rejected)
    for column, text in [(columns["question"], question), (columns["solution"], solution)]:
        if not text.strip():
            raise InputError(f"{where}: field '{column}' is empty once the paper template is taken off")
    return dataclasses.replace(ex, question=question, solution=solution, rejected=rejected)


def _int_id(value: Any, where: str, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise InputError(f"{where}: id {value!r} in field '{column}' is not an integer")


def _check_unique_ids(examples: list[Example], table: Table, id_column: str | None) -> None:
    first_row: dict[int, int] = {}
    for i, ex in enumerate(examples):
        if ex.example_id in first_row:
            j = first_row[ex.example_id]
            lines = f" (lines {table.line_numbers[j]} and {table.line_numbers[i]})" if table.line_numbers else ""
            raise InputError(
                f"{table.path} rows {j} and {i}{lines}: duplicate id {ex.example_id} in field '{id_column}'"
            )
        first_row[ex.example_id] = i
