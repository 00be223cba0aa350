"""Learning dynamics from probe_scores: per-type curves, the squeezing verdict (Ren & Sutherland), and
the comparison of two runs' moves.

`type_curves` gives, for each checkpoint of a run, the mean over probe prompts of the summed
log π(response | prompt) of each response type. `moves` gives each type's change from the run's
first to its last checkpoint per probe prompt, summarised as mean ± standard error over prompts.

`squeezing` reads the verdict off those moves: in off-policy DPO the chosen and the rejected
responses both lose probability while the greedy response y* gains it, the mass squeezed out of
everything else into the model's most likely answer. A run is flagged when greedy rises while
chosen and rejected both fall, each move at least `SIGNIFICANT` standard errors from zero: with
a few dozen probe prompts a mean move of a fraction of a nat is often noise, and a verdict that
flips with the probe draw helps no one.

`compare` pairs two runs of the same probe set prompt by prompt: the difference of one type's
move (e.g. how much less chosen falls under DPO after the extend recipe's SFT than after plain SFT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from premem.data.probes import ALL_TYPES
from premem.errors import InputError

SIGNIFICANT = 2.0
"""A move counts (for the squeezing flag) when its mean is at least this many standard errors from zero."""
VERDICT_TYPES = ("greedy", "chosen", "rejected")


def type_curves(scores: pd.DataFrame, run: str, value: str = "sum_logprob") -> pd.DataFrame:
    """Rows: the run's checkpoint steps; columns: response types (in ALL_TYPES order); cells: mean of value."""
    df = run_rows(scores, run)
    table = df.pivot_table(index="step", columns="type", values=value, aggfunc="mean").sort_index()
    order = [t for t in ALL_TYPES if t in table.columns] + sorted(set(table.columns) - set(ALL_TYPES))
    return table[order]


def run_rows(scores: pd.DataFrame, run: str) -> pd.DataFrame:
    df = scores[scores["run"] == run]
    if df.empty:
        known = ", ".join(sorted(scores["run"].unique()))
        raise InputError(f"run {run!r}: no probe scores for it (runs: {known or 'none'})")
    return df


@dataclass(frozen=True)
class Move:
    """One type's change of summed log-prob from a run's first to its last checkpoint, over probe prompts."""

    mean: float
    sem: float  # standard error of the mean (nan with one prompt)
    n: int  # probe prompts scored at both ends
    up: int  # of which the change is positive

    @property
    def z(self) -> float:
        """mean / sem: how many standard errors the mean move is from zero (±inf when every prompt moved alike)."""
        if self.sem > 0:
            return self.mean / self.sem
        return math.copysign(math.inf, self.mean) if self.mean else 0.0

    def describe(self) -> str:
        sem = "" if math.isnan(self.sem) else f" ± {self.sem:.2f}"
        return f"{self.mean:+.2f}{sem} ({self.up}/{self.n} up)"


def per_probe_moves(scores: pd.DataFrame, run: str, value: str = "sum_logprob",
                    first: int | None = None) -> pd.DataFrame:
    """Rows: probe ids; columns: types; cells: value at the run's last checkpoint minus at its first
    (or at step `first`)."""
    df = run_rows(scores, run)
    last = df["step"].max()
    first = df["step"].min() if first is None else first
    steps = sorted(set(df["step"]))
    if first not in steps:
        raise InputError(f"run {run!r}: no checkpoint at step {first} (steps: {', '.join(map(str, steps))})")
    wide = df[df["step"].isin([first, last])].pivot_table(index="probe_id", columns=["step", "type"], values=value)
    if first == last:
        return wide[first] * 0.0
    return (wide[last] - wide[first]).dropna(how="all")


def summarise(changes: pd.Series) -> Move:
    c = changes.dropna()
    sem = float(c.std(ddof=1) / math.sqrt(len(c))) if len(c) > 1 else math.nan
    return Move(float(c.mean()), sem, len(c), int((c > 0).sum()))


def moves(scores: pd.DataFrame, run: str, first: int | None = None) -> dict[str, Move]:
    """Each type's move from the run's first checkpoint (or step `first`) to its last, as mean ± sem over
    the probe prompts scored at both ends."""
    changes = per_probe_moves(scores, run, first=first)
    return {t: summarise(changes[t]) for t in changes.columns if changes[t].notna().any()}


@dataclass(frozen=True)
class Squeezing:
    run: str
    first_step: int
    last_step: int
    moves: dict[str, Move]
    squeezing: bool | None  # None: cannot tell (one checkpoint, or a type missing)
    reason: str = ""

    @property
    def deltas(self) -> dict[str, float]:
        """type -> change of the mean summed log-prob, first to last checkpoint."""
        return {t: m.mean for t, m in self.moves.items()}

    def describe(self) -> str:
        """One line: the verdict and the three moves it rests on."""
        if self.squeezing is None:
            return f"{self.run}: squeezing undetermined ({self.reason})"
        moves = ", ".join(f"{t} {self.moves[t].describe()}" for t in VERDICT_TYPES)
        verdict = "yes" if self.squeezing else "no"
        return (f"{self.run}: squeezing {verdict}: {moves} "
                f"(change of summed log-prob, mean ± s.e. over prompts, step {self.first_step} -> {self.last_step})")


def squeezing(scores: pd.DataFrame, run: str) -> Squeezing:
    """Squeezing when greedy rises while chosen and rejected both fall, each by SIGNIFICANT standard errors."""
    steps = run_rows(scores, run)["step"]
    first, last = int(steps.min()), int(steps.max())
    if first == last:
        return Squeezing(run, first, last, {}, None, f"one checkpoint, step {first}")
    m = moves(scores, run)
    missing = [t for t in VERDICT_TYPES if t not in m]
    if missing:
        return Squeezing(run, first, last, m, None, f"no {missing[0]} scores at both ends")
    flag = m["greedy"].z >= SIGNIFICANT and m["chosen"].z <= -SIGNIFICANT and m["rejected"].z <= -SIGNIFICANT
    return Squeezing(run, first, last, m, flag)


def compare(scores: pd.DataFrame, run: str, against: str, type: str = "chosen") -> Move:
    """How much more `type` moved over `run` than over `against`, prompt by prompt: mean ± sem of
    (move in run − move in against) over the probe prompts both runs scored. Both runs must have
    been tracked with the same probe set (one store holds one)."""
    a, b = per_probe_moves(scores, run), per_probe_moves(scores, against)
    if type not in a.columns or type not in b.columns:
        raise InputError(f"compare: no {type} scores in both {run!r} and {against!r}")
    return summarise((a[type] - b[type]).dropna())


def report(scores: pd.DataFrame, runs: list[str] | None = None) -> str:
    """The per-type table and the squeezing verdict of each run, as `premem probe track/show` print them."""
    runs = runs or sorted(scores["run"].unique())
    blocks = []
    for run in runs:
        curves = type_curves(scores, run)
        n = scores.loc[scores["run"] == run, "probe_id"].nunique()
        table = curves.rename(columns=SHORT).to_string(float_format=lambda v: f"{v:.1f}", na_rep="-")
        blocks.append(f"{run}: mean summed log π(response | prompt) over {n} probe prompts, by checkpoint step\n\n"
                      f"{table}\n\n{squeezing(scores, run).describe()}")
    present = set(scores["type"])
    legend = ", ".join(f"{short} = {t}" for t, short in SHORT.items() if short != t and t in present)
    return "\n\n".join(blocks) + (f"\n\ncolumns: {legend}" if legend else "")


SHORT = {
    "chosen": "chosen", "rejected": "rejected", "rephrase_chosen": "reph_ch", "rephrase_rejected": "reph_rej",
    "other_chosen": "other_ch", "irrelevant": "irrel", "random_sentence": "sentence", "shuffled_chosen": "shuf_ch",
    "shuffled_irrelevant": "shuf_irr", "random_tokens": "rand_tok", "greedy": "greedy",
}
"""Column headings of the printed table: the type names are too long for 11 columns in 100 characters."""
