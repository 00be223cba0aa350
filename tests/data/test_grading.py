"""Answer graders: extraction and normalisation edge cases, math-verify from threads and
processes, its timeout, and the figures on the real GSM8K and MATH-500 files."""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.spawn
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from premem.data.grading import (
    GRADERS,
    Grade,
    GSM8KGrader,
    MathGrader,
    get_grader,
    grade_gold_against_solutions,
    last_boxed,
    normalize_latex,
    normalize_number,
)
from premem.errors import InputError
from tests.conftest import shared

REPO = Path(__file__).parents[2]


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def math_grader():
    grader = MathGrader()
    yield grader
    grader.close()


# -----------------------------------------------------------------------------
# registry


def test_get_grader_by_name_and_unknown_name():
    assert isinstance(get_grader("gsm8k"), GSM8KGrader) and get_grader("gsm8k").name == "gsm8k"
    assert isinstance(get_grader("math"), MathGrader) and get_grader("math").name == "math"
    assert set(GRADERS) == {"gsm8k", "math"}
    with pytest.raises(InputError, match=r"^unknown grader 'x'; known: gsm8k, math$"):
        get_grader("x")


# -----------------------------------------------------------------------------
# GSM8K


@pytest.mark.parametrize(
    "text, number",
    [
        ("1,000.00", "1000"),
        ("$18", "18"),
        ("$1,234,567", "1234567"),
        ("18 dollars", "18"),
        ("5 cm", "5"),
        ("+7", "7"),
        ("-3", "-3"),
        ("\u22124", "-4"),  # Unicode minus
        ("-$5", "-5"),
        ("50%", "50"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("72.", "72"),
        ("7.0", "7"),
        ("007", "7"),
        ("-0.0", "0"),
        ("  42  ", "42"),
    ],
)
def test_normalize_number(text, number):
    assert normalize_number(text) == number


@pytest.mark.parametrize("text", ["12 - 5", "3/4", "2 apples and 3 pears", "abc", "", "$"])
def test_normalize_number_rejects_what_is_not_one_number(text):
    assert normalize_number(text) is None


@pytest.mark.parametrize(
    "predicted, gold, same",
    [
        ("1,000.00", "1000", True),
        ("0.50", ".5", True),
        ("18 dollars", "$18.00", True),
        ("+5", "5", True),
        ("-5", "5", False),
        ("12.5", "12", False),
        ("1,000", "100", False),
        ("five", "Five", True),  # not numbers: compared as text
        ("five", "5", False),
    ],
)
def test_gsm8k_equivalent(predicted, gold, same):
    assert GSM8KGrader().equivalent(predicted, gold) is same


@pytest.mark.parametrize(
    "text, strict, flexible",
    [
        ("Natalia sold 48+24 = 72 clips.\n#### 72\nDone.", "72", "72"),
        ("He has $1,000 left.\n#### $1,000", "1000", "1000"),
        ("#### -3", "-3", "-3"),
        ("#### 18 dollars", "18", "18"),
        # the number must be on the "####" line for strict; flexible reads on
        ("So:\n####\n5", None, "5"),
        ("The answer is 18 dollars.", None, "18"),
        ("the final answer is $1,250.", None, "1250"),
        ("The answer is 3. Wait, no. The answer is 4.", None, "4"),
        ("She buys 5 apples and 7 pears", None, "7"),
        ("seasons 2019-2020", None, "2020"),  # a hyphen between numbers is not a minus
        ("no digits here", None, None),
        ("", None, None),
    ],
)
def test_gsm8k_extraction(text, strict, flexible):
    grader = GSM8KGrader()
    assert grader.extract_strict(text) == strict
    assert grader.extract_flexible(text) == flexible


def test_gsm8k_calculator_annotations_do_not_confuse_extraction():
    grader = GSM8KGrader()
    # the first number after "####" would be the 5 inside the annotation
    assert grader.extract_strict("#### <<5*4=20>>20") == "20"
    # the first number after "The answer is" would be the 6 inside the annotation
    assert grader.extract_flexible("The answer is <<6*7=42>>42.") == "42"
    # the last number would be the 10 of an annotation left dangling at the end
    assert grader.extract_flexible("Each costs 3, so 4*3=12 in total <<4*3=10>>") == "12"


def test_gsm8k_text_after_done_is_ignored():
    grader = GSM8KGrader()
    ran_on = "So the total is 12\nDone.\nQuestion: Tom has 3 apples. #### 3"
    assert grader.extract_strict(ran_on) is None
    assert grader.extract_flexible(ran_on) == "12"


def test_gsm8k_grade_fields():
    grader = GSM8KGrader()
    assert grader.grade("2+2 = 4\n#### 4\nDone.", "4") == Grade("4", "4", True, True)
    assert grader.grade("The answer is 4.", "4") == Grade(None, "4", False, True)
    assert grader.grade("#### 5", "4") == Grade("5", "5", False, False)
    assert grader.grade("#### 4.00", "4") == Grade("4", "4", True, True)
    assert grader.gold_from_solution("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"


# -----------------------------------------------------------------------------
# MATH: extraction and the fast path


@pytest.mark.parametrize(
    "text, boxed",
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("$\\boxed{\\{1,2\\}}$", "\\{1,2\\}"),  # escaped braces are not nesting
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{a} and \\fbox{b}", "b"),
        ("\\fbox{3} and \\boxed{4}", "4"),
        ("$\\boxed 5$", "5"),
        ("\\boxed {7}", "7"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\boxed{}", None),
        ("\\boxed{2} and then \\boxed{\\frac{1}{2", None),  # truncated last box: unreadable
        ("no box", None),
    ],
)
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


@pytest.mark.parametrize(
    "text, strict, flexible",
    [
        ("We get $\\boxed{4}$.\nDone.", "4", "4"),
        ("The answer is $\\frac{3}{4}$.", None, "\\frac{3}{4}"),
        ("The answer is 12.", None, "12"),
        ("The answer is: (C)", None, "(C)"),
        ("so we get $x=2$ and then $y = 7$", None, "y = 7"),
        ("It costs \\$5 and then $x$", None, "x"),  # \$ is money, not a math span
        ("So $\\boxed{9}$.\nDone.\nProblem: what is $2+2$? \\boxed{4}", "9", "9"),
        ("we find \\(x = 3\\)", None, "x = 3"),
        ("\\(a\\) so \\[ y^2 \\]", None, "y^2"),
        ("a stray \\( then \\(w\\)", None, "w"),  # a closer belongs to the nearest opener before it
        ("nothing to read", None, None),
    ],
)
def test_math_extraction(text, strict, flexible):
    grader = MathGrader()
    assert grader.extract_strict(text) == strict
    assert grader.extract_flexible(text) == flexible


@pytest.mark.parametrize(
    "tail",
    ["\\(", "\\[", "\\( a \\[ b $", "$$x$", "$\\", "\\$$"],
    ids=["paren", "bracket", "mixed", "dollars", "escapes", "escaped-dollars"],
)
def test_math_span_fallback_is_linear_in_the_text(tail):
    """1 MB of openers that never close: the fallback span search used to rescan to the end from
    each one (120 KB took ~50 s, 1 MB about an hour); it must stay well under a second or two."""
    text = "We use \\(x\\) and then " + tail * (1_000_000 // len(tail))
    started = time.perf_counter()
    answer = MathGrader().extract_flexible(text)
    assert time.perf_counter() - started < 3.0
    assert answer is not None


def test_normalize_latex_only_rewrites_what_keeps_meaning():
    assert normalize_latex("\\dfrac{1}{2}") == normalize_latex("\\frac{1}{2}") == normalize_latex("$\\tfrac{1}{2}$.")
    assert normalize_latex("\\left( 3, \\frac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalize_latex("10\\,000") == "10000"
    assert normalize_latex("\\leftarrow") != normalize_latex("\\rightarrow")


def test_math_equivalence_fast_path_needs_no_helper():
    grader = MathGrader()
    assert grader.equivalent("\\dfrac{1}{2}", "$\\frac{1}{2}$")
    assert not grader.equivalent("", "")  # nothing is not an answer
    assert not grader.equivalent("x" * 2000, "y")  # too long to send to sympy
    assert grader._helpers is None  # no pool made, so no helper started


# -----------------------------------------------------------------------------
# MATH: math-verify (in helper processes)

MATH_CASES = [
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac12", True),
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\{2,1\\}", "\\{1,2\\}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("1+x^2", "x^2+1", True),
    ("x=5", "5", True),
    ("\\text{(C)}", "C", True),
    ("90^\\circ", "90", True),
    ("3", "4", False),
    ("0.33", "\\frac{1}{3}", False),
    ("[1,2]", "[1,2)", False),
    ("\\pi/2", "90^\\circ", False),
]


@pytest.mark.parametrize("predicted, gold, same", MATH_CASES)
def test_math_equivalent_by_math_verify(math_grader, predicted, gold, same):
    assert math_grader.equivalent(predicted, gold) is same


# (text, gold) pairs whose grades need math-verify, for the thread/process tests
TEXTS = [
    ("so $\\boxed{0.5}$", "\\frac{1}{2}"),
    ("$\\boxed{\\sqrt{8}}$. The answer is $3$", "2\\sqrt{2}"),
    ("The answer is $\\dfrac{6}{4}$.", "\\frac{3}{2}"),
    ("$\\boxed{(3, \\pi/2)}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed{3}$", "4"),
    ("we find $x = 7$", "7"),
    ("$\\boxed{0.33}$", "\\frac{1}{3}"),
    ("no answer at all", "1"),
]


def _grade_all(grader, pairs):
    return [grader.grade(text, gold) for text, gold in pairs]


_INHERITED = MathGrader()


def _grade_all_with_inherited_grader(pairs):
    # runs in a forked worker that inherited _INHERITED, its parent's pool and all
    return _grade_all(_INHERITED, pairs)


@pytest.mark.slow
def test_math_grades_same_from_main_thread_threads_and_processes(math_grader):
    expected = _grade_all(math_grader, TEXTS)
    assert [(g.strict_correct, g.flexible_correct) for g in expected] == [
        (True, True), (True, True), (False, True), (True, True),
        (False, False), (False, True), (False, False), (False, False),
    ]
    with ThreadPoolExecutor(3) as pool:
        in_threads = list(pool.map(lambda pair: math_grader.grade(*pair), TEXTS * 3))
    assert in_threads == expected * 3

    # the grader travels by pickle (settings only) and starts its own helpers in the worker
    assert pickle.loads(pickle.dumps(MathGrader(timeout_s=2.5))).timeout_s == 2.5
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_grade_all, math_grader, TEXTS).result() == expected

    # a forked worker must not use the parent's pool (its threads stayed in the parent)
    _grade_all(_INHERITED, TEXTS[:1])  # the parent's copy now has its helpers running
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        assert pool.submit(_grade_all_with_inherited_grader, TEXTS).result() == expected
    assert _grade_all(_INHERITED, TEXTS) == expected  # and the parent's helpers still work
    _INHERITED.close()


@pytest.mark.slow
def test_math_verify_stuck_in_sympy_is_cut_off(caplog):
    grader = MathGrader(timeout_s=1.0)
    try:
        assert grader.equivalent("2", "2.0")  # helper started and warm
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="premem.data.grading.math"):
            # sympy evaluates 2^(2^(2^100)) as one C-level integer power: never finishes
            with ThreadPoolExecutor(1) as pool:  # from a worker thread, as in a Ray actor
                assert pool.submit(grader.equivalent, "2^{2^{2^{100}}}", "5").result() is False
        assert time.monotonic() - start < 10
        assert "no answer within 1.0 s" in caplog.text
        assert grader.equivalent("0.5", "\\frac{1}{2}")  # a fresh helper takes over
    finally:
        grader.close()


def _new_helper_pids(check) -> set[int]:
    """Pids of the child processes that appeared while check() ran: a fresh grader's helpers."""
    before = {p.pid for p in multiprocessing.active_children()}
    check()
    return {p.pid for p in multiprocessing.active_children()} - before


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has stopped; it only waits to be reaped


def test_math_helper_that_cannot_start_fails_loudly(monkeypatch):
    # a broken environment must raise, not quietly mark every answer wrong
    multiprocessing.get_context("spawn").Lock()  # start spawn's resource tracker now, with the real interpreter
    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", multiprocessing.spawn.get_executable())  # restored after
    multiprocessing.set_executable("/bin/false")  # the interpreter spawn starts helpers with
    with pytest.raises(RuntimeError, match="math-verify helper process failed to start"):
        MathGrader().equivalent("0.5", "\\frac{1}{2}")


def test_math_helper_without_math_verify_fails_loudly(tmp_path, monkeypatch):
    # math-verify missing in the helpers must raise, not count every answer wrong
    (tmp_path / "math_verify.py").write_text("raise ImportError('no math-verify here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # helpers are spawned with this process's sys.path
    grader = MathGrader()
    try:
        with pytest.raises(RuntimeError, match=r"math-verify cannot be imported in the helper process"):
            grader.equivalent("0.5", "\\frac{1}{2}")
    finally:
        grader.close()


def test_math_helper_that_died_while_idle_is_replaced():
    grader = MathGrader()
    try:
        pids = _new_helper_pids(lambda: grader.equivalent("0.5", "\\frac{1}{2}"))
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # pebble notices, and gives up on a pool whose idle helpers died
        assert grader.equivalent("0.5", "\\frac{1}{2}")
    finally:
        grader.close()


@pytest.mark.slow
def test_math_helper_that_dies_mid_check_counts_as_wrong(caplog):
    grader = MathGrader(timeout_s=60.0)
    try:
        pids = _new_helper_pids(lambda: grader.equivalent("2", "2.0"))
        with caplog.at_level(logging.WARNING, logger="premem.data.grading.math"):
            with ThreadPoolExecutor(1) as pool:
                stuck = pool.submit(grader.equivalent, "2^{2^{2^{100}}}", "5")
                time.sleep(1.0)  # one helper is now inside sympy
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                assert stuck.result(timeout=10) is False
        assert "math-verify's helper died (exit code -9)" in caplog.text
        assert grader.equivalent("0.5", "\\frac{1}{2}")  # fresh helpers take over
    finally:
        grader.close()


@pytest.mark.slow
def test_math_helpers_stop_at_exit_and_parent_never_imports_math_verify():
    # the grader is not closed: the process's exit must stop its helpers by itself
    script = textwrap.dedent(
        """
        import multiprocessing, sys
        from premem.data.grading import MathGrader
        grader = MathGrader()
        assert grader.equivalent("0.5", "\\\\frac{1}{2}")
        print(*[p.pid for p in multiprocessing.active_children()])
        print("math_verify" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pids_line, imported = done.stdout.splitlines()
    pids = [int(pid) for pid in pids_line.split()]
    assert len(pids) == 2 and imported == "False"
    assert [pid for pid in pids if _running(pid)] == []


# -----------------------------------------------------------------------------
# grade_gold_against_solutions


def test_grade_gold_against_solutions_lists_disagreements():
    rows = [
        {"unique_id": "a", "solution": "so $\\boxed{\\dfrac{1}{2}}$", "answer": "\\frac{1}{2}"},
        {"unique_id": "b", "solution": "so $\\boxed{3}$", "answer": "3"},
        {"unique_id": "c", "solution": "no box here", "answer": "3"},
    ]
    n_agree, n_total, misses = grade_gold_against_solutions(rows, MathGrader(), "answer", "solution")
    assert (n_agree, n_total) == (2, 3)
    assert [(m.index, m.row_id, m.gold, m.strict_answer) for m in misses] == [(2, "c", "3", None)]

    rows = [{"answer": "2+2 = <<2+2=4>>4\n#### 4"}, {"answer": "no marker 4"}]
    n_agree, n_total, misses = grade_gold_against_solutions(rows, GSM8KGrader(), None, "answer")
    assert (n_agree, n_total) == (1, 2) and misses[0].row_id == 1 and misses[0].gold is None


# -----------------------------------------------------------------------------
# the figures on the real data


@pytest.mark.parametrize("split, n_rows", [("train", 7473), ("test", 1319)])
def test_gsm8k_gold_solutions_all_grade_correct(split, n_rows):
    rows = read_jsonl(shared("gsm8k", f"{split}.jsonl"))
    n_agree, n_total, misses = grade_gold_against_solutions(rows, GSM8KGrader(), None, "answer")
    assert n_total == n_rows
    assert misses == [] and n_agree == n_total


def test_math500_answer_field_matches_last_box(math_grader):
    rows = read_jsonl(shared("math500", "test.jsonl"))
    n_agree, n_total, misses = grade_gold_against_solutions(rows, math_grader, "answer", "solution")
    print(f"MATH-500: answer field == last box of solution on {n_agree}/{n_total}")
    for m in misses:
        print(f"  {m.row_id}: answer {m.gold!r}, last box {m.strict_answer!r}")
    assert n_total == 500
    assert n_agree >= 0.99 * n_total


@pytest.mark.slow
def test_math500_different_answers_are_not_equivalent(math_grader):
    # A check of false positives on real answers: each problem's answer against the next
    # problem's. Every pair here goes through math-verify unless the strings are the same.
    rows = read_jsonl(shared("math500", "test.jsonl"))
    answers = [row["answer"] for row in rows]
    pairs = list(zip(answers, answers[1:] + answers[:1]))
    same = [math_grader.equivalent(*pair) for pair in pairs]  # ~10 ms a pair, on a warm helper
    flagged = sorted(pair for pair, s in zip(pairs, same) if s)
    # 5 vs x=5 is math-verify's reading of a bare assignment; the others are the same string
    assert flagged == [("3", "3"), ("5", "x=5"), ("7", "7")]


def test_math_grade_many_equals_grade_one_by_one(math_grader):
    # what the sampler actors call: the same grades, with math-verify asked once per distinct (answer, gold)
    pairs = TEXTS * 3 + [("$\\boxed{1/2}$", "\\frac{1}{2}"), ("$\\boxed{0.5}$", "\\frac{1}{2}")]
    assert math_grader.grade_many(pairs) == _grade_all(math_grader, pairs)
    assert math_grader.grade_many([]) == []


def test_gsm8k_grade_many_equals_grade_one_by_one():
    grader = get_grader("gsm8k")
    pairs = [("#### 4", "4"), ("The answer is 5.", "4"), ("nothing", "4"), ("#### 4.00\nDone. #### 3", "4")]
    assert grader.grade_many(pairs) == _grade_all(grader, pairs)


@pytest.mark.slow
def test_math_grade_many_cuts_off_a_stuck_check_and_grades_the_rest(caplog):
    grader = MathGrader(timeout_s=1.0)
    try:
        pairs = [("$\\boxed{2^{2^{2^{100}}}}$", "5"), ("$\\boxed{0.5}$", "\\frac{1}{2}"), ("$\\boxed{3}$", "4")]
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="premem.data.grading.math"):
            grades = grader.grade_many(pairs)
        assert time.monotonic() - start < 10
        assert [g.strict_correct for g in grades] == [False, True, False]
        assert "no answer within 1.0 s" in caplog.text
    finally:
        grader.close()
