"""The score store: a directory of Parquet tables, the contract between premem's stages.

`premem score` writes it; `predict`, `curate` and `report` read it; results made elsewhere
(the paper's own runs, for one) can be dropped in. DESIGN.md §3 is the contract:

    runs.parquet          one row per run            run [, train_example_ids, metadata...]
    train_scores.parquet  run x step x train example run, step, example_id, n_samples, n_correct, perplexity
    test_scores.parquet   run x step x test example  run, step, example_id, n_samples, n_correct

Reads validate, and a bad table fails with one line naming the file and the row.
Writes go to a temporary file in the same directory and are renamed into place, so a reader
never sees half a table and a killed writer leaves the old table intact. Appends are
idempotent: a row whose key is already stored is skipped, so a resumed job never duplicates
a row. A file lock serialises writers, so two jobs on one store cannot lose each other's rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from premem.errors import InputError
from premem.files import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSpec:
    key: tuple[str, ...]  # columns that identify a row; unique within the table
    ints: tuple[str, ...] = ()  # required integer columns
    floats: tuple[str, ...] = ()  # required float columns
    counts: bool = False  # has n_samples / n_correct to check against each other


SCORE_KEY = ("run", "step", "example_id")
TABLES: dict[str, TableSpec] = {
    "runs": TableSpec(key=("run",)),
    "train_scores": TableSpec(SCORE_KEY, ints=("step", "example_id", "n_samples", "n_correct"), floats=("perplexity",), counts=True),
    "test_scores": TableSpec(SCORE_KEY, ints=("step", "example_id", "n_samples", "n_correct"), counts=True),
}


class ScoreStore:
    """A score store rooted at a directory. Nothing is written outside it."""

    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise InputError(f"{self.root}: score store directory does not exist")
        self._lock = FileLock(str(self.root / ".lock"))  # made on first write, never on read

    def path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    def has(self, table: str) -> bool:
        return self.path(table).is_file()

    # -- reading ---------------------------------------------------------------------------

    def read(self, table: str) -> pd.DataFrame:
        """Read and validate a table; a missing table is an error naming the file."""
        path = self.path(table)
        if not path.is_file():
            raise InputError(f"{path}: table missing from the score store")
        try:
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
        validate(table, df, str(path))
        return df

    def runs(self) -> pd.DataFrame:
        """The runs table; when absent, one row per run found in train_scores (trained on all examples)."""
        if self.has("runs"):
            return self.read("runs")
        runs = sorted(self.read("train_scores")["run"].unique())
        return pd.DataFrame({"run": runs})

    # -- writing ---------------------------------------------------------------------------

    def write(self, table: str, df: pd.DataFrame) -> None:
        """Replace a table atomically (validated first; nothing is written if it is bad)."""
        validate(table, df, f"{table} (to write)")
        with self._lock:
            self._write_atomic(self.path(table), df)

    def append(self, table: str, df: pd.DataFrame, replace: bool = False) -> int:
        """Add rows; rows whose key is already stored are skipped (or replace the old ones).

        Returns the number of rows added or replaced. Idempotent: appending the same rows
        twice leaves the table as after the first time.
        """
        validate(table, df, f"{table} (to append)")
        key = list(TABLES[table].key) if table in TABLES else None
        with self._lock:
            if not self.has(table):
                self._write_atomic(self.path(table), df)
                return len(df)
            old = self.read(table)
            if key is None:
                raise InputError(f"{table}: append needs a table with a key")
            old_keys = pd.MultiIndex.from_frame(old[key])
            new_keys = pd.MultiIndex.from_frame(df[key])
            seen = new_keys.isin(old_keys)
            if replace:
                merged = pd.concat([old[~old_keys.isin(new_keys)], df], ignore_index=True)
                n = len(df)
            else:
                merged = pd.concat([old, df[~seen]], ignore_index=True)
                n = int((~seen).sum())
            if n:
                self._write_atomic(self.path(table), merged.sort_values(key, kind="stable", ignore_index=True))
            return n

    def _write_atomic(self, path: Path, df: pd.DataFrame) -> None:
        with atomic_path(path) as tmp:  # readers see the old table or the new one
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
        log.debug("wrote %s (%d rows)", path, len(df))


def validate(table: str, df: pd.DataFrame, where: str) -> None:
    """Check a table against the contract; raise InputError naming `where` and the row."""
    spec = TABLES.get(table)
    if spec is None:
        return  # further tables (samples, probes) carry their own checks
    required = list(spec.key) + [c for c in spec.ints + spec.floats if c not in spec.key]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing required column {missing[0]!r} (has: {', '.join(map(str, df.columns))})")
    for col in required:
        bad = df[col].isna().to_numpy()
        if bad.any():
            raise InputError(f"{where} row {int(np.argmax(bad))}: {col} is empty")
    if df["run"].map(type).ne(str).any():
        row = int(np.argmax(df["run"].map(type).ne(str).to_numpy()))
        raise InputError(f"{where} row {row}: run must be a string, got {df['run'].iloc[row]!r}")
    for col in spec.ints:
        values = df[col].to_numpy()
        if not pd.api.types.is_integer_dtype(df[col]):
            as_float = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(f"{where} row {row}: {col} must be an integer, got {values[row]!r}")
        neg = pd.to_numeric(df[col]).to_numpy() < 0
        if neg.any():
            row = int(np.argmax(neg))
            raise InputError(f"{where} row {row}: {col} is negative ({values[row]})")
    for col in spec.floats:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{where} row {row}: {col} must be a positive number, got {df[col].iloc[row]!r}")
    if spec.counts:
        over = df["n_correct"].to_numpy() > df["n_samples"].to_numpy()
        if over.any():
            row = int(np.argmax(over))
            raise InputError(
                f"{where} row {row}: n_correct ({df['n_correct'].iloc[row]}) > n_samples ({df['n_samples'].iloc[row]})"
            )
    dup = df.duplicated(list(spec.key), keep="first").to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        key = ", ".join(f"{c}={df[c].iloc[row]!r}" for c in spec.key)
        raise InputError(f"{where} row {row}: duplicate key ({key})")
    if table == "runs" and "train_example_ids" in df.columns:
        for row, ids in enumerate(df["train_example_ids"]):
            if ids is None or (isinstance(ids, float) and np.isnan(ids)):
                continue
            arr = np.asarray(ids)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise InputError(f"{where} row {row}: train_example_ids must be a list of integers")
