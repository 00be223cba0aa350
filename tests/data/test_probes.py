"""premem probe build without a model: the offline response types, the manifest, determinism,
and bad input; load_probes refusing malformed probe files (one line naming file and row)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from premem.data import DataConfig, load_example_set
from premem.data.arith import ArithConfig, generate, preference_pairs, write_jsonl
from premem.data.probes import (
    MANIFEST_FILE,
    PROBES_FILE,
    SENTENCES,
    ProbeBuildConfig,
    ProbeRow,
    build_probes,
    check_probes_match,
    load_probes,
)
from premem.errors import InputError

ARITH = ArithConfig(n_train=8, n_test=0, max_number=20, max_operand=5, steps=(2, 2), seed=0)
OFFLINE = ["chosen", "rejected", "other_chosen", "irrelevant", "random_sentence", "shuffled_chosen",
           "shuffled_irrelevant"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    rows = preference_pairs(ARITH, 20, seed=0)
    return write_jsonl(rows, tmp_path_factory.mktemp("pairs") / "pairs.jsonl", keys=("prompt", "chosen", "rejected"))


def build(pairs_file: Path, out: Path, **kw):
    return build_probes(ProbeBuildConfig(data=str(pairs_file), out=str(out), **{"n": 6, **kw}))


def test_every_offline_type_for_every_probe_prompt(pairs_file, tmp_path):
    probes = build(pairs_file, tmp_path / "probes")
    data = {ex.example_id: ex for ex in load_example_set(DataConfig(path=str(pairs_file))).examples}
    ids = probes.manifest["probe_ids"]
    assert len(ids) == 6 == len(set(ids))
    by = {(r.probe_id, r.type): r for r in probes.rows}
    assert len(by) == len(probes.rows) == 6 * len(OFFLINE)
    held_out = {ex.solution for i, ex in data.items() if i not in ids}
    for k, pid in enumerate(ids):
        ex = data[pid]
        row = {t: by[pid, t].response for t in OFFLINE}
        assert all(by[pid, t].prompt == ex.question and not by[pid, t].model_written for t in OFFLINE)
        assert row["chosen"] == ex.solution and row["rejected"] == ex.rejected
        assert row["other_chosen"] == data[ids[(k + 1) % 6]].solution != ex.solution
        assert row["irrelevant"] in held_out  # never a probe prompt's own response
        assert row["random_sentence"] in SENTENCES
        for shuffled, source in (("shuffled_chosen", "chosen"), ("shuffled_irrelevant", "irrelevant")):
            assert sorted(row[shuffled].split()) == sorted(row[source].split()) and row[shuffled] != row[source]
    m = json.loads((tmp_path / "probes" / MANIFEST_FILE).read_text())
    assert m["data"]["fingerprint"] == load_example_set(DataConfig(path=str(pairs_file))).fingerprint
    assert m["data"]["path"] == str(pairs_file) and m["n"] == 6 and m["seed"] == 0 and m["premem_version"]
    assert m["types"] == {t: 6 for t in OFFLINE} and m["irrelevant"] == {"source": "held_out", "n_examples": 14}
    assert m["model"] is None
    assert sorted(p.name for p in (tmp_path / "probes").iterdir()) == [MANIFEST_FILE, PROBES_FILE]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_model_written_types_come_from_the_maker_passed_in(pairs_file, tmp_path):
    # a model is the sampling stage's (premem.sampling.probe_build): here a maker writes the rows it would
    with pytest.raises(InputError, match=r"^model: the model-written types need the model loaded"):
        build(pairs_file, tmp_path / "refused", model="some/model")
    assert not (tmp_path / "refused").exists()

    def upper_cased(cfg, probes):
        rows = [ProbeRow(ex.example_id, ex.question, "rephrase_chosen", ex.solution.upper(), True) for ex in probes]
        return rows, {"path": cfg.model, "rephrased": len(rows)}

    probes = build_probes(ProbeBuildConfig(data=str(pairs_file), out=str(tmp_path / "probes"), n=6, model="m"),
                          upper_cased)
    assert probes.manifest["model"] == {"path": "m", "rephrased": 6}
    assert probes.manifest["types"]["rephrase_chosen"] == 6
    first = [r.type for r in probes.rows if r.probe_id == probes.manifest["probe_ids"][0]]
    assert first == ["chosen", "rejected", "rephrase_chosen", *OFFLINE[2:]]  # in PROBE_TYPES' order
    assert load_probes(tmp_path / "probes").rows == probes.rows


def test_same_seed_same_bytes_another_seed_other_probes(pairs_file, tmp_path):
    a, b, c = (build(pairs_file, tmp_path / name, seed=s) for name, s in (("a", 0), ("b", 0), ("c", 1)))
    assert (a.path / PROBES_FILE).read_bytes() == (b.path / PROBES_FILE).read_bytes()
    assert (a.path / MANIFEST_FILE).read_bytes() == (b.path / MANIFEST_FILE).read_bytes()
    assert a.manifest["probe_ids"] != c.manifest["probe_ids"]
    build(pairs_file, a.path, seed=1)  # an earlier probe set is replaced
    assert load_probes(a.path).manifest["seed"] == 1


def test_irrelevant_responses_from_another_source(pairs_file, tmp_path):
    other = write_jsonl(generate(ARITH)[0], tmp_path / "gsm8k.jsonl")
    probes = build(pairs_file, tmp_path / "probes", irrelevant=str(other))
    pool = {ex.solution for ex in load_example_set(DataConfig(path=str(other))).examples}
    assert all(r.response in pool for r in probes.rows if r.type == "irrelevant")
    assert probes.manifest["irrelevant"]["source"] == "data"


def test_probes_match_only_their_own_data(pairs_file, tmp_path):
    probes = load_probes(build(pairs_file, tmp_path / "probes").path)
    check_probes_match(probes, load_example_set(DataConfig(path=str(pairs_file))))
    other = write_jsonl(preference_pairs(ARITH, 20, seed=1), tmp_path / "other.jsonl", keys=("prompt", "chosen", "rejected"))
    with pytest.raises(InputError, match=r"manifest.json: a probe file built for another dataset"):
        check_probes_match(probes, load_example_set(DataConfig(path=str(other))))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"n": 1}, r"n: expected 2 to 20 probe prompts"),
        ({"n": 21}, r"n: expected 2 to 20 probe prompts"),
        ({"n": 20}, r"n: all 20 examples are probe prompts, which leaves none held out"),
        ({"data": ""}, r"probe build: say which preference data"),
    ],
)
def test_bad_settings_write_nothing(kw, message, pairs_file, tmp_path):
    with pytest.raises(InputError, match=message):
        build_probes(ProbeBuildConfig(**{"data": str(pairs_file), "out": str(tmp_path / "probes"), "n": 6, **kw}))
    assert not (tmp_path / "probes").exists()


def test_sft_data_and_a_foreign_out_dir_are_refused(pairs_file, tmp_path):
    gsm8k = write_jsonl(generate(ARITH)[0], tmp_path / "gsm8k.jsonl")
    with pytest.raises(InputError, match=r"gsm8k.jsonl: probe build needs preference data .* this is gsm8k data"):
        build_probes(ProbeBuildConfig(data=str(gsm8k), out=str(tmp_path / "probes"), n=2))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"mine: exists and is not an earlier probe set"):
        build(pairs_file, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.pop("response"), r"row 3 \(line 4\): field 'response' is missing"),
        (lambda r: r.update(type="sideways"), r"row 3 \(line 4\): unknown type 'sideways'; known: chosen, rejected"),
        (lambda r: r.update(type="greedy"), r"row 3 \(line 4\): type 'greedy' is made at track time"),
        (lambda r: r.update(probe_id="7"), r"row 3 \(line 4\): field 'probe_id' must be int"),
        (lambda r: r.update(response=" "), r"row 3 \(line 4\): field 'response' is empty"),
        (lambda r: r.update(type="chosen"), r"row 3 \(line 4\): probe \d+ has a second 'chosen' response"),
    ],
)
def test_malformed_probe_rows_name_file_and_row(edit, message, pairs_file, tmp_path):
    folder = build(pairs_file, tmp_path / "probes").path
    lines = (folder / PROBES_FILE).read_text().splitlines()
    row = json.loads(lines[3])
    edit(row)
    lines[3] = json.dumps(row)
    (folder / PROBES_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=f"{folder / PROBES_FILE} " + message) as e:
        load_probes(folder)
    assert "\n" not in str(e.value)


def test_a_probe_file_changed_after_it_was_built_is_refused(pairs_file, tmp_path):
    folder = build(pairs_file, tmp_path / "probes").path
    lines = (folder / PROBES_FILE).read_text().splitlines()
    (folder / PROBES_FILE).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match="changed since it was built"):
        load_probes(folder)
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(InputError, match="the probe set has no manifest"):
        load_probes(folder)


def test_probe_files_hold_any_line_separator_inside_their_strings(pairs_file, tmp_path):
    """probes.jsonl is written with ensure_ascii=False: a U+2028 or U+0085 in a prompt must read back."""
    rows = [json.loads(line) for line in pairs_file.read_text().split("\n") if line]
    for row in rows:
        row["prompt"] = row["prompt"].replace(" ", "\u2028", 1) + "\u0085"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    built = build(data, tmp_path / "probes")
    assert "\u2028" in (tmp_path / "probes" / PROBES_FILE).read_text(encoding="utf-8")
    assert load_probes(tmp_path / "probes").rows == built.rows


def test_a_too_deeply_nested_probe_row_is_one_line(pairs_file, tmp_path):
    build(pairs_file, tmp_path / "probes")
    with open(tmp_path / "probes" / PROBES_FILE, "a") as f:
        f.write('{"probe_id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(InputError, match=r"probes.jsonl row \d+ \(line \d+\): JSON nested too deeply"):
        load_probes(tmp_path / "probes")
