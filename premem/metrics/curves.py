"""Learning curves and data efficiency of curation strategies, from the curation loops' own records.

Every curation loop (premem.curate.loop) records one row per round in its score store's
`curation_rounds` table: its seed, its name (`loop`), the round, the training-set size and the test
accuracy at the end of the round's run. The data-efficiency experiment (premem experiment curation)
runs one loop per (seed, strategy) from a shared i.i.d. start, and one more per seed, named `iid`
(IID_LOOP), for i.i.d. sizes beyond the rounds. From those records:

    rounds      one row per (seed, strategy, round): examples, test accuracy; round 0 is the shared
                start, round -1 an i.i.d.-only size (the `iid` loop's rounds, shown as random)
    curves      mean, std and standard error of test accuracy over seeds per (strategy, examples)
    efficiency  per strategy and size: the i.i.d. examples needed to reach its mean accuracy (read off
                the i.i.d. curve, interpolated in log examples) / the examples it used; with the ratio's
                mean and standard error over seeds (each seed's accuracy read off its own i.i.d. curve)
    comparisons per size, one strategy (premem_low) against each other one: the mean difference in test
                accuracy over seeds, paired by seed (a seed's strategies share its start), its standard
                error, and whether it is ahead by more than two standard errors

The report (premem.report.curation) and the experiment's curves.csv / efficiency.csv both come from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from premem.errors import InputError

IID_LOOP = "iid"  # the loop of i.i.d. sizes beyond the rounds: its rounds are the random curve's round -1
IID_STRATEGY = "random"  # i.i.d. scaling: the curve every strategy is measured against
COLUMNS = ["seed", "strategy", "round", "examples", "test_acc"]
RECORD_COLUMNS = ["seed", "loop", "round", "examples", "test_acc"]  # what rounds() reads of a loop's record


def record_paths(out_dir: str | Path) -> list[Path]:
    """Every curation loop record under out_dir (<loop out>/store/curation_rounds.parquet), in path order."""
    return sorted(Path(out_dir).glob("**/store/curation_rounds.parquet"))


def read_records(out_dir: str | Path) -> pd.DataFrame:
    """The curation_rounds rows of every loop under out_dir, one table; InputError naming the file at fault."""
    out_dir = Path(out_dir)
    paths = record_paths(out_dir)
    if not paths:
        raise InputError(f"{out_dir}: no curation loop records (*/store/curation_rounds.parquet) found "
                         "(premem experiment curation writes them)")
    tables = []
    for path in paths:
        try:
            table = pd.read_parquet(path)
        except Exception as e:  # pyarrow's errors for a truncated or foreign file vary
            raise InputError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
        missing = [c for c in RECORD_COLUMNS if c not in table.columns]
        if missing:
            raise InputError(f"{path}: missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                             f"(expected {', '.join(RECORD_COLUMNS)})")
        for c in ("seed", "round", "examples", "test_acc"):
            if not pd.api.types.is_numeric_dtype(table[c]) or table[c].isna().any():
                raise InputError(f"{path}: column {c}: expected numbers without gaps (a loop without test data "
                                 "has no learning curve)")
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def rounds(records: pd.DataFrame) -> pd.DataFrame:
    """The experiment's rounds from its loops' records: (seed, strategy, round, examples, test_acc).

    A loop's name is its strategy's label; the `iid` loop's rounds beyond its start become random's round -1
    (its start is the start every loop of its seed shares, already there)."""
    records = records[RECORD_COLUMNS]  # the record's own strategy column names the ranking, not the curve
    iid = records["loop"] == IID_LOOP
    table = pd.concat([records[~iid], records[iid & (records["round"] > 0)].assign(loop=IID_STRATEGY, round=-1)],
                      ignore_index=True)
    table = table.rename(columns={"loop": "strategy"})[COLUMNS].astype({"strategy": str, "seed": int, "round": int,
                                                                        "examples": int, "test_acc": float})
    if table.empty:
        raise InputError("curation records: no rounds")
    if not (table["round"] == 0).any():
        raise InputError("curation records: no round 0 (the start every strategy shares)")
    return table.sort_values(["seed", "strategy", "round", "examples"], ignore_index=True)


def read_rounds(out_dir: str | Path) -> pd.DataFrame:
    """rounds() of every loop record under out_dir."""
    return rounds(read_records(out_dir))


def curves(rounds: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of test accuracy over seeds per (strategy, examples); the start size counts for all."""
    start = rounds[rounds["round"] == 0]
    rows = [rounds[rounds["round"] != 0]]
    for name in rounds["strategy"].unique():
        rows.append(start.assign(strategy=name))
    full = pd.concat(rows, ignore_index=True).drop_duplicates(["seed", "strategy", "examples"])
    out = (full.groupby(["strategy", "examples"], as_index=False)["test_acc"]
           .agg(mean="mean", std="std", n_seeds="size"))
    return out.assign(se=out["std"] / np.sqrt(out["n_seeds"]))


def iid_examples_needed(sizes: np.ndarray, accs: np.ndarray, acc: float) -> tuple[float, str]:
    """The fewest i.i.d. examples whose accuracy reaches acc on the i.i.d. curve (sizes ascending): its running
    best, interpolated in log examples; (the largest size, ">") when the curve never reaches acc."""
    x, y = np.log(sizes.astype(float)), np.maximum.accumulate(accs.astype(float))  # "best reached by n examples"
    if acc > y[-1]:
        return float(np.exp(x[-1])), ">"
    i = int(np.argmax(y >= acc))  # first crossing, log-linear between points
    t = 0.0 if i == 0 or y[i] == y[i - 1] else (acc - y[i - 1]) / (y[i] - y[i - 1])
    return float(np.exp(x[i] if i == 0 else x[i - 1] + t * (x[i] - x[i - 1]))), ""


COLUMNS_EFF = ["strategy", "examples", "test_acc", "iid_examples_needed", "ratio", "bound", "ratio_mean",
               "ratio_se", "n_seeds"]


def efficiency(curve: pd.DataFrame, rounds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per strategy and size: i.i.d. examples needed to reach its mean accuracy / examples it used. Given the
    rounds, also each seed's ratio (its accuracy read off its own seed's i.i.d. curve): their mean and standard
    error over seeds."""
    iid = curve[curve["strategy"] == IID_STRATEGY].sort_values("examples")
    per_seed = seed_ratios(rounds) if rounds is not None else pd.DataFrame(columns=["strategy", "examples", "ratio"])
    out = []
    for row in curve.itertuples():
        if row.examples <= iid["examples"].min():
            continue
        needed, bound = iid_examples_needed(iid["examples"].to_numpy(), iid["mean"].to_numpy(), row.mean)
        r = per_seed.loc[(per_seed["strategy"] == row.strategy) & (per_seed["examples"] == row.examples), "ratio"]
        se = float(r.std() / np.sqrt(len(r))) if len(r) > 1 else float("nan")
        out.append({"strategy": row.strategy, "examples": row.examples, "test_acc": row.mean,
                    "iid_examples_needed": needed, "ratio": needed / row.examples, "bound": bound,
                    "ratio_mean": float(r.mean()) if len(r) else float("nan"), "ratio_se": se, "n_seeds": len(r)})
    return pd.DataFrame(out, columns=COLUMNS_EFF)


def seed_ratios(rounds: pd.DataFrame) -> pd.DataFrame:
    """Each seed's data-efficiency ratio per (strategy, size): its test accuracy read off that seed's own i.i.d.
    curve (a lower bound, capped at the largest i.i.d. size, where the curve never reaches it)."""
    out = []
    for seed, g in rounds.groupby("seed"):
        iid = g[g["strategy"].eq(IID_STRATEGY) | g["round"].eq(0)].drop_duplicates("examples").sort_values("examples")
        if len(iid) < 2:
            continue
        for row in g[g["round"] != 0].itertuples():
            needed, _ = iid_examples_needed(iid["examples"].to_numpy(), iid["test_acc"].to_numpy(), row.test_acc)
            out.append({"seed": seed, "strategy": row.strategy, "examples": row.examples,
                        "ratio": needed / row.examples})
    return pd.DataFrame(out, columns=["seed", "strategy", "examples", "ratio"])


def comparisons(rounds: pd.DataFrame, focus: str = "premem_low") -> pd.DataFrame:
    """Per size, `focus` against every other strategy run at that size: the mean over seeds of focus's test
    accuracy minus the other's (paired by seed: a seed's strategies share its start and test set), its
    standard error, and `ahead`: the mean difference exceeds two standard errors."""
    acc = rounds[rounds["round"] > 0].pivot_table(index=["examples", "seed"], columns="strategy", values="test_acc")
    out = []
    if focus not in acc.columns:
        return pd.DataFrame(columns=["examples", "strategy", "diff", "se", "n_seeds", "ahead"])
    for examples, g in acc.groupby(level="examples"):
        for other in acc.columns:
            if other == focus:
                continue
            d = (g[focus] - g[other]).dropna()
            if d.empty:
                continue
            se = float(d.std() / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            out.append({"examples": int(examples), "strategy": other, "diff": float(d.mean()), "se": se,
                        "n_seeds": len(d), "ahead": bool(len(d) > 1 and d.mean() > 2 * se)})
    return pd.DataFrame(out, columns=["examples", "strategy", "diff", "se", "n_seeds", "ahead"])


def strategy_order(curve: pd.DataFrame) -> list[str]:
    """The strategies as figures and tables list them: i.i.d. scaling (random) first, then by name."""
    return sorted(curve["strategy"].unique(), key=lambda s: (s != IID_STRATEGY, s))
