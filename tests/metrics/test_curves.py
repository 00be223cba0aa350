"""Learning curves and data efficiency from the curation loops' records (premem.metrics.curves)."""

import pandas as pd
import pytest

from premem.errors import InputError
import numpy as np

from premem.metrics.curves import comparisons, curves, efficiency, read_rounds, rounds, seed_ratios
from premem.store import ScoreStore


def test_efficiency_reads_the_iid_curve_in_log_examples():
    table = pd.DataFrame(
        [
            # seed, strategy, round, examples, test_acc: two seeds, i.i.d. 0.1 -> 0.2 -> 0.3 at 64/128/256
            (s, "random", r, n, a) for s in (0, 1) for r, n, a in ((0, 64, 0.1), (1, 128, 0.2), (2, 256, 0.3))
        ]
        + [(s, "premem_low", r, n, a) for s in (0, 1) for r, n, a in ((1, 128, 0.3), (2, 256, 0.5))],
        columns=["seed", "strategy", "round", "examples", "test_acc"],
    )
    c = curves(table)
    low = c[c["strategy"] == "premem_low"].set_index("examples")
    assert low.loc[64, "mean"] == pytest.approx(0.1)  # the shared start counts for every strategy
    assert low.loc[128, "mean"] == pytest.approx(0.3) and low.loc[128, "n_seeds"] == 2
    e = efficiency(c).set_index(["strategy", "examples"])
    assert e.loc[("premem_low", 128), "iid_examples_needed"] == pytest.approx(256)  # i.i.d. needs 256 for 0.3
    assert e.loc[("premem_low", 128), "ratio"] == pytest.approx(2.0)
    assert e.loc[("random", 128), "ratio"] == pytest.approx(1.0)
    # 0.15 lies halfway between 64 and 128 in accuracy: log-linear gives sqrt(64 * 128)
    mid = efficiency(pd.concat([c, pd.DataFrame([{"strategy": "x", "examples": 100, "mean": 0.15, "std": 0, "n_seeds": 1}])]))
    assert mid.set_index("strategy").loc["x", "iid_examples_needed"] == pytest.approx((64 * 128) ** 0.5)
    assert e.loc[("premem_low", 256), "bound"] == ">"  # beyond the i.i.d. curve: a lower bound only


def test_standard_errors_per_seed_ratios_and_paired_comparisons():
    # three seeds; i.i.d. 0.1 / 0.2 / 0.3 at 64 / 128 / 256 on every seed; premem_low at 128 is 0.25, 0.3, 0.35
    # (the i.i.d. 0.2 shifted by seed noise shared with loss: loss is premem_low - 0.1 + a small seed wobble)
    low, loss = [0.25, 0.3, 0.35], [0.16, 0.2, 0.24]
    rows = [(s, "random", r, n, a) for s in range(3) for r, n, a in ((0, 64, 0.1), (1, 128, 0.2), (-1, 256, 0.3))]
    rows += [(s, "premem_low", 1, 128, low[s]) for s in range(3)] + [(s, "loss", 1, 128, loss[s]) for s in range(3)]
    table = pd.DataFrame(rows, columns=["seed", "strategy", "round", "examples", "test_acc"])
    c = curves(table).set_index(["strategy", "examples"])
    assert c.loc[("premem_low", 128), "se"] == pytest.approx(np.std(low, ddof=1) / np.sqrt(3))
    # each seed's ratio from its own i.i.d. curve: 0.25 -> 128 * 2^0.5, 0.3 -> 256, 0.35 -> beyond (capped at 256)
    r = seed_ratios(table).set_index(["strategy", "seed"]).loc["premem_low", "ratio"]
    assert r.tolist() == pytest.approx([2 ** 0.5, 2.0, 2.0])
    e = efficiency(curves(table), table).set_index(["strategy", "examples"])
    assert e.loc[("premem_low", 128), "ratio_mean"] == pytest.approx(np.mean(r))
    assert e.loc[("premem_low", 128), "ratio_se"] == pytest.approx(np.std(r, ddof=1) / np.sqrt(3))
    # paired by seed: premem_low - loss is 0.09, 0.10, 0.11: ahead by far more than 2 SE, though the unpaired
    # spreads overlap; premem_low - random is 0.05, 0.10, 0.15: mean 0.10, SE 0.029, ahead too
    cmp = comparisons(table).set_index(["examples", "strategy"])
    assert cmp.loc[(128, "loss"), "diff"] == pytest.approx(0.10) and cmp.loc[(128, "loss"), "ahead"]
    assert cmp.loc[(128, "random"), "se"] == pytest.approx(0.05 / np.sqrt(3)) and cmp.loc[(128, "random"), "ahead"]
    assert 256 not in cmp.index.get_level_values("examples")  # i.i.d.-only sizes have nothing to pair with
    # a strategy behind by less than two standard errors is not "ahead"
    close = table.assign(test_acc=np.where(table["strategy"].eq("loss"), table["test_acc"] + 0.1, table["test_acc"]))
    assert not comparisons(close).set_index(["examples", "strategy"]).loc[(128, "loss"), "ahead"]


def record(seed: int, loop: str, accs: list[tuple[int, float]]) -> pd.DataFrame:
    """A loop's curation_rounds as premem.curate.loop writes it (the columns the curves read, and a few more)."""
    return pd.DataFrame([{"seed": seed, "loop": loop, "round": k, "examples": n, "added": n, "strategy": loop,
                          "generator": "arith", "data_sha256": "x", "run_dir": "r", "store_dir": "s", "test_acc": a}
                         for k, (n, a) in enumerate(accs)])


def write_record(path, table: pd.DataFrame) -> None:
    ScoreStore(path, create=True).append("curation_rounds", table)


def test_rounds_from_the_loops_records(tmp_path):
    write_record(tmp_path / "seed0" / "random" / "store", record(0, "random", [(12, 0.1), (24, 0.2)]))
    write_record(tmp_path / "seed0" / "premem_low" / "store", record(0, "premem_low", [(12, 0.1), (24, 0.4)]))
    write_record(tmp_path / "seed0" / "iid" / "store", record(0, "iid", [(12, 0.1), (48, 0.3), (96, 0.5)]))
    table = read_rounds(tmp_path)
    assert list(table.columns) == ["seed", "strategy", "round", "examples", "test_acc"]
    # the iid loop's sizes are random's round -1; its start (the shared one) is not counted twice
    assert table[table["strategy"] == "random"][["round", "examples"]].values.tolist() == [[-1, 48], [-1, 96],
                                                                                        [0, 12], [1, 24]]
    e = efficiency(curves(table)).set_index(["strategy", "examples"])
    assert e.loc[("premem_low", 24), "iid_examples_needed"] == pytest.approx(48 * 2 ** 0.5)  # 0.4: halfway 48..96


def test_missing_or_bad_records_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="no curation loop records") as e:
        read_rounds(tmp_path)
    assert "\n" not in str(e.value)
    store = tmp_path / "a" / "store"
    write_record(store, record(0, "random", [(12, 0.1)]).drop(columns=["loop"]))
    with pytest.raises(InputError, match=r"a/store/curation_rounds.parquet: missing column loop"):
        read_rounds(tmp_path)
    (store / "curation_rounds.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"curation_rounds.parquet: not a readable parquet file"):
        read_rounds(tmp_path)
    write_record(tmp_path / "b" / "store", record(0, "x", [(12, float("nan"))]))
    (store / "curation_rounds.parquet").unlink()
    with pytest.raises(InputError, match=r"b/store/curation_rounds.parquet: column test_acc: expected numbers"):
        read_rounds(tmp_path)
    assert rounds(record(1, "random", [(12, 0.1)]))["seed"].tolist() == [1]
