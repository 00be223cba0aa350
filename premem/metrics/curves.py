"""Learning curves and data efficiency of curation strategies, from the curation loops' own records.

Every curation loop (premem.curate.loop) records one row per round in its score store's
`curation_rounds` table: its seed, its name (`loop`), the round, the training-set size and the test
accuracy at the end of the round's run. The data-efficiency experiment (premem experiment curation)
runs one loop per (seed, strategy) from a shared i.i.d. start, and one more per seed, named `iid`
(IID_LOOP), for i.i.d. sizes beyond the rounds. From those records:

    rounds      one row per (seed, strategy, round): examples, test accuracy; round 0 is the shared
                start, round -1 an i.i.d.-only size (the `iid` loop's rounds, shown as random)
    curves      mean and std of test accuracy over seeds per (strategy, examples)
    efficiency  per strategy and size: the i.i.d. examples needed to reach its mean accuracy (read off
                the i.i.d. curve, interpolated in log examples) / the examples it used

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
    return (full.groupby(["strategy", "examples"], as_index=False)["test_acc"]
            .agg(mean="mean", std="std", n_seeds="size"))


def efficiency(curve: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and size: i.i.d. examples needed to reach its mean accuracy / examples it used."""
    iid = curve[curve["strategy"] == IID_STRATEGY].sort_values("examples")
    x, y = np.log(iid["examples"].to_numpy(float)), iid["mean"].to_numpy(float)
    y = np.maximum.accumulate(y)  # a learning curve read as "best accuracy reached by n examples"
    out = []
    for row in curve.itertuples():
        if row.examples <= iid["examples"].min():
            continue
        if row.mean > y[-1]:
            needed, bound = float(np.exp(x[-1])), ">"
        else:  # the fewest i.i.d. examples whose accuracy reaches row.mean: first crossing, log-linear between points
            i = int(np.argmax(y >= row.mean))
            t = 0.0 if i == 0 or y[i] == y[i - 1] else (row.mean - y[i - 1]) / (y[i] - y[i - 1])
            needed, bound = float(np.exp(x[i] if i == 0 else x[i - 1] + t * (x[i] - x[i - 1]))), ""
        out.append({"strategy": row.strategy, "examples": row.examples, "test_acc": row.mean,
                    "iid_examples_needed": needed, "ratio": needed / row.examples, "bound": bound})
    return pd.DataFrame(out, columns=["strategy", "examples", "test_acc", "iid_examples_needed", "ratio", "bound"])


def strategy_order(curve: pd.DataFrame) -> list[str]:
    """The strategies as figures and tables list them: i.i.d. scaling (random) first, then by name."""
    return sorted(curve["strategy"].unique(), key=lambda s: (s != IID_STRATEGY, s))
