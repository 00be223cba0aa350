"""A task's results as store rows: its samples, graded, and its score rows.

This runs where the samples are made, in the sampler actor (premem.sampling.actors), not on the driver:
grading a MATH answer through math-verify costs milliseconds (minutes per checkpoint at the paper's scale),
and in the actors it is spread over every actor's CPUs and its own math-verify helpers, each check bounded by
the grader's timeout. The driver only writes the parts. `premem regrade` builds score rows the same way.
"""

from __future__ import annotations

import pandas as pd

SAMPLE_COLUMNS = ["run", "step", "split", "example_id", "sample", "text", "n_tokens", "gold",
                  "answer_strict", "answer_flexible", "correct_strict", "correct_flexible"]


def result_tables(task, completions, targets, grader) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The samples rows (one per sample, texts kept for regrading) and the score rows of a task
    (premem.sampling.actors.Task: its golds and count say what is right and what counts)."""
    c = task.checkpoint
    keys = [(ex_id, j, comp, gold) for ex_id, comps, gold in zip(task.example_ids, completions, task.golds)
            for j, comp in enumerate(comps)]
    grades = grader.grade_many([(comp.text, gold) for _, _, comp, gold in keys])  # all at once: checks run together
    samples = pd.DataFrame(
        [(c.run, c.step, task.split, ex_id, j, comp.text, comp.n_tokens, gold,
          g.strict_answer, g.flexible_answer, g.strict_correct, g.flexible_correct)
         for (ex_id, j, comp, gold), g in zip(keys, grades)],
        columns=SAMPLE_COLUMNS,
    )
    skipped = task.skip.reasons([tl.perplexity for tl in targets]) if task.skip is not None else None
    scores = scores_from_samples(samples, task.count, targets, task.example_ids, skipped, (c.run, c.step))
    perturbation = getattr(task, "perturbation", None)  # the robustness probe's tasks (premem.sampling.perturb)
    return (samples, scores) if perturbation is None else with_perturbation(samples, scores, perturbation)


def with_perturbation(samples: pd.DataFrame, scores: pd.DataFrame, perturbation: str
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A perturbed task's rows as robustness_samples and robustness_scores hold them: keyed by the perturbation
    instead of the split (every one is a training query)."""
    samples = samples.drop(columns="split")
    samples.insert(3, "perturbation", perturbation)
    scores.insert(3, "perturbation", perturbation)
    return samples, scores


def scores_from_samples(samples: pd.DataFrame, count: str, targets=None, example_ids=None, skipped=None,
                        where: tuple[str, int] | None = None) -> pd.DataFrame:
    """Aggregate sample rows into score rows: n_samples, n_correct, n_unparsed (+ perplexity). A pair whose
    `skipped` names a reason (a train task with a SkipRule, at `where` = (run, step)) gets a row with no
    samples and that reason, the others skipped = "" (premem.store)."""
    answer = samples[f"answer_{count}"]
    scores = (
        samples.assign(correct=samples[f"correct_{count}"].astype(int), unparsed=answer.isna().astype(int))
        .groupby(["run", "step", "example_id"], as_index=False, sort=True)
        .agg(n_samples=("sample", "size"), n_correct=("correct", "sum"), n_unparsed=("unparsed", "sum"))
    )
    if skipped is not None:
        ids = [e for e, r in zip(example_ids, skipped) if r]
        none = pd.DataFrame({"run": where[0], "step": where[1], "example_id": ids, "n_samples": 0, "n_correct": 0,
                             "n_unparsed": 0, "skipped": [r for r in skipped if r]})
        scores = pd.concat([scores.assign(skipped=""), none] if len(scores) else [none], ignore_index=True)
        scores = scores.astype({c: "int64" for c in ("step", "example_id", "n_samples", "n_correct", "n_unparsed")})
        scores = scores.sort_values("example_id", ignore_index=True)
    if targets is not None:
        ppl = {e: (tl.perplexity, tl.n_tokens) for e, tl in zip(example_ids, targets)}
        scores["perplexity"] = scores["example_id"].map(lambda e: ppl[e][0])
        scores["n_target_tokens"] = scores["example_id"].map(lambda e: ppl[e][1])
    return scores
