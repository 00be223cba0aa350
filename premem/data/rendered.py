"""Rows that already carry the paper template (prompt ending "\\nAnswer:", response " ...\\nDone.").

premem curate's `*.prompt_completion.jsonl` files are written that way; such rows are read
without the template, so that training and scoring render them exactly once, byte for byte
as they were. DataConfig.rendered says how to read them; a file mixing rendered and plain rows
is refused naming the first row that differs.
"""

from __future__ import annotations

import dataclasses

from premem.data.io import Table
from premem.data.rows import Example
from premem.data.templates import PaperTemplate
from premem.errors import InputError


def rendered_kind(examples: list[Example], setting: str, columns: dict[str, str], table: Table) -> str:
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


def without_paper_template(ex: Example, where: str, columns: dict[str, str]) -> Example:
    """The example as it was before PaperTemplate.render. The answer stays: graders read only up
    to "\\nDone." (cut_at_done), so it is the same with the template or without."""
    question = PaperTemplate.strip_prompt(ex.question)
    solution = PaperTemplate.strip_response(ex.solution)
    rejected = None if ex.rejected is None else PaperTemplate.strip_response(ex.rejected)
    for column, text in [(columns["question"], question), (columns["solution"], solution)]:
        if not text.strip():
            raise InputError(f"{where}: field '{column}' is empty once the paper template is taken off")
    return dataclasses.replace(ex, question=question, solution=solution, rejected=rejected)
