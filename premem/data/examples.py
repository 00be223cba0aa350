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
    messages           messages (a chat; see rows.question_text for which turns are used), optional answer
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

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from premem.data.grading import get_grader, last_boxed
from premem.data.io import Table, read_table
from premem.data.rendered import rendered_kind, without_paper_template
from premem.data.rows import Example, RowReader
from premem.errors import InputError

__all__ = [
    "AUTO_ORDER", "CANONICAL_FIELDS", "FORMATS", "FORMAT_COLUMNS", "DataConfig", "Example", "ExampleSet",
    "dataset_fingerprint", "detect_format", "load_example_set", "load_examples",
]


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
    reader = RowReader(fmt, columns, grader, grader_name, table)
    examples = [reader.example(row, i) for i, row in enumerate(rows)]
    rendered = rendered_kind(examples, cfg.rendered, columns, table)
    if rendered == "paper":
        examples = [without_paper_template(ex, table.where(i), columns) for i, ex in enumerate(examples)]
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
