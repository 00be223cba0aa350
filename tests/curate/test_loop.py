"""The curation loop: generators (the benchmark's, a user's function, a model with a rewrite
prompt), their checks, and rounds of train -> score -> rank -> collect on a real tiny model,
recorded in the loop's store and resumed without redoing a round."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from premem.cli import main
from premem.config import load_config
from premem.curate.generators import (
    IID_SEED,
    GeneratorConfig,
    check_rows,
    load_callable,
    make_generator,
    make_iid,
    parse_rewrite,
)
from premem.curate.loop import LoopConfig, grow, loop
from premem.data import DataConfig, load_example_set
from premem.data.arith import ArithConfig, generate, structure, write_jsonl
from premem.data.grading import get_grader
from premem.data.tasks import fresh_problems
from premem.errors import InputError
from premem.store import ScoreStore

BENCH = ArithConfig(n_train=24, n_test=12, max_number=20, max_operand=6, seed=5)

USER_GENERATOR = '''
def similar(templates, seed, avoid):
    """A user's generator: a sum like each template's final answer, plus the seed."""
    rows = []
    for i, t in enumerate(templates):
        a, b = int(t["answer"]), seed % 7 + i
        rows.append({"question": f"Sam has {a} shells and finds {b} more. How many shells does Sam have now?",
                     "solution": f"Sam has {a} + {b} = {a + b} shells.\\n#### {a + b}"})
    return rows
'''


def test_the_arith_generator_keeps_each_templates_operations():
    train, test = generate(BENCH)
    gen = make_generator(GeneratorConfig(kind="arith", benchmark=BENCH), "gsm8k")
    templates = [{"example_id": i, "question": p["question"], "solution": p["answer"], "answer": str(p["final"])}
                 for i, p in enumerate(train[:8])]
    avoid = {p["question"] for p in train + test}
    new = gen(templates, seed=3, avoid=avoid)
    assert [structure(r["solution"]) for r in new] == [structure(t["solution"]) for t in templates]
    assert not {r["question"] for r in new} & avoid
    assert gen(templates, seed=3, avoid=avoid) == new  # seeded


def test_a_users_function_from_a_file(tmp_path):
    path = tmp_path / "mygen.py"
    path.write_text(USER_GENERATOR)
    gen = make_generator(GeneratorConfig(kind="python", function=f"{path}:similar"), "gsm8k")
    rows = gen([{"example_id": 0, "question": "q", "solution": "s\n#### 4", "answer": "4"}], seed=2, avoid=set())
    assert rows == [{"question": "Sam has 4 shells and finds 2 more. How many shells does Sam have now?",
                     "solution": "Sam has 4 + 2 = 6 shells.\n#### 6", "answer": "6"}]


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "expected package.module:function"),
    ("/nowhere/gen.py:f", "does not exist"),
    ("premem.nosuchmodule:f", "cannot import premem.nosuchmodule"),
    ("premem.curate.loop:nosuch", "has no callable 'nosuch'"),
])
def test_a_bad_function_spec_is_one_line(spec, message):
    with pytest.raises(InputError, match=message):
        load_callable(spec)


@pytest.mark.parametrize("rows, message", [
    ([], "expected a list of 1 rows"),
    ([{"question": "q2"}], "row 0: expected a dict with non-empty string question and solution"),
    ([{"question": "q2", "solution": "no answer here"}], "row 0: no final answer"),
    ([{"question": "seen", "solution": "x\n#### 1"}], "row 0: the question is already in the data"),
])
def test_a_generators_bad_rows_are_named(rows, message):
    with pytest.raises(InputError, match=message):
        check_rows(rows, 1, {"seen"}, "gsm8k", "generator mygen:f")


def test_parse_rewrite():
    g = get_grader("gsm8k")
    assert parse_rewrite(" Tom has 3 pens.\nSolution: 3 + 1 = 4.\n#### 4", g) == {
        "question": "Tom has 3 pens.", "solution": "3 + 1 = 4.\n#### 4", "answer": "4"}
    assert parse_rewrite("Tom has 3 pens. 3 + 1 = 4 #### 4", g) is None  # no Solution: mark
    assert parse_rewrite("Tom has 3 pens.\nSolution: four", g) is None  # no final answer


def arith_rows(problems) -> list[dict]:
    return [{"question": p["question"], "solution": p["answer"], "answer": str(p["final"])} for p in problems]


def ranked_input(rows: list[dict], tmp_path):
    """A real CurationInput over rows: one run, two checkpoints, example i's perplexity rising with i."""
    import numpy as np

    from premem.curate.strategies import CurationInput

    path = write_jsonl([{"question": r["question"], "answer": r["solution"]} for r in rows], tmp_path / "d.jsonl")
    n = len(rows)
    train = pd.DataFrame({"run": "run", "step": np.repeat([1, 2], n), "example_id": np.tile(np.arange(n), 2),
                          "n_samples": 2, "n_correct": 1, "perplexity": np.tile(1.5 + np.arange(n) / 10, 2)})
    return CurationInput(load_example_set(DataConfig(path=str(path))), train, pd.DataFrame({"run": ["run"]}), ["run"])


def test_iid_mix_draws_its_share_from_the_task_and_the_rest_like_the_templates(tmp_path):
    from premem.curate.strategies import get_strategy

    train, test = generate(BENCH)
    rows = arith_rows(train[:8])
    gen = GeneratorConfig(kind="arith", benchmark=BENCH, iid_mix=0.5, seed=7)
    cfg = LoopConfig(generator=gen, template_fraction=0.25, seed=3)
    avoid = {p["question"] for p in test} | {r["question"] for r in rows}
    new, made = grow(cfg, get_strategy("loss"), make_generator(gen, "gsm8k"), make_iid(gen),
                     ranked_input(rows, tmp_path), rows, k=1, size=16, avoid=avoid)
    # half of the 8 new rows drawn i.i.d. with the round's seed (7 + 16) on its own stream, and listed last
    iid = fresh_problems(BENCH, 4, 7 + 16 + IID_SEED, avoid)
    assert [r["question"] for r in new[4:]] == [p["question"] for p in iid] and made[4:] == [-1] * 4
    # the other half like the two highest-loss examples (a quarter of 8), cycled; new questions only
    assert made[:4] == [7, 6, 7, 6]
    assert [structure(r["solution"]) for r in new[:4]] == [structure(rows[i]["solution"]) for i in made[:4]]
    assert len({r["question"] for r in new}) == 8 and not {r["question"] for r in new} & avoid


def test_all_iid_needs_no_ranking():
    """iid_mix=1 is i.i.d. data scaling: no strategy or scores are consulted."""
    train, test = generate(BENCH)
    rows = arith_rows(train[:8])
    gen = GeneratorConfig(kind="arith", benchmark=BENCH, iid_mix=1.0)
    cfg = LoopConfig(generator=gen, seed=2)
    new, made = grow(cfg, None, None, make_iid(gen), None, rows, k=1, size=12, avoid=set())
    assert made == [-1] * 4  # default seed: the loop's seed * 1000 + the round
    assert [r["question"] for r in new] == [p["question"] for p in fresh_problems(BENCH, 4, 2001 + IID_SEED, set())]


def test_the_copy_generator_upsamples_the_top_ranked_examples(tmp_path):
    """Upsampling: the new rows are the templates again, repeats allowed (the point of it)."""
    from premem.curate.strategies import get_strategy

    rows = arith_rows(generate(BENCH)[0][:8])
    gen = GeneratorConfig(kind="copy")
    cfg = LoopConfig(generator=gen, template_fraction=0.25, seed=3)
    new, made = grow(cfg, get_strategy("loss"), make_generator(gen, "gsm8k"), make_iid(gen),
                     ranked_input(rows, tmp_path), rows, k=1, size=12, avoid={r["question"] for r in rows})
    assert made == [7, 6, 7, 6] and new == [rows[i] for i in made]


def test_the_skills_generator_keeps_each_templates_family_and_draws_iid_evenly():
    from premem.data.skills import SkillsConfig, family_of
    from premem.data.skills import generate as skills_generate

    bench = SkillsConfig(n_train=0, n_test=16)
    templates = [{"question": p["question"], "solution": p["answer"]} for p in skills_generate(bench)[1]]
    gen = GeneratorConfig(kind="skills", skills=bench, iid_mix=0.5)
    new = make_generator(gen, "gsm8k")(templates, seed=1, avoid=set())
    assert [family_of(r["question"]) for r in new] == [family_of(t["question"]) for t in templates]
    iid = make_iid(gen)(8, 1, set())
    assert sorted(family_of(r["question"]) for r in iid) == sorted(bench.families)


def test_iid_mix_needs_the_tasks_distribution():
    with pytest.raises(InputError, match="generator.iid_mix: i.i.d. draws need the task's own distribution"):
        GeneratorConfig(kind="python", function="m:f", iid_mix=0.5).validate()
    assert make_iid(GeneratorConfig(kind="arith")) is None  # no mixing: nothing drawn


def test_unknown_generator_and_llm_without_model():
    with pytest.raises(InputError, match="unknown generator 'gpt'; known: arith, skills, copy, python, llm"):
        make_generator(GeneratorConfig(kind="gpt"), "gsm8k")
    with pytest.raises(InputError, match="generator.model"):
        make_generator(GeneratorConfig(kind="llm"), "gsm8k")


@pytest.mark.slow
def test_the_llm_generator_writes_new_problems_through_the_backend(tmp_path):
    """A tiny model taught the rewrite format: its new problems parse, carry a final answer, repeat nothing."""
    from premem.curate.generators import REWRITE_PROMPT
    from premem.train.tiny import build_tiny_model, pretrain_briefly

    train, test = generate(ArithConfig(n_train=400, n_test=40, max_number=20, max_operand=6, seed=1))
    texts = [REWRITE_PROMPT.format(question=a["question"], solution=a["answer"]) + " " + b["question"]
             + "\nSolution: " + b["answer"] for a, b in zip(train[::2], train[1::2])]
    model = build_tiny_model(texts, tmp_path / "rewriter", vocab_size=512, max_position_embeddings=512)
    pretrain_briefly(model, texts, steps=400, lr=3e-3, batch_size=8, block_size=256, threads=1)
    gen = make_generator(GeneratorConfig(kind="llm", model=str(model), attempts=3), "gsm8k")
    templates = [{"example_id": i, "question": p["question"], "solution": p["answer"], "answer": str(p["final"])}
                 for i, p in enumerate(test[:8])]
    avoid = {p["question"] for p in train + test}
    rows = gen(templates, seed=0, avoid=avoid)
    assert len(rows) >= 4, rows  # most templates get a parseable new problem within 3 attempts
    assert len({r["question"] for r in rows}) == len(rows) and not {r["question"] for r in rows} & avoid
    g = get_grader("gsm8k")
    for r in rows:
        assert r["answer"] == g.gold_from_solution(r["solution"]) and 0 <= r["template"] < 8


@pytest.fixture(scope="module")
def loop_inputs(tmp_path_factory):
    from premem.data.arith import write_benchmark
    from premem.train.base_model import BaseModelConfig, build_base_model

    root = tmp_path_factory.mktemp("loop")
    train_path, test_path = write_benchmark(BENCH, root / "data")
    base = build_base_model(BaseModelConfig(vocab_size=512, pretrain_steps=20, pretrain_problems=60), BENCH,
                            root / "base", progress=False)
    (root / "mygen.py").write_text(USER_GENERATOR)
    return root, train_path, test_path, base


def loop_config(root, train_path, test_path, base, out, **over) -> LoopConfig:
    values = [f"out={out}", f"data={train_path}", f"test={test_path}", f"model={base}", "sizes=[30,36]",
              "train.epochs=2", "train.lr=3e-3", "train.batch_size=8", "train.max_length=256",
              "sampling.samples=2", "sampling.max_new_tokens=32", "exec.actors=1", "exec.progress=false", "tau=-2.6"]
    return load_config(LoopConfig, None, values + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.slow
def test_the_loop_records_every_round_and_resumes(loop_inputs, tmp_path):
    root, train_path, test_path, base = loop_inputs
    cfg = loop_config(root, train_path, test_path, base, tmp_path / "loop", **{
        "generator.kind": "python", "generator.function": f"{root / 'mygen.py'}:similar"})
    cfg = dataclasses.replace(cfg, data=str(train_path))  # a bare path from Python will do
    asked = copy.deepcopy(cfg)
    table = loop(cfg)
    assert cfg == asked  # the caller's config is left as it was (no DataConfig, no cache directory put in)
    assert table["seed"].tolist() == [0, 0, 0] and table["loop"].tolist() == ["premem_low"] * 3
    assert table["round"].tolist() == [0, 1, 2] and table["examples"].tolist() == [24, 30, 36]
    assert table["added"].tolist() == [24, 6, 6] and table["strategy"].tolist() == ["start", "premem_low", "premem_low"]
    assert table["test_acc"].between(0, 1).all() and table["premem"].between(0, 1).all()

    record = ScoreStore(tmp_path / "loop" / "store")
    ex = record.read("curation_examples")
    assert ex.groupby("round").size().tolist() == [24, 6, 6]
    # round 1 was made like the lowest-premem quarter of round 0 (6 examples): each template once
    r0 = ScoreStore(tmp_path / "loop" / "round0" / "store")
    from premem.curate.select import example_scores
    from premem.metrics.premem import TrainingCurves

    premem = example_scores(TrainingCurves.from_store(r0), -2.6).set_index("example_id")["premem"]
    templates = ex[ex["round"] == 1]["template_id"].tolist()
    assert len(set(templates)) == 6 and premem[templates].max() <= premem.drop(templates).min()
    # the rows are the user's, in the round's data, after the previous round's rows
    data1 = load_example_set(DataConfig(path=str(tmp_path / "loop" / "round1" / "data.jsonl"))).examples
    assert [e.question for e in data1[24:]] == ex[ex["round"] == 1]["question"].tolist()
    assert all(e.question.startswith("Sam has") for e in data1[24:])

    # a second call redoes nothing: same table, data files untouched
    stamp = (tmp_path / "loop" / "round2" / "data.jsonl").stat().st_mtime_ns
    again = loop(cfg)
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), table.drop(columns="seconds"))
    assert (tmp_path / "loop" / "round2" / "data.jsonl").stat().st_mtime_ns == stamp
    assert len(record.read("curation_examples")) == 36

    # a round's data changed by hand is refused, not silently trained on
    path = tmp_path / "loop" / "round1" / "data.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    with pytest.raises(InputError, match="does not start with the previous round's data"):
        loop(cfg)


def test_loop_bad_settings_are_one_line_errors(tmp_path, capsys):
    data = write_jsonl(generate(BENCH)[0], tmp_path / "train.jsonl")
    common = ["curate", "loop", "--out", str(tmp_path / "out"), f"data={data}", f"model={tmp_path}"]
    assert main(common + ["sizes=[24]"]) == 2
    assert "sizes: expected sizes growing from the start data's 24 examples" in capsys.readouterr().err
    assert main(common + ["sizes=[30]", "strategy=nosuch"]) == 2
    assert "unknown strategy" in capsys.readouterr().err
    assert main(common + ["sizes=[30]", "generator.kind=python", "generator.function=nofile.py:f"]) == 2
    assert "nofile.py does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("override, message", [
    ("sizes=[]", "sizes: expected a non-empty list of training-set sizes"),
    ("sizes=[-5]", "sizes[0]: expected an integer >= 1, got -5"),
    ("template_fraction=0", "template_fraction: expected a fraction in (0, 1], got 0.0"),
    ("seed=-1", "seed: expected an integer >= 0, got -1"),
    ("train.lr=0", "train.lr: expected a value above 0, got 0.0"),
    ("train.epochs=0", "train.epochs: expected a value at least 1, got 0"),
    ("sampling.samples=0", "sampling.samples: expected an integer >= 1, got 0"),
    ("exec.options.threads=0", "exec.options.threads: expected an integer >= 1, got 0"),
    ("exec.backend=nosuch", "exec.backend: unknown backend 'nosuch'"),
    ("exec.actors=0", "exec.actors: expected an integer >= 1, got 0"),
    ("generator.iid_mix=2", "generator.iid_mix: expected a share in [0, 1], got 2"),
    ("generator.seed=-1", "generator.seed: expected an integer >= 0, got -1"),
    ("generator.kind=gpt", "generator.kind: unknown generator 'gpt'; known: arith, skills, copy, python, llm"),
    ("generator.kind=llm generator.exec.backend=nosuch", "generator.exec.backend: unknown backend 'nosuch'"),
    ("generator.kind=llm generator.exec.options.dtype=int4", "generator.exec.options.dtype: expected one of"),
])
def test_loop_settings_are_checked_before_anything_is_read_or_written(tmp_path, capsys, override, message):
    """A missing start data file proves the order: the settings fail first, and nothing is written."""
    args = ["curate", "loop", "--out", str(tmp_path / "out"), f"data={tmp_path / 'absent.jsonl'}",
            f"model={tmp_path}", "sizes=[30]", *override.split()]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
