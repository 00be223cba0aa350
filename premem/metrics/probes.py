"""Learning dynamics from probe_scores: per-type curves and the squeezing verdict (Ren & Sutherland).

`type_curves` gives, for each checkpoint of a run, the mean over probe prompts of the summed
log π(response | prompt) of each response type. `squeezing` compares the first and the last
checkpoint: in off-policy DPO the chosen and the rejected responses both lose probability
while the greedy response y* gains it, the mass squeezed out of everything else into the
model's most likely answer. A run is flagged when greedy rises while chosen and rejected
both fall; the verdict carries the size of each move (nats of summed log-probability).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from premem.data.probes import ALL_TYPES
from premem.errors import InputError


def type_curves(scores: pd.DataFrame, run: str, value: str = "sum_logprob") -> pd.DataFrame:
    """Rows: the run's checkpoint steps; columns: response types (in ALL_TYPES order); cells: mean of value."""
    df = scores[scores["run"] == run]
    if df.empty:
        known = ", ".join(sorted(scores["run"].unique()))
        raise InputError(f"run {run!r}: no probe scores for it (runs: {known or 'none'})")
    table = df.pivot_table(index="step", columns="type", values=value, aggfunc="mean").sort_index()
    order = [t for t in ALL_TYPES if t in table.columns] + sorted(set(table.columns) - set(ALL_TYPES))
    return table[order]


@dataclass(frozen=True)
class Squeezing:
    run: str
    first_step: int
    last_step: int
    deltas: dict[str, float]  # type -> change of the mean summed log-prob, first to last checkpoint
    squeezing: bool | None  # None: cannot tell (one checkpoint, or a type missing)
    reason: str = ""

    def describe(self) -> str:
        """One line: the verdict and the three moves it rests on."""
        if self.squeezing is None:
            return f"{self.run}: squeezing undetermined ({self.reason})"
        moves = ", ".join(f"{t} {self.deltas[t]:+.2f}" for t in ("greedy", "chosen", "rejected"))
        verdict = "yes" if self.squeezing else "no"
        return (f"{self.run}: squeezing {verdict}: {moves} "
                f"(change of the mean summed log-prob, step {self.first_step} -> {self.last_step})")


def squeezing(scores: pd.DataFrame, run: str) -> Squeezing:
    """First-to-last change per type; squeezing when greedy rises while chosen and rejected both fall."""
    curves = type_curves(scores, run)
    first, last = int(curves.index[0]), int(curves.index[-1])
    deltas = {t: float(curves.loc[last, t] - curves.loc[first, t]) for t in curves.columns
              if pd.notna(curves.loc[first, t]) and pd.notna(curves.loc[last, t])}
    if first == last:
        return Squeezing(run, first, last, deltas, None, f"one checkpoint, step {first}")
    missing = [t for t in ("greedy", "chosen", "rejected") if t not in deltas]
    if missing:
        return Squeezing(run, first, last, deltas, None, f"no {missing[0]} scores at both ends")
    flag = deltas["greedy"] > 0 and deltas["chosen"] < 0 and deltas["rejected"] < 0
    return Squeezing(run, first, last, deltas, flag)


def report(scores: pd.DataFrame, runs: list[str] | None = None) -> str:
    """The per-type table and the squeezing verdict of each run, as `premem probe track/show` print them."""
    runs = runs or sorted(scores["run"].unique())
    blocks = []
    for run in runs:
        curves = type_curves(scores, run)
        n = scores.loc[scores["run"] == run, "probe_id"].nunique()
        table = curves.to_string(float_format=lambda v: f"{v:.2f}", na_rep="-")
        blocks.append(f"{run}: mean summed log π(response | prompt) over {n} probe prompts, by checkpoint step\n\n"
                      f"{table}\n\n{squeezing(scores, run).describe()}")
    return "\n\n".join(blocks)
