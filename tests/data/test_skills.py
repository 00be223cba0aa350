"""The skills benchmark: families evenly, answers right, the generator keeps the family, the prior is uneven."""

import collections
import random
import re

import pytest

from premem.data import tasks
from premem.data.arith import ArithConfig
from premem.data.grading import get_grader
from premem.data.skills import (
    FAMILIES,
    OPENERS,
    SkillsConfig,
    family_of,
    fresh_problems,
    generate,
    pretraining_texts,
    problem,
    similar_problems,
)
from premem.errors import InputError

EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x / y}


def test_every_equation_is_right_and_the_final_answer_is_the_last_result():
    cfg = SkillsConfig(n_train=400, n_test=80)
    grader = get_grader("gsm8k")
    for p in sum(generate(cfg), []):
        eqs = EQ.findall(p["answer"])
        assert eqs and all(OPS[op](int(x), int(y)) == int(z) for x, op, y, z in eqs), p["answer"]
        assert int(eqs[-1][3]) == p["final"] and grader.gold_from_solution(p["answer"]) == str(p["final"])
        top = max(cfg.max_number, cfg.max_factor ** 2)  # groups and share reach 5 * 5
        assert 0 <= p["final"] <= top and all(int(x) <= top for x, *_ in eqs)


def test_test_set_is_even_over_families_and_never_in_train():
    train, test = generate(SkillsConfig(n_train=300, n_test=96, seed=3))
    assert collections.Counter(p["family"] for p in test) == {f: 12 for f in FAMILIES}
    assert max(collections.Counter(p["family"] for p in train).values()) - min(
        collections.Counter(p["family"] for p in train).values()) <= 1
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert len({p["question"] for p in train}) == 300
    # the test set does not depend on how many training problems are asked for
    assert generate(SkillsConfig(n_train=10, n_test=96, seed=3))[1] == test


def test_family_is_read_back_from_every_question_and_a_foreign_one_is_refused():
    rng = random.Random(0)
    cfg = SkillsConfig()
    for family in FAMILIES:
        for _ in range(20):
            assert family_of(problem(rng, cfg, family)["question"]) == family
    with pytest.raises(InputError, match="cannot tell the family"):
        family_of("Mia has 12 shells. Mia finds 3 more shells. How many shells does Mia have now?")


def test_similar_problems_keep_the_family_and_change_everything_else():
    train, test = generate(SkillsConfig(n_train=64, n_test=16))
    avoid = {p["question"] for p in train + test}
    new = similar_problems([p["question"] for p in train], SkillsConfig(), seed=5, avoid=avoid)
    assert [p["family"] for p in new] == [p["family"] for p in train]
    assert not {p["question"] for p in new} & avoid and len({p["question"] for p in new}) == len(new)
    same_numbers = sum(EQ.findall(a["answer"]) == EQ.findall(b["answer"]) for a, b in zip(new, train))
    assert same_numbers < len(new) // 2  # new numbers, not the template's facts


def test_fresh_problems_are_new_and_even():
    avoid = {p["question"] for p in generate(SkillsConfig(n_train=0, n_test=64))[1]}
    rows = fresh_problems(SkillsConfig(), 40, seed=1, avoid=avoid)
    assert len(rows) == 40 and not {p["question"] for p in rows} & avoid
    assert collections.Counter(p["family"] for p in rows) == {f: 5 for f in FAMILIES}


def test_pretraining_text_is_uneven_by_design():
    cfg = SkillsConfig(n_train=32, n_test=16, weak_fact_passes=1)
    texts = pretraining_texts(cfg, n_problems=200, fact_passes=3)
    facts = " ".join(t for t in texts if "\nAnswer:" not in t)
    assert facts.count("3 * 4 = 12.") == 1 and facts.count("12 / 4 = 3.") == 1
    assert facts.count("7 + 5 = 12.") == 3 and facts.count("12 - 5 = 7.") == 3
    worked = [t.split("\nAnswer:")[0] for t in texts if "\nAnswer:" in t]
    assert len(worked) == 200 and {family_of(q) for q in worked} == set(cfg.pretrained)
    train, test = generate(cfg)
    assert not set(worked) & {p["question"] for p in train + test}
    assert pretraining_texts(SkillsConfig(pretrained=[]), n_problems=200, fact_passes=1) == pretraining_texts(
        SkillsConfig(pretrained=[]), n_problems=0, fact_passes=1)


def test_no_trace_opens_with_the_robustness_probes_perturbations():
    # the probe appends " First" / " We know that" after "Answer:": they must be new to the model
    assert not {o.strip() for o in OPENERS} & {"First", "First,", "We know that"}
    assert not any(p["answer"].startswith(("First", "We know")) for p in generate(SkillsConfig())[0])


@pytest.mark.parametrize("field, value, match", [
    ("families", ["add", "mul"], r"families\[1\]: unknown family 'mul'"),
    ("families", [], "families: expected a list"),
    ("pretrained", ["nope"], r"pretrained\[0\]"),
    ("max_factor", 1, "max_factor"),
    ("phrasings", 7, "phrasings: expected 1..6"),
])
def test_bad_settings_are_named(field, value, match):
    with pytest.raises(InputError, match=match):
        SkillsConfig(**{field: value}).validate("skills.")


def test_tasks_dispatch_to_the_right_benchmark():
    s, a = SkillsConfig(n_train=8, n_test=8), ArithConfig(n_train=8, n_test=8, max_number=20, max_operand=6)
    assert tasks.benchmark_of("skills", a, s) is s and tasks.benchmark_of("arith", a, s) is a
    with pytest.raises(InputError, match="task: unknown task 'maths'"):
        tasks.benchmark_of("maths", a, s)
    assert tasks.generate(s) == generate(s) and tasks.key_of(s) == "skills." and tasks.key_of(a) == "benchmark."
    train = generate(s)[0]
    like = tasks.similar_problems(s, [{"question": p["question"], "solution": p["answer"]} for p in train], 1, set())
    assert [tasks.skill_of(s, p["question"], p["answer"]) for p in like] == [p["family"] for p in train]
