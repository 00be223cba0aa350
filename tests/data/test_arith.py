import json

import pytest

from premem.data import DataConfig, load_example_set
from premem.data.arith import ArithConfig, generate, preference_pairs, pretraining_texts, write_jsonl
from premem.data.grading import grade_gold_against_solutions, get_grader


def test_generate_is_seeded_and_test_is_held_out():
    cfg = ArithConfig(n_train=200, n_test=100, seed=3)
    train, test = generate(cfg)
    assert (train, test) == generate(cfg)
    assert generate(ArithConfig(n_train=200, n_test=100, seed=4))[0] != train
    assert len(train) == 200 and len(test) == 100
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_traces_compute_the_answer_in_range():
    cfg = ArithConfig(n_train=300, n_test=0, max_number=30, max_operand=9, steps=(2, 3))
    grader = get_grader("gsm8k")
    for r in generate(cfg)[0]:
        ops = r["chain"]
        assert 2 <= len(ops) <= 3
        for op, a, n, b in ops:
            assert 1 <= n <= 9 and 0 <= b <= 30 and b == (a + n if op == "+" else a - n)
            assert f"{a} {op} {n} = {b}" in r["answer"]
        assert ops[-1][3] == r["final"]
        assert grader.grade(r["answer"], str(r["final"])).strict_correct


def test_phrasings_are_the_memorizable_detail():
    # same problems, one phrasing per step: the traces differ only in wording, never in numbers
    many, one = (generate(ArithConfig(n_train=100, n_test=0, phrasings=k))[0] for k in (6, 1))
    assert [r["question"] for r in many] == [r["question"] for r in one]
    assert len({r["answer"].split(". ")[1].split(",")[0] for r in many}) > len(
        {r["answer"].split(". ")[1].split(",")[0] for r in one}
    )


def test_pretraining_text_never_holds_a_benchmark_question():
    cfg = ArithConfig(n_train=100, n_test=50)
    train, test = generate(cfg)
    texts = pretraining_texts(cfg, n_problems=300)
    questions = {r["question"] for r in train + test}
    assert not any(q in t for t in texts for q in questions)
    assert any("12 + 3 = 15." in t for t in texts)


def test_written_jsonl_loads_as_gsm8k_and_grades(tmp_path):
    train, _ = generate(ArithConfig(n_train=20, n_test=0))
    path = write_jsonl(train, tmp_path / "train.jsonl")
    ds = load_example_set(DataConfig(path=str(path)))
    assert ds.grader == "gsm8k" and len(ds.examples) == 20
    assert ds.examples[0].answer == str(train[0]["final"])
    assert json.loads(path.read_text().splitlines()[0]).keys() == {"question", "answer"}


def test_similar_problems_keep_the_structure_and_are_new():
    from premem.data.arith import similar_problems, structure

    cfg = ArithConfig(n_train=50, n_test=0, max_number=20, max_operand=6)
    train, _ = generate(cfg)
    assert generate(cfg) == (train, [])  # forcing operations elsewhere leaves the plain stream alone
    seen = {r["question"] for r in train}
    new = similar_problems([r["answer"] for r in train], cfg, seed=1, avoid=seen)
    assert len(new) == 50 and not seen & {p["question"] for p in new}
    assert len({p["question"] for p in new}) == 50
    same = sum(structure(p["answer"]) == structure(r["answer"]) for p, r in zip(new, train))
    assert same == 50
    assert all(len(structure(p["answer"])) == len(structure(r["answer"])) for p, r in zip(new, train))
    assert new == similar_problems([r["answer"] for r in train], cfg, seed=1, avoid=seen)


def test_similar_problems_near_keep_the_facts_nearly():
    from premem.data.arith import numbers, similar_problems, structure

    cfg = ArithConfig(n_train=0, n_test=40, max_number=20, max_operand=6, seed=3)
    _, templates = generate(cfg)
    new = similar_problems([t["answer"] for t in templates], cfg, seed=1, near=1)
    for t, p in zip(templates, new):
        assert structure(p["answer"]) == structure(t["answer"])
        like, got = numbers(t["answer"]), numbers(p["answer"])
        assert len(got) == len(like) and all(abs(a - b) <= 1 for a, b in zip(like, got)), (t["answer"], p["answer"])
        assert p["question"] != t["question"]
    anywhere = similar_problems([t["answer"] for t in templates], cfg, seed=1)
    spread = [abs(numbers(t["answer"])[0] - numbers(p["answer"])[0]) for t, p in zip(templates, anywhere)]
    assert max(spread) > 1  # without near the start is drawn anywhere in range


def test_settings_with_too_few_distinct_problems_are_refused_not_looped_on():
    """max_number=2 allows some 6,500 questions (names and things vary too): asking for 20,000 is one line
    naming the settings, in a second or so."""
    import time

    from premem.errors import InputError

    cfg = ArithConfig(n_train=19_000, n_test=1_000, max_number=2, max_operand=1, steps=(2, 2), seed=0)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"distinct problems fit these settings .* not the 20000 asked for"):
        generate(cfg)
    with pytest.raises(InputError, match="not the 20000 asked for"):
        preference_pairs(cfg, 20_000, seed=0)
    assert time.perf_counter() - start < 30
