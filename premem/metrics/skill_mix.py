"""What each curation strategy collected, and what it taught, skill by skill.

The data-efficiency ratio says whether curated data is worth more than i.i.d. data; this says why.
A benchmark's skill of a problem is its family (skills benchmark) or its sequence of operations
(arith; premem.data.tasks.skill_of). From the curation loops' records and each round's own data and
score store:

    mix       per (seed, strategy, round): the share of each skill among the examples the round added
    accuracy  per (seed, strategy, round): test accuracy per skill at the end of the round's run

so one sees whether premem_low moves the data towards the skills the model fails, and whether the
test accuracy of those skills rises more than i.i.d. data raises it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from premem.data.io import read_rows
from premem.metrics.curves import IID_LOOP, read_records
from premem.store import ScoreStore

SkillOf = Callable[[str, str], str]  # (question, answer) -> skill


def skill_tables(out_dir: str | Path, skill_of: SkillOf) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mix, accuracy) for every loop under out_dir; test problems are out_dir/data/test.jsonl."""
    out_dir = Path(out_dir)
    test = read_rows(out_dir / "data" / "test.jsonl")
    test_skill = pd.Series([skill_of(r["question"], r["answer"]) for r in test], name="skill")
    records = read_records(out_dir)
    records = records[(records["loop"] != IID_LOOP) | (records["round"] > 0)]
    mix, acc = [], []
    for r in records.drop_duplicates(["seed", "loop", "round"]).itertuples():
        iid_only = r.loop == IID_LOOP  # its rounds are i.i.d. scaling's sizes beyond the rounds: round -1, as in curves
        key = {"seed": r.seed, "strategy": "random" if iid_only else r.loop, "round": -1 if iid_only else r.round,
               "examples": r.examples}
        if r.round > 0:  # the examples this round added: the last `added` rows of its data
            rows = read_rows(Path(r.store_dir).parent / "data.jsonl")[r.examples - r.added: r.examples]
            shares = pd.Series([skill_of(x["question"], x["answer"]) for x in rows]).value_counts(normalize=True)
            mix += [{**key, "skill": s, "share": float(v)} for s, v in shares.items()]
        scores = ScoreStore(r.store_dir).read("test_scores")
        scores = scores[scores["step"] == scores["step"].max()]
        per = (scores.assign(skill=test_skill.reindex(scores["example_id"].to_numpy()).to_numpy())
               .groupby("skill")[["n_correct", "n_samples"]].sum())
        acc += [{**key, "skill": s, "test_acc": float(v.n_correct / v.n_samples)} for s, v in per.iterrows()]
    return pd.DataFrame(mix), pd.DataFrame(acc)


def summary_tables(mix: pd.DataFrame, acc: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean over seeds: each strategy's share of added examples per skill (all rounds), and its test accuracy
    per skill at each size, as strategy x skill tables."""
    share = (mix.groupby(["seed", "strategy", "skill"])["share"].mean().groupby(["strategy", "skill"]).mean()
             .unstack("skill").fillna(0.0))
    accuracy = acc.groupby(["strategy", "examples", "skill"])["test_acc"].mean().unstack("skill")
    return share, accuracy
