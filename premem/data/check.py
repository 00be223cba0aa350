"""`premem data check` as a function: load a dataset, grade its gold traces against their own answers,
optionally write the canonical examples.

    from premem.data import DataConfig
    from premem.data.check import check_data
    result = check_data(DataConfig(path="train.jsonl"), out="canonical.jsonl")
    print(result)              # the report as the command prints it
    result.to_dict()           # ... as `premem data check --json` prints it
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from premem.data.examples import DataConfig, ExampleSet, load_example_set
from premem.data.grading import get_grader, grade_gold_against_solutions
from premem.errors import InputError
from premem.files import atomic_path, check_output

SHOWN = 20  # disagreements listed in the text report (the dict lists all)


@dataclass
class DataCheck:
    """What `data check` found: the dataset as loaded, and how its gold traces grade against its answers."""

    data: ExampleSet
    n_agree: int
    n_graded: int
    misses: list  # premem.data.grading.Disagreement, one per gold trace that disagrees with its answer
    out: str | None = None
    """Where the canonical examples were written, if anywhere."""

    @property
    def agreement(self) -> float:
        return self.n_agree / max(self.n_graded, 1)

    def to_dict(self) -> dict:
        d = self.data
        return {
            "path": d.path,
            "format": d.format,
            "grader": d.grader,
            "rendered": d.rendered,  # "paper": the rows carried the paper template and were read without it
            "n_examples": len(d.examples),
            "fingerprint": d.fingerprint,
            "gold_self_agreement": self.agreement,
            "disagreements": [{"example_id": m.row_id, "answer": m.gold, "strict": m.strict_answer,
                               "flexible": m.flexible_answer} for m in self.misses],
        }

    def __str__(self) -> str:
        d = self.data
        lines = [f"{d.path}: {len(d.examples)} examples, format {d.format}, grader {d.grader}"]
        if d.rendered == "paper":
            lines.append("rows already carry the paper template (prompt + '\\nAnswer:', ' ' + completion + '\\nDone.'): "
                         "read without it, so training and scoring use them as they are, not templated twice")
        else:
            lines.append("rows are plain text: training and scoring apply the template (paper or chat) to them")
        lines.append(f"fingerprint {d.fingerprint}")
        lines.append(f"gold traces graded against their own final answers: {self.n_agree}/{self.n_graded} agree "
                     f"({100 * self.agreement:.2f}%, strict and flexible extraction)")
        lines += [f"  disagrees: example {m.row_id}: answer {m.gold!r}, trace says {m.strict_answer!r} / "
                  f"{m.flexible_answer!r}" for m in self.misses[:SHOWN]]
        if len(self.misses) > SHOWN:
            lines.append(f"  ... and {len(self.misses) - SHOWN} more (--json lists all)")
        if self.out:
            lines.append(f"canonical examples written to {self.out}")
        return "\n".join(lines)


def check_out(out: str | Path, cfg: DataConfig, also_reads=(), what: str = "--out") -> Path:
    """Refuse an output for the canonical examples that is no .jsonl file or would clobber an input."""
    if Path(out).suffix != ".jsonl":
        raise InputError(f"{what} {out}: canonical examples are written as .jsonl")
    return check_output(out, [cfg.path, *also_reads], what=what)


def check_data(cfg: DataConfig, out: str | Path | None = None) -> DataCheck:
    """Load cfg's dataset (every row checked), grade each gold trace against its own final answer, and
    write the canonical examples to out (.jsonl) when given; nothing is written unless all of it loads."""
    if not cfg.path:
        raise InputError("data check: say which data to read (--data PATH, or path: in --config)")
    if out:
        check_out(out, cfg)
    data = load_example_set(cfg)
    rows = [{"id": ex.example_id, "answer": ex.answer, "solution": ex.solution} for ex in data.examples]
    n_agree, n_graded, misses = grade_gold_against_solutions(rows, get_grader(data.grader), "answer", "solution")
    if out:
        with atomic_path(out) as tmp, open(tmp, "w") as f:
            for ex in data.examples:
                f.write(json.dumps(dataclasses.asdict(ex), ensure_ascii=False) + "\n")
    return DataCheck(data, n_agree, n_graded, misses, str(out) if out else None)
