"""The learning-dynamics experiment's analyses, over the probe scores of several seeds.

premem.metrics.probes reads one store's probe_scores (curves, moves, the squeezing verdict, the
comparison of two runs); this module lays those out across the seeds of `premem experiment probes`:

    moves_table        per seed, run, type and span: the move of summed log π(y|x) (moves.csv)
    sft_moves          the SFT runs' moves, mean over seeds (one column per run and span)
    verdicts           per seed and run: the squeezing verdict and its three moves
    extend_comparison  per seed and DPO start: chosen's move under DPO in each arm, paired by prompt
    tables_text        every run's per-checkpoint table, as `premem probe show` prints it (tables.txt)

Each takes the seeds' `SeedScores` (the recipe's per-seed results are ones), so the recipe, the
report and a notebook compute the same numbers from the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from premem.data.probes import ALL_TYPES
from premem.metrics.probes import VERDICT_TYPES, compare, moves, report, squeezing


@dataclass(frozen=True, eq=False)
class SeedScores:
    """One seed's probe scores and its runs."""

    seed: int
    runs: list[str]  # in the order they were trained: sft, extend-sft, then dpo-e<k>, extend-dpo-e<k> per start
    scores: pd.DataFrame  # the seed's store's probe_scores


def moves_table(results: list[SeedScores]) -> pd.DataFrame:
    """One row per seed, run, type and span: the move's mean, s.e., prompts up and prompts scored.
    span "all" is first to last checkpoint; SFT runs also get "trained", from their first checkpoint after
    step 0 on (the first epoch also teaches the base model the traces' format, which lifts every response)."""
    rows = []
    for r in results:
        for run in r.runs:
            steps = sorted(set(r.scores.loc[r.scores["run"] == run, "step"]))
            spans = {"all": None} | ({"trained": steps[1]} if run.endswith("sft") and len(steps) > 2 else {})
            for span, first in spans.items():
                for t, m in moves(r.scores, run, first=first).items():
                    rows.append({"seed": r.seed, "run": run, "span": span, "first_step": first or steps[0],
                                 "last_step": steps[-1], "type": t, "mean": m.mean, "sem": m.sem, "up": m.up, "n": m.n})
    return pd.DataFrame(rows)


def sft_moves(moves: pd.DataFrame) -> pd.DataFrame:
    """The SFT runs' moves (moves_table's rows), mean over seeds: rows types (in table order),
    columns "<run> <span> (step a → b)"."""
    sft = moves[moves["run"].str.endswith("sft")]
    if sft.empty:
        return pd.DataFrame()
    sft = sft.assign(column=[f"{r} {s} (step {a} → {b})" for r, s, a, b in
                             zip(sft["run"], sft["span"], sft["first_step"], sft["last_step"])])
    table = sft.pivot_table(index="type", columns="column", values="mean", aggfunc="mean", sort=False)
    return table.loc[[t for t in ALL_TYPES if t in table.index]].rename_axis(columns=None)


def tables_text(results: list[SeedScores]) -> str:
    """Every seed's per-checkpoint tables and verdicts, as `premem probe show` prints one store."""
    return "\n\n".join(f"== seed {r.seed} ==\n\n{report(r.scores, r.runs)}" for r in results) + "\n"


def extend_comparison(results: list[SeedScores], dpo_from: list[int]) -> pd.DataFrame:
    """Per seed and DPO start: chosen's move under DPO in each arm, and extend's minus plain's, paired by prompt
    (positive: chosen falls less after the extend recipe's SFT)."""
    rows = []
    for r in results:
        for k in dpo_from:
            plain, ext = f"dpo-e{k}", f"extend-dpo-e{k}"
            d = compare(r.scores, ext, plain, "chosen")
            rows.append({"seed": r.seed, "from_epoch": k, "dpo_chosen": moves(r.scores, plain)["chosen"].mean,
                         "extend_chosen": moves(r.scores, ext)["chosen"].mean, "difference": d.mean, "sem": d.sem,
                         "prompts_less_fall": d.up, "n": d.n})
    return pd.DataFrame(rows)


def verdicts(results: list[SeedScores]) -> pd.DataFrame:
    """Per seed and run: the squeezing verdict and its three moves."""
    rows = []
    for r in results:
        for run in r.runs:
            v = squeezing(r.scores, run)
            rows.append({"seed": r.seed, "run": run, "squeezing": {True: "yes", False: "no", None: "?"}[v.squeezing],
                         **{t: v.moves[t].describe() if t in v.moves else "-" for t in VERDICT_TYPES}})
    return pd.DataFrame(rows)
