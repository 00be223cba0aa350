"""What grading costs on the driver: seconds per answer for GSM8K and MATH answers, and per checkpoint at the
paper's scale (issue 14 item 3: grading beside sampling).

    python benchmarks/grading_cost.py [--n 500] [--repeats 3]

The answers graded are the datasets' own solutions (right) and the same solutions with the final answer
changed (wrong), through premem's graders exactly as `score` calls them (grader.grade(text, gold)). A
checkpoint at the paper's scale is (7,473 train + 1,319 test) x 5 samples for GSM8K and (7,500 + 500) x 5 for
MATH; the estimate multiplies the median seconds per answer by that count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from premem.data.grading import get_grader  # noqa: E402

SHARED = Path(os.environ.get("PREMEM_SHARED_DATA", HERE.parent / "shared" / "data"))
PER_CHECKPOINT = {"gsm8k": (7473 + 1319) * 5, "math": (7500 + 500) * 5}


def answers(name: str, n: int) -> list[tuple[str, str]]:
    """(answer text, gold) pairs: each solution as written, then with its final number changed."""
    path = SHARED / ("gsm8k/train.jsonl" if name == "gsm8k" else "math500/test.jsonl")
    rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()][:n]
    grader = get_grader(name)
    pairs = []
    for r in rows:
        solution = r["answer"] if name == "gsm8k" else r["solution"]
        gold = grader.gold_from_solution(solution)
        if gold is None:
            continue
        wrong = re.sub(r"(\d+)(?!.*\d)", lambda m: str(int(m.group(1)) + 1), solution, flags=re.S)
        pairs += [(solution, gold), (wrong, gold)]
    return pairs


def seconds_per_answer(name: str, pairs: list[tuple[str, str]], repeats: int) -> float:
    grader = get_grader(name)
    grader.grade(*pairs[0])  # start math-verify's helper processes outside the timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for text, gold in pairs:
            grader.grade(text, gold)
        times.append((time.perf_counter() - start) / len(pairs))
    getattr(grader, "close", lambda: None)()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="examples per dataset (two answers each)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'grader':<8}{'answers':>9}{'ms/answer (median)':>20}{'answers/checkpoint':>20}{'s/checkpoint':>14}")
    for name in ("gsm8k", "math"):
        pairs = answers(name, args.n)
        s = seconds_per_answer(name, pairs, args.repeats)
        print(f"{name:<8}{len(pairs):>9}{s * 1e3:>20.3f}{PER_CHECKPOINT[name]:>20,}{s * PER_CHECKPOINT[name]:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
