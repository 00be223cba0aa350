"""Preference data: the tiny benchmark's pairs (a correct trace, and the same trace with one
arithmetic slip carried on), the extend recipe's SFT rows, and bad preference rows refused
when read, naming file and row."""

from __future__ import annotations

import json
import random

import pytest

from premem.data import DataConfig, load_example_set, load_examples
from premem.data.arith import STEP, ArithConfig, preference_pairs, preference_rows, problem, sft_both, write_jsonl
from premem.data.grading import get_grader
from premem.errors import InputError

CFG = ArithConfig(n_train=0, n_test=0, max_number=20, max_operand=6, steps=(1, 4))
KEYS = ("prompt", "chosen", "rejected")


def final(trace: str) -> int:
    return int(trace.rsplit("#### ", 1)[1])


def test_pairs_are_seeded_and_new_problems():
    pairs = preference_pairs(CFG, 200, seed=3)
    assert pairs == preference_pairs(CFG, 200, seed=3)
    assert pairs != preference_pairs(CFG, 200, seed=4)
    assert len(pairs) == 200 and len({p["prompt"] for p in pairs}) == 200
    assert all(p.keys() == set(KEYS) for p in pairs)


def test_the_rejected_trace_slips_once_and_carries_the_slip_on():
    grader = get_grader("gsm8k")
    for p in preference_pairs(CFG, 300, seed=0):
        chosen, rejected = p["chosen"], p["rejected"]
        assert rejected != chosen and final(rejected) != final(chosen)
        assert grader.grade(chosen, str(final(chosen))).strict_correct
        assert not grader.grade(rejected, str(final(chosen))).strict_correct  # graded wrong against the gold
        # same words, same operations and operands; only the numbers from the slipped step on change
        assert STEP.sub("#", chosen.rsplit(" #### ")[0]) == STEP.sub("#", rejected.rsplit(" #### ")[0])
        good, bad = STEP.findall(chosen), STEP.findall(rejected)
        assert [(op, n) for _, op, n, _ in good] == [(op, n) for _, op, n, _ in bad]
        wrong = [j for j, (a, op, n, b) in enumerate(bad) if int(b) != int(a) + (int(n) if op == "+" else -int(n))]
        assert len(wrong) == 1  # one step computes wrongly ...
        k = wrong[0]
        assert good[:k] == bad[:k]  # ... the steps before it are the correct ones ...
        d = int(bad[k][3]) - int(good[k][3])
        assert d != 0 and final(rejected) == final(chosen) + d  # ... and the slip carries to the end
        assert bad[k][0] == good[k][0]
        for (a, _, _, b), (a2, _, _, b2) in zip(good[k + 1 :], bad[k + 1 :]):
            assert int(a2) == int(a) + d and int(b2) == int(b) + d
        assert all(int(b) >= 0 for *_, b in bad)  # no running total below zero


def test_pairs_for_given_problems():
    rng = random.Random(0)
    problems = [problem(rng, CFG) for _ in range(20)]
    rows = preference_rows(problems, seed=1)
    assert [r["prompt"] for r in rows] == [p["question"] for p in problems]
    assert [r["chosen"] for r in rows] == [p["answer"] for p in problems]
    assert rows == preference_rows(problems, seed=1) and rows != preference_rows(problems, seed=2)


def test_written_pairs_load_as_preference_data(tmp_path):
    pairs = preference_pairs(CFG, 10, seed=0)
    path = write_jsonl(pairs, tmp_path / "pairs.jsonl", keys=KEYS)
    data = load_example_set(DataConfig(path=str(path)))
    assert data.format == "preference" and len(data.examples) == 10
    for ex, p in zip(data.examples, pairs):
        assert (ex.question, ex.solution, ex.rejected) == (p["prompt"], p["chosen"], p["rejected"])
        assert ex.answer == str(final(p["chosen"]))


def test_extend_sft_rows_hold_both_responses(tmp_path):
    pairs = preference_pairs(CFG, 10, seed=0)
    rows = sft_both(pairs)
    assert len(rows) == 20
    assert rows[0::2] == [{"question": p["prompt"], "answer": p["chosen"]} for p in pairs]
    assert rows[1::2] == [{"question": p["prompt"], "answer": p["rejected"]} for p in pairs]
    data = load_example_set(DataConfig(path=str(write_jsonl(rows, tmp_path / "both.jsonl"))))
    assert data.format == "gsm8k" and [ex.solution for ex in data.examples] == [r["answer"] for r in rows]


# -- bad preference rows -----------------------------------------------------------------------


def write(tmp_path, rows) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chosen": ""}, "row 1 (line 2): field 'chosen' is missing or empty"),
        ({"rejected": " "}, "row 1 (line 2): field 'rejected' is missing or empty"),
        ({"rejected": "A #### 1"}, "row 1 (line 2): fields 'chosen' and 'rejected' hold the same response; "
                                   "a preference pair needs two different ones"),
        ({"rejected": "A #### 1\n"}, "fields 'chosen' and 'rejected' hold the same response"),
        ({"rejected": [{"role": "assistant", "content": "A #### 1"}]}, "hold the same response"),
    ],
)
def test_a_bad_pair_names_file_and_row(tmp_path, bad, message):
    rows = [{"prompt": "Q0", "chosen": "A #### 1", "rejected": "B #### 2"},
            {"prompt": "Q1", "chosen": "A #### 1", "rejected": "B #### 2", **bad}]
    path = write(tmp_path, rows)
    with pytest.raises(InputError) as e:
        load_examples(DataConfig(path=path))
    assert str(e.value).startswith(f"{path} row 1") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_renamed_columns_are_named_in_the_error(tmp_path):
    path = write(tmp_path, [{"q": "Q", "good": "A #### 1", "bad": "A #### 1"}])
    cfg = DataConfig(path=path, format="preference", fields={"question": "q", "solution": "good", "rejected": "bad"})
    with pytest.raises(InputError, match="fields 'good' and 'bad' hold the same response"):
        load_examples(cfg)
