"""Reading the rows of a dataset file into plain dicts.

One entry point, `read_rows(path, split=None)`, for the forms datasets come in:
JSON Lines (`.jsonl`, or `.json` holding either lines or one array of objects), Parquet,
CSV, and a Hugging Face dataset directory written by `save_to_disk`. Values come back as
plain Python objects (str, int, float, list, dict, None), whatever the file type.

`read_table` returns the same rows plus the column names and, for JSONL, each row's line
number, so that later errors can point at the line a user has to fix. Every problem a user
can fix raises InputError naming the file (and line, for JSONL).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from premem.errors import InputError


@dataclass
class Table:
    """The rows of one dataset file, with enough context to report errors well."""

    path: str
    rows: list[dict[str, Any]]
    columns: list[str]
    line_numbers: list[int] | None = None
    """1-based line of each row (JSONL only; None where the file has no lines)."""

    def where(self, row: int) -> str:
        """'data/train.jsonl row 12 (line 14)': the place of a row in error messages."""
        line = f" (line {self.line_numbers[row]})" if self.line_numbers else ""
        return f"{self.path} row {row}{line}"


def read_rows(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL/Parquet/CSV file or Hugging Face dataset directory, as dicts."""
    return read_table(path, split).rows


def read_table(path: str | Path, split: str | None = None) -> Table:
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise InputError(f"{name}: no such file or directory")
    if p.is_dir():
        table = _read_hf_directory(p, name, split)
    else:
        if split is not None:
            # Silently ignoring it could score the wrong data; a file has exactly one split.
            raise InputError(
                f"{name}: split {split!r} given, but splits only exist in a Hugging Face dataset directory"
            )
        suffix = p.suffix.lower()
        if suffix in (".jsonl", ".json"):
            table = _read_json(p, name)
        elif suffix == ".parquet":
            table = _read_parquet(p, name)
        elif suffix == ".csv":
            table = _read_csv(p, name)
        else:
            raise InputError(
                f"{name}: unknown file type {suffix or '(no extension)'!r}; "
                "expected .jsonl, .json, .parquet, .csv or a Hugging Face dataset directory"
            )
    if not table.rows:
        raise InputError(f"{name}: no rows (the file is empty)")
    return table


def _read_json(p: Path, name: str) -> Table:
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark some editors write
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not UTF-8 text (byte {e.start})") from None
    if p.suffix.lower() == ".json" and text.lstrip().startswith("["):
        # A .json file is often one array of objects rather than JSON Lines; accept both.
        rows = parse_json(text, name)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InputError(f"{name} item {i}: expected a JSON object, got {_json_type(row)}")
        return Table(name, rows, _columns_of(rows))

    # JSON Lines is parsed by hand (not pandas) so that a bad line is reported by number.
    rows, line_numbers = [], []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing one) are not rows
        row = parse_json(line, f"{name} line {number}")
        if not isinstance(row, dict):
            raise InputError(f"{name} line {number}: expected a JSON object, got {_json_type(row)}")
        rows.append(row)
        line_numbers.append(number)
    return Table(name, rows, _columns_of(rows), line_numbers)


def split_lines(text: str, keepends: bool = False) -> list[str]:
    """The lines of JSON Lines text: split on "\\n" only, a "\\r" before it dropped unless keepends.

    Not str.splitlines: it also splits at U+2028, U+2029 and U+0085, which JSON strings may
    hold unescaped (json.dumps(ensure_ascii=False) writes them so), cutting one row in two; and
    at \\x0b, \\x0c, \\x1c-\\x1e, which JSON never holds raw (a line with one is then reported
    as invalid JSON, not as two broken halves). A final newline ends the last line.
    """
    lines = text.split("\n")
    last = lines.pop()  # "" after a final newline
    if keepends:
        return [line + "\n" for line in lines] + ([last] if last else [])
    return [line.removesuffix("\r") for line in [*lines, *([last] if last else [])]]


def parse_json(text: str, where: str) -> Any:
    """json.loads, with every failure one InputError starting with `where` (file and line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = f" line {e.lineno}" if "\n" in text.strip() else ""  # a line of JSONL is its own place
        raise InputError(f"{where}{line}: not valid JSON ({e.msg})") from None
    except RecursionError:
        # the parser recurses once per level of [ or {: a deeply nested value would be a traceback
        limit = sys.getrecursionlimit()
        raise InputError(f"{where}: JSON nested too deeply (over about {limit} levels of [ and {{)") from None


def _read_parquet(p: Path, name: str) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{name}: not a readable Parquet file ({e})") from None
    # to_pylist gives plain Python values (lists, dicts, None), unlike pandas' numpy objects.
    return Table(name, arrow.to_pylist(), list(arrow.column_names))


def _read_csv(p: Path, name: str) -> Table:
    import pandas as pd

    try:
        # Everything as text, empty cells as "": a CSV has no types, and "007" or "NA"
        # as an answer must survive unchanged.
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{name}: no rows (the file is empty)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: not a readable CSV file ({e})") from None
    return Table(name, frame.to_dict("records"), [str(c) for c in frame.columns])


def _read_hf_directory(p: Path, name: str, split: str | None) -> Table:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(p))
    except FileNotFoundError:
        raise InputError(f"{name}: a directory, but not a Hugging Face dataset saved with save_to_disk") from None
    except IndexError:  # datasets 5 cannot load a dataset saved with zero rows (no shards)
        raise InputError(f"{name}: no rows (the dataset is empty)") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None:
            if "train" not in loaded:
                raise InputError(f"{name}: no 'train' split; choose one with split= ({', '.join(splits)})")
            split = "train"
        if split not in loaded:
            raise InputError(f"{name}: no split {split!r}; splits: {', '.join(splits)}")
        loaded = loaded[split]
        name = f"{name} [{split}]"
    elif split is not None:
        raise InputError(f"{name}: split {split!r} given, but the directory holds a single Dataset, not a DatasetDict")
    return Table(name, loaded.to_list(), list(loaded.column_names))


def _columns_of(rows: list[dict]) -> list[str]:
    """Union of the keys of all rows, in order of first appearance (JSON rows may differ)."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
