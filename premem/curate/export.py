"""Writing a curated subset in the input's own format, next to a TRL prompt/completion copy.

    JSONL (.jsonl, or .json holding lines)  the selected lines, byte for byte
    JSON array (.json)                      an array of the selected objects, field for field
    Parquet                                 the selected rows, same schema
    CSV                                     the selected rows, every field as the text it was
    Hugging Face dataset directory          save_to_disk of the selected rows (a DatasetDict
                                            keeps only the split curated)

The output directory is built beside OUT under a temporary name and renamed into place at
the end, so an error leaves nothing half-written; `check_out` refuses, before any work, to
replace a directory that is not an earlier curate output (unless overwrite), and whatever
files.check_output refuses (an input, a directory holding an input or the working directory).
"""

from __future__ import annotations

import json
from pathlib import Path

from premem.data import DataConfig, Example, get_template
from premem.data.io import split_lines
from premem.errors import InputError
from premem.files import check_output, sha256_file

MANIFEST = "manifest.json"
KIND = "premem-curate"


def source_kind(path: str | Path) -> str:
    """hf, jsonl, json_array, parquet or csv: how the file at path is laid out (as premem.data.io reads it)."""
    p = Path(path)
    if p.is_dir():
        return "hf"
    suffix = p.suffix.lower()
    if suffix == ".json" and p.read_text(encoding="utf-8-sig").lstrip().startswith("["):
        return "json_array"
    return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}[suffix]


def subset_name(path: str | Path) -> str:
    """The subset's name in OUT: the input's own name (a directory's name for a dataset directory)."""
    name = Path(path).resolve().name
    return "subset.json" if name == MANIFEST else name


def prompt_completion_name(path: str | Path) -> str:
    p = Path(path).resolve()
    stem = p.name if p.is_dir() else p.stem
    return f"{stem}.prompt_completion.jsonl"


def write_subset_like(cfg: DataConfig, positions: list[int], dest: Path) -> None:
    """Rows `positions` (0-based rows of cfg.path, repeats allowed) in the input's format at dest."""
    kind = source_kind(cfg.path)
    src = Path(cfg.path)
    if kind == "jsonl":
        # a row per non-blank line, as premem.data.io splits it; bytes, so that line ends stay as they were
        text = src.read_bytes().decode("utf-8-sig")
        lines = [line for line in split_lines(text, keepends=True) if line.strip()]
        with open(dest, "wb") as f:
            for p in positions:
                line = lines[p]
                f.write((line if line.endswith(("\n", "\r")) else line + "\n").encode("utf-8"))
    elif kind == "json_array":
        rows = json.loads(src.read_text(encoding="utf-8-sig"))
        dest.write_text(json.dumps([rows[p] for p in positions], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(src).take(pa.array(positions, type=pa.int64())), dest)
    elif kind == "csv":
        import pandas as pd

        frame = pd.read_csv(src, dtype=str, keep_default_na=False)  # as premem.data.io reads it
        frame.iloc[positions].to_csv(dest, index=False)
    else:
        _write_hf(src, cfg.split, positions, dest)


def _write_hf(src: Path, split: str | None, positions: list[int], dest: Path) -> None:
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_from_disk(str(src))
        if isinstance(loaded, datasets.DatasetDict):
            split = split or "train"
            out = datasets.DatasetDict({split: loaded[split].select(positions)})
        else:
            out = loaded.select(positions)
        out.save_to_disk(str(dest))
    finally:
        if was_on:
            datasets.enable_progress_bars()


def write_prompt_completion(examples: list[Example], dest: Path, template: str = "paper") -> None:
    """TRL prompt/completion rows (plus example_id) rendered by premem's template, one JSON object a line."""
    tpl = get_template(template)
    with open(dest, "w", encoding="utf-8") as f:
        for ex in examples:
            r = tpl.render(ex)
            f.write(json.dumps({"prompt": r.prompt, "completion": r.target, "example_id": ex.example_id},
                               ensure_ascii=False) + "\n")


def sha256_tree(path: str | Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a directory, keyed by name (relative to the directory)."""
    p = Path(path)
    if p.is_file():
        return {p.name: sha256_file(p)}
    return {str(f.relative_to(p)): sha256_file(f) for f in sorted(p.rglob("*")) if f.is_file()}


def is_curate_output(out: Path) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == KIND


def check_out(out: str | Path, overwrite: bool, inputs: list[str | Path]) -> Path:
    """Refuse an OUT that cannot be (re)written: files.check_output's rules for a directory the job
    replaces (not a file, not an input, holding no input nor the working directory), and a non-empty
    directory that is not an earlier curate output unless overwrite."""
    out = check_output(out, inputs, kind="dir", what="out", replaces=True)
    if out.is_dir() and any(out.iterdir()) and not is_curate_output(out) and not overwrite:
        raise InputError(
            f"out {out}: not empty and not an earlier premem curate output (no {MANIFEST} of one); "
            "choose a new directory or pass --overwrite"
        )
    return out
