"""Re-apply a grader to stored samples without sampling again.

`premem score` keeps every sample's text and its gold answer in the `samples` table, so
a fixed or changed grader (or counting flexible instead of strict extraction) is a pass
over stored text: the samples are re-graded and n_correct / n_unparsed of the score
tables recomputed. Perplexities are untouched; no model is loaded.
"""

from __future__ import annotations

import logging

import pandas as pd

from premem.data import get_grader
from premem.errors import InputError
from premem.sampling.results import scores_from_samples
from premem.store import ScoreStore

log = logging.getLogger(__name__)


def regrade(store: ScoreStore, grader: str | None = None, count: str = "strict") -> dict[str, int]:
    """Re-grade every stored sample; returns the number of samples whose strict grade changed, per split."""
    if count not in ("strict", "flexible"):
        raise InputError(f"count: expected strict or flexible, got {count!r}")
    if not store.has("samples"):  # has() counts parts too
        raise InputError(f"{store.root}: no samples table; only stores written by `premem score` can be regraded")
    samples = store.read("samples")
    graders = {}
    datasets = store.read("datasets").set_index("split") if store.has("datasets") else None
    changed = {}
    out = []
    for split, part in samples.groupby("split", sort=True):
        name = grader or (datasets.loc[split, "grader"] if datasets is not None and split in datasets.index else None)
        if name is None:
            raise InputError(f"{store.root}: no grader recorded for the {split} split; pass --grader")
        g = graders.setdefault(name, get_grader(name))
        grades = g.grade_many(list(zip(part["text"], part["gold"])))
        new = part.assign(
            answer_strict=[x.strict_answer for x in grades],
            answer_flexible=[x.flexible_answer for x in grades],
            correct_strict=[x.strict_correct for x in grades],
            correct_flexible=[x.flexible_correct for x in grades],
        )
        changed[split] = int((new["correct_strict"] != part["correct_strict"]).sum())
        out.append(new)
        table = f"{split}_scores"
        scores = scores_from_samples(new, count)
        old = store.read(table)
        keep = [c for c in old.columns if c not in ("n_samples", "n_correct", "n_unparsed")]
        merged = old[keep].merge(scores, on=["run", "step", "example_id"], how="left", validate="one_to_one")
        # a pair memorization-aware sampling skipped has no samples, on purpose (premem.store): it stays so
        if "skipped" in merged.columns:
            merged.loc[merged["skipped"].fillna("").ne(""), ["n_samples", "n_correct", "n_unparsed"]] = 0
        missing = merged["n_samples"].isna()
        if missing.any():
            row = merged[missing].iloc[0]
            raise InputError(f"{store.path(table)}: no samples for run {row['run']!r} step {row['step']} example {row['example_id']}")
        store.write(table, merged.astype({"n_samples": int, "n_correct": int, "n_unparsed": int})[old.columns])
    store.write("samples", pd.concat(out, ignore_index=True))
    log.info("regraded %d samples; strict grades changed: %s", len(samples), changed)
    return changed
