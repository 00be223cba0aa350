"""premem curate end to end on small stores: formats, manifest, determinism, OUT rules, bad input."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from premem.cli import main
from premem.curate import CurateConfig, curate
from premem.data import DataConfig, load_example_set
from premem.errors import InputError
from premem.store import ScoreStore
from tests.curate.conftest import gsm8k_rows


def cfg(small, **kw):
    values = dict(store=str(small["store"]), data=str(small["data"]), budget=5, out=str(small["root"] / "out"))
    return CurateConfig(**{**values, **kw})


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".out."))


def test_jsonl_subset_is_the_original_lines_and_the_manifest_says_why(small):
    raw = small["data"].read_bytes().replace(b"\n", b"\r\n")  # CRLF lines and a blank line survive as they were
    small["data"].write_bytes(b"\r\n" + raw)
    result = curate(cfg(small, runs=["run1", "run2"]))
    lines = [ln for ln in small["data"].read_bytes().splitlines(keepends=True) if ln.strip()]
    m = json.loads((result.out / "manifest.json").read_text())
    assert result.subset.read_bytes() == b"".join(lines[i] for i in m["rows"])
    assert len(m["rows"]) == 5 and m["rows"] == sorted(m["rows"])  # the data's order
    assert m["kind"] == "premem-curate" and m["premem_version"] and m["seed"] == 0 and m["tau"] == -2.3
    assert m["strategy"]["name"] == "premem_low" and m["strategy"]["params"] == {"threshold": 0.75, "mode": "select", "factor": None}
    assert m["budget"] == {"requested": 5, "n": 5, "candidates": 20, "data_examples": 20, "rows_written": 5}
    assert m["runs"] == ["run1", "run2"]
    assert set(m["data"]["sha256"]) == {"train.jsonl"} and len(m["data"]["sha256"]["train.jsonl"]) == 64
    assert set(m["store"]["sha256"]) == {"runs.parquet", "train_scores.parquet"}
    assert m["data"]["fingerprint"] == load_example_set(DataConfig(path=str(small["data"]))).fingerprint
    ex = pd.DataFrame(m["examples"])
    assert list(ex["rank"]) == list(range(1, 21)) and ex["score"].is_monotonic_increasing
    assert sorted(ex.loc[ex["selected"], "example_id"]) == m["rows"]
    assert {"example_id", "score", "selected", "rank", "copies"} <= set(ex.columns)
    pc = [json.loads(line) for line in result.prompt_completion.read_text().splitlines()]
    first = load_example_set(DataConfig(path=str(small["data"]))).examples[m["rows"][0]]
    assert pc[0] == {"prompt": first.question + "\nAnswer:", "completion": " " + first.solution + "\nDone.",
                     "example_id": first.example_id}
    assert m["files"] == {"subset": "train.jsonl", "subset_format": "jsonl",
                          "prompt_completion": "train.prompt_completion.jsonl", "template": "paper"}


def test_same_seed_same_bytes_other_seed_other_sample(small):
    a = curate(cfg(small, strategy="random", out=str(small["root"] / "a")))
    b = curate(cfg(small, strategy="random", out=str(small["root"] / "b")))
    for name in ("train.jsonl", "train.prompt_completion.jsonl", "manifest.json"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes()
    c = curate(cfg(small, strategy="random", seed=1, out=str(small["root"] / "c")))
    assert c.manifest["rows"] != a.manifest["rows"]


@pytest.mark.parametrize("kind", ["parquet", "csv", "json_array", "hf_dict"])
def test_other_formats_come_back_in_their_own_format(small, kind):
    rows = [{**r, "idx": 100 + i, "level": i % 3} for i, r in enumerate(gsm8k_rows(20))]
    root = small["root"]
    if kind == "parquet":
        path = root / "train.parquet"
        pd.DataFrame(rows).to_parquet(path)
    elif kind == "csv":
        path = root / "train.csv"
        pd.DataFrame(rows).assign(level=lambda f: f["level"].map("{:03d}".format)).to_csv(path, index=False)
    elif kind == "json_array":
        path = root / "train.json"
        path.write_text(json.dumps(rows))
    else:
        import datasets

        path = root / "hf"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}
                             ).save_to_disk(str(path))
    result = curate(cfg(small, data=str(path), strategy="loss", budget=0.25))
    picked = result.manifest["rows"]
    assert len(picked) == 5
    out = result.subset
    assert out.name == path.name
    if kind == "parquet":
        assert pq.read_schema(out) == pq.read_schema(path)
        assert pd.read_parquet(out).to_dict("records") == [rows[i] for i in picked]
    elif kind == "csv":
        got = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert list(got["level"]) == [f"{i % 3:03d}" for i in picked]  # text stays text: 001, not 1
        assert list(got["answer"]) == [rows[i]["answer"] for i in picked]
    elif kind == "json_array":
        assert json.loads(out.read_text()) == [rows[i] for i in picked]
    else:
        import datasets

        loaded = datasets.load_from_disk(str(out))
        assert list(loaded) == ["train"] and loaded["train"].to_list() == [rows[i] for i in picked]
    again = load_example_set(DataConfig(path=str(out)))  # reads back as premem data, same examples
    assert [e.question for e in again.examples] == [rows[i]["question"] for i in picked]


def test_data_read_with_an_id_field_and_renamed_columns(small):
    rows = [{"idx": 19 - i, "q": r["question"], "a": r["answer"]} for i, r in enumerate(gsm8k_rows(20))]
    path = small["root"] / "renamed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(path=str(path), format="gsm8k", fields={"id": "idx", "question": "q", "solution": "a"})
    result = curate(cfg(small, data=data, strategy="random", budget=4))
    written = [json.loads(line) for line in result.subset.read_text().splitlines()]
    assert [r["idx"] for r in written] == sorted(result.manifest["rows"], reverse=True)  # the file's order: idx falls


def test_upsample_writes_every_example_plus_the_copies(small):
    result = curate(cfg(small, params={"mode": "upsample"}, budget=0.5))
    m = result.manifest
    assert m["budget"]["rows_written"] == 30 and len(result.subset.read_text().splitlines()) == 30
    assert sorted(set(m["rows"])) == list(range(20)) and sum(e["copies"] for e in m["examples"]) == 30
    assert len(result.prompt_completion.read_text().splitlines()) == 30


def test_out_rules(small):
    out = small["root"] / "out"
    curate(cfg(small))
    curate(cfg(small, strategy="random"))  # an earlier curate output is replaced
    assert json.loads((out / "manifest.json").read_text())["strategy"]["name"] == "random"
    assert leftovers(small["root"]) == []
    foreign = small["root"] / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and not an earlier premem curate output.*--overwrite"):
        curate(cfg(small, out=str(foreign)))
    assert (foreign / "keep.txt").read_text() == "mine"
    curate(cfg(small, out=str(foreign), overwrite=True))
    assert not (foreign / "keep.txt").exists() and (foreign / "manifest.json").exists()
    with pytest.raises(InputError, match=r"^out .*: holds the input .*, which replacing it would destroy"):
        curate(cfg(small, out=str(small["root"]), overwrite=True))  # holds the data and the store
    with pytest.raises(InputError, match=r"^out .*: is also an input"):
        curate(cfg(small, out=str(small["store"]), overwrite=True))
    (small["root"] / "file").write_text("x")
    with pytest.raises(InputError, match=r"^out .*: exists and is not a directory$"):
        curate(cfg(small, out=str(small["root"] / "file")))


# -- bad input: one line naming what, exit 2, nothing written -----------------------------------


def run_cli(small, capsys, *args, out="out"):
    code = main(["curate", "--store", str(small["store"]), "--data", str(small["data"]),
                 "--out", str(small["root"] / out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("args, needle", [
    (["--budget", "21"], "budget 21: more than the 20 examples of " ),
    (["--budget", "0"], "budget '0': expected a positive count"),
    (["--budget", "-0.5"], "budget '-0.5': a fraction must be in (0, 1]"),
    (["--budget", "1.5"], "budget '1.5': a fraction must be in (0, 1]"),
    (["--budget", "lots"], "budget 'lots': expected a count"),
    (["--strategy", "lowest"],
     "strategy 'lowest': unknown strategy; known: premem_low, random, loss, difficulty, cartography, s2l"),
    (["--strategy", "ifd"], "strategy 'ifd': not available: IFD"),
    (["--run", "run1", "--run", "nope"], "run 'nope': not in "),
    (["--strategy", "cartography", "region=middle"], "region: expected one of ambiguous, hard, easy, got 'middle'"),
    (["--tau", "auto", "--run", "run0"], None),  # fine: tau is calibrated on all runs
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(small, capsys, args, needle):
    code, err = run_cli(small, capsys, *args)
    if needle is None:
        assert code == 0 and (small["root"] / "out" / "manifest.json").exists()
        return
    assert code == 2 and len(err) == 1 and err[0].startswith("premem: error: ") and needle in err[0], err
    assert not (small["root"] / "out").exists() and leftovers(small["root"]) == []


def test_store_scored_on_other_data(small, capsys):
    shorter = small["root"] / "short.jsonl"
    shorter.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(12)))
    code = main(["curate", "--store", str(small["store"]), "--data", str(shorter), "--out", str(small["root"] / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train_scores.parquet: example_id 12 is not in" in err and "short.jsonl" in err
    assert not (small["root"] / "out").exists()

    # a store that recorded its data's fingerprint: the same ids but other text is caught too
    store = ScoreStore(small["store"])
    store.check_dataset("train", load_example_set(DataConfig(path=str(small["data"]))))
    curate(cfg(small))  # the data it recorded: fine
    other = small["root"] / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "question": r["question"] + "?"}) + "\n" for r in gsm8k_rows(20)))
    code = main(["curate", "--store", str(small["store"]), "--data", str(other), "--out", str(small["root"] / "out2")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "datasets.parquet: the store's train split was scored on other data" in err, err
    assert str(other) in err and not (small["root"] / "out2").exists()


def test_cli_prints_where_it_wrote(small, capsys):
    code = main(["curate", "--store", str(small["store"]), "--data", str(small["data"]), "--out", str(small["root"] / "o"),
                 "--strategy", "cartography", "--budget", "3", "region=hard", "seed=4"])
    out = capsys.readouterr().out
    assert code == 0 and "cartography: 3 of 20 examples" in out and "seed 4" in out
    m = json.loads((small["root"] / "o" / "manifest.json").read_text())
    assert m["strategy"]["params"] == {"region": "hard"} and m["seed"] == 4 and m["tau"] is None
    code = main(["curate", "--store", str(small["store"]), "--data", str(small["data"])])
    assert code == 2 and "--out DIR" in capsys.readouterr().err


def test_help_lists_every_strategy_and_why_not_ifd(capsys):
    with pytest.raises(SystemExit):
        main(["curate", "--help"])
    out = capsys.readouterr().out
    from premem.curate import STRATEGIES

    for name in STRATEGIES:
        assert f"\n{name}: " in out
    assert "ifd (not available)" in out


def test_readme_documents_every_strategy():
    from pathlib import Path

    from premem.curate import STRATEGIES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Curating data", 1)[1].split("\n## ", 1)[0]
    for name in [*STRATEGIES, "ifd"]:
        assert f"`{name}`" in section


def test_a_failure_while_writing_leaves_the_earlier_output_as_it_was(small, monkeypatch):
    from premem.curate import export

    first = curate(cfg(small))
    before = {p.name: p.read_bytes() for p in first.out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_prompt_completion", broken)
    with pytest.raises(OSError, match="disk full"):
        curate(cfg(small, strategy="random"))
    assert {p.name: p.read_bytes() for p in first.out.iterdir()} == before
    with pytest.raises(OSError):
        curate(cfg(small, out=str(small["root"] / "fresh")))
    assert not (small["root"] / "fresh").exists() and leftovers(small["root"]) == []
    assert not [p for p in small["root"].iterdir() if p.name.startswith(".fresh.")]


def test_the_callers_config_is_left_as_it_was(small):
    given = cfg(small, out="")  # data as a path: curate reads it as a DataConfig of its own
    result = curate(given)
    assert given.data == str(small["data"]) and result.manifest["data"]["path"] == str(small["data"])


def test_a_tau_below_the_stores_sample_tau_is_refused_before_anything_is_written(small):
    from tests.metrics.test_premem import skipped_as_premem_score_would

    store = ScoreStore(small["store"])
    train, runs = skipped_as_premem_score_would(store.read("train_scores"), store.read("runs"))
    store.write("train_scores", train)
    store.write("runs", runs)
    out = small["root"] / "out"
    with pytest.raises(InputError, match=r"^tau -3.5: below -3, the sample_tau"):
        curate(CurateConfig(store=str(store.root), data=DataConfig(path=str(small["data"])), tau=-3.5, out=str(out)))
    assert not out.exists()
    ok = curate(CurateConfig(store=str(store.root), data=DataConfig(path=str(small["data"])), tau=-2.3, budget=5))
    assert ok.selection.scores["score"].notna().all()  # the final PreMem of every example is defined
