"""The score store: a directory of Parquet tables, the contract between premem's stages.

`premem score` writes it; `predict`, `curate` and `report` read it; results made elsewhere
(the paper's own runs, for one) can be dropped in. DESIGN.md §3 is the contract:

    runs.parquet          one row per run            run [, train_example_ids, metadata...]
    train_scores.parquet  run x step x train example run, step, example_id, n_samples, n_correct, perplexity
    test_scores.parquet   run x step x test example  run, step, example_id, n_samples, n_correct

Further tables, written by `premem score`, keep what regrading and resuming need:

    samples.parquet       run x step x split x example x sample: text, n_tokens, answers, grades
    datasets.parquet      one row per split: the data a store was scored on (fingerprint, ids)

With `premem score perturbations=[...]` (the robustness probe, premem.sampling.perturb), also:

    robustness_scores.parquet   run x step x train example x perturbation: n_samples, n_correct, n_unparsed
    robustness_samples.parquet  the same x sample: text, n_tokens, answers, grades

Each table's columns and checks are in premem.tables.

An unsampled pair (memorization-aware sampling, `premem score sample=exact|final`) keeps its
train_scores row, so that every reader can tell it from a sampled one:

    n_samples = 0, n_correct = 0, n_unparsed = 0    no samples (and no samples rows)
    perplexity, n_target_tokens                      measured, as for every pair
    skipped                                          why: "exact" or "final" (tables.SKIP_REASONS);
                                                     "" (or null) on a sampled row
    runs.sample, runs.sample_tau                     the run's mode and the tau the skips were decided
                                                     at: a skip is exact for every tau >= sample_tau,
                                                     and predict / curate refuse a lower one

Its accuracy is undefined (NaN in premem.metrics); its PreMem_t is 0 when no earlier
unmemorized checkpoint had accuracy > 0 (always so for "exact"), else undefined ("final"
before the last checkpoint). Figures over accuracy say when they cover sampled pairs only.
Test queries are always sampled.

Reads validate, and a bad table fails with one line naming the file and the row.
Writes go to a temporary file in the same directory and are renamed into place, so a reader
never sees half a table and a killed writer leaves the old table intact. Appends are
idempotent: a row whose key is already stored is skipped, so a resumed job never duplicates
a row. A file lock serialises writers, so two jobs on one store cannot lose each other's rows.

Scoring writes in units of work, parts (one checkpoint x split x shard), each its own file:

    parts/<table>/<part>.parquet   e.g. parts/train_scores/run=r1.step=10.split=train.shard=00003.parquet

A part is written whole or not at all, so a killed job loses at most the parts in flight; a
resumed job skips work whose rows are stored (in the main file or in parts).
Reading a table reads the main file and its parts, keeping the first row of each key (the
main file's, then the parts' in name order). `compact` merges the parts into the main file,
then deletes them; a crash in between leaves parts whose rows the main file already holds.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from premem.errors import InputError
from premem.files import atomic_path
from premem.tables import SCORE_KEY, TABLES, TableSpec, example_ids_sha256, validate

__all__ = ["ScoreStore", "TABLES", "TableSpec", "SCORE_KEY", "validate", "example_ids_sha256"]

log = logging.getLogger(__name__)

READ_ATTEMPTS = 20  # reads of a table whose parts another process compacts meanwhile (ScoreStore.read)
PART_NAME = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]{0,199}")  # not starting with "." (temporary files do)


class ScoreStore:
    """A score store rooted at a directory. Nothing is written outside it."""

    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: not a directory (a score store is one)")
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise InputError(f"{self.root}: score store directory does not exist")
        self._lock = FileLock(str(self.root / ".lock"))  # made on first write, never on read

    def path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    def has(self, table: str) -> bool:
        """Whether the table holds anything: its main file, or parts."""
        return self.path(table).is_file() or bool(self.parts(table))

    def part_path(self, table: str, part: str) -> Path:
        if not PART_NAME.fullmatch(part):
            raise InputError(f"part name {part!r}: use letters, digits and . _ = - only (200 at most, no leading '.')")
        if table not in TABLES:
            raise InputError(f"{table}: parts need a table with a key; known: {', '.join(TABLES)}")
        return self.root / "parts" / table / f"{part}.parquet"

    def has_part(self, table: str, part: str) -> bool:
        return self.part_path(table, part).is_file()

    def parts(self, table: str) -> list[str]:
        """Names of the table's parts not yet compacted, sorted."""
        folder = self.root / "parts" / table
        if not folder.is_dir():
            return []
        names = (p.name[: -len(".parquet")] for p in folder.iterdir() if p.name.endswith(".parquet"))
        return sorted(n for n in names if PART_NAME.fullmatch(n))

    # -- reading ---------------------------------------------------------------------------

    def read(self, table: str) -> pd.DataFrame:
        """Read and validate a table, parts included; a missing table is an error naming the file.

        Another process may compact the table meanwhile (premem watch writing while a report or a trainer
        callback reads): a part that vanishes between listing and reading has had its rows merged into the main
        file first, so the table is listed and read again."""
        path = self.path(table)
        for attempt in range(READ_ATTEMPTS):
            files = ([path] if path.is_file() else []) + [self.part_path(table, p) for p in self.parts(table)]
            if not files:
                raise InputError(f"{path}: table missing from the score store")
            try:
                frames = [_read_file(table, f) for f in files]
            except FileNotFoundError as gone:
                if attempt + 1 == READ_ATTEMPTS:
                    raise InputError(f"{gone.filename}: vanished while read, {READ_ATTEMPTS} times in a row "
                                     "(is something deleting the store?)") from None
                continue
            return frames[0] if len(frames) == 1 else _first_per_key(table, frames)

    def runs(self) -> pd.DataFrame:
        """The runs table; when absent, one row per run found in train_scores (trained on all examples)."""
        if self.has("runs"):
            return self.read("runs")
        runs = sorted(self.read("train_scores")["run"].unique())
        return pd.DataFrame({"run": runs})

    # -- writing ---------------------------------------------------------------------------

    def write(self, table: str, df: pd.DataFrame) -> None:
        """Replace a table atomically, parts included (validated first; nothing is written if it is bad)."""
        validate(table, df, f"{table} (to write)")
        with self._lock:
            self._write_atomic(self.path(table), df)
            for part in self.parts(table):
                self.part_path(table, part).unlink(missing_ok=True)

    def append(self, table: str, df: pd.DataFrame, replace: bool = False) -> int:
        """Add rows; rows whose key is already stored are skipped (or replace the old ones).

        Returns the number of rows added or replaced. Idempotent: appending the same rows
        twice leaves the table as after the first time.
        """
        validate(table, df, f"{table} (to append)")
        with self._lock:
            return self._append(table, df, replace)

    def _append(self, table: str, df: pd.DataFrame, replace: bool = False) -> int:
        if not self.has(table):
            self._write_atomic(self.path(table), df)
            return len(df)
        if table not in TABLES:
            raise InputError(f"{table}: append needs a table with a key")
        key = list(TABLES[table].key)
        old = self.read(table)
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

    def write_part(self, table: str, part: str, df: pd.DataFrame) -> None:
        """Write one unit of work's rows (validated) as a part; writing a part again replaces it."""
        path = self.part_path(table, part)
        validate(table, df, f"{table} part {part} (to write)")
        with self._lock:  # never while compact is between reading this part and deleting it
            self._write_atomic(path, df)

    def compact(self, table: str) -> int:
        """Merge the table's parts into its main file, then delete them; returns the rows added.

        A crash after the merge leaves parts whose rows the main file holds: reads stay right,
        and compacting again only deletes them.
        """
        with self._lock:
            parts = self.parts(table)
            if not parts:
                return 0
            path = self.path(table)
            main = [_read_file(table, path)] if path.is_file() else []
            merged = _first_per_key(table, main + [_read_file(table, self.part_path(table, p)) for p in parts])
            added = len(merged) - sum(len(m) for m in main)
            if added or not main:
                key = list(TABLES[table].key)
                self._write_atomic(path, merged.sort_values(key, kind="stable", ignore_index=True))
            for part in parts:
                self.part_path(table, part).unlink(missing_ok=True)
            log.debug("compacted %d parts of %s (%d rows added)", len(parts), table, added)
            return added

    def check_dataset(self, split: str, dataset, **info) -> None:
        """Record the data a split is scored on the first time; refuse changed data after that.

        `dataset` is a fingerprint (with the other datasets columns as keywords: path,
        n_examples, example_ids_sha256, format, grader) or an object carrying them (an
        ExampleSet: path, format, grader, examples, fingerprint).
        """
        if isinstance(dataset, str):
            row = {"fingerprint": dataset, **info}
        else:
            ids = [ex.example_id for ex in dataset.examples]
            row = {"fingerprint": dataset.fingerprint, "path": str(dataset.path), "n_examples": len(ids),
                   "example_ids_sha256": example_ids_sha256(ids), "format": dataset.format, "grader": dataset.grader, **info}
        defaults = {"path": "", "n_examples": 0, "example_ids_sha256": "", "format": "", "grader": ""}
        df = pd.DataFrame([{"split": split, **defaults, **row}])
        validate("datasets", df, "datasets (to write)")
        if self._same_dataset(split, row["fingerprint"]):  # checked before locking: a refused job writes nothing
            return
        with self._lock:
            if not self._same_dataset(split, row["fingerprint"]):
                self._append("datasets", df)

    def _same_dataset(self, split: str, fingerprint: str) -> bool:
        """True if the split is recorded with this fingerprint, False if not recorded; raises if it differs."""
        known = self.read("datasets").set_index("split")["fingerprint"] if self.has("datasets") else {}
        if split not in known:
            return False
        if known[split] != fingerprint:
            raise InputError(
                f"{self.path('datasets')}: the {split} data changed since this store was started "
                f"(fingerprint {known[split][:12]}… ≠ {fingerprint[:12]}…); score into a new store"
            )
        return True

    def _write_atomic(self, path: Path, df: pd.DataFrame) -> None:
        with atomic_path(path) as tmp:  # readers see the old table or the new one
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
        log.debug("wrote %s (%d rows)", path, len(df))


def _read_file(table: str, path: Path) -> pd.DataFrame:
    try:
        df = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        if not path.exists():  # compacted (or deleted) since it was listed: the caller decides
            raise FileNotFoundError(2, "no such file", str(path)) from None
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    validate(table, df, str(path))
    return df


def _first_per_key(table: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate validated frames, keeping the first row of each key."""
    nonempty = [f for f in frames if len(f)] or frames[:1]
    df = pd.concat(nonempty, ignore_index=True)
    return df.drop_duplicates(list(TABLES[table].key), keep="first", ignore_index=True)
