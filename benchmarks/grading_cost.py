"""What grading costs the driver of `premem score`, before and after grading moved into the sampler actors
(issue 14 item 3), for GSM8K and MATH answers.

    python benchmarks/grading_cost.py [--n 300] [--repeats 3] [--shard 64] [--samples 5]

The answers are the datasets' own solutions (right) and the same solutions with the final number changed
(wrong), cut into tasks of --shard queries x --samples answers as `score` cuts its work. Per task, three
costs are timed with the code `score` runs:

- driver, before: the driver graded every answer one by one (grader.grade), built the rows, wrote the parts;
- driver, after:  the driver writes the parts the actor built (ScoreStore.write_part), nothing else;
- actor, after:   what one actor adds to a task (premem.sampling.results.result_tables: grade_many, checks
                  side by side on its math-verify helpers), spread over the actors and beside their sampling.

A checkpoint at the paper's scale is (7,473 train + 1,319 test) x 5 samples for GSM8K and (7,500 + 500) x 5 for
MATH; the estimate multiplies the median seconds per answer by that count. Medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from premem.data.grading import get_grader  # noqa: E402
from premem.runs import Checkpoint  # noqa: E402
from premem.sampling.actors import Task  # noqa: E402
from premem.sampling.backend import Completion  # noqa: E402
from premem.sampling.results import result_tables  # noqa: E402
from premem.store import ScoreStore  # noqa: E402

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


def tasks(name: str, pairs, shard: int, samples: int) -> list[tuple[Task, list[list[Completion]]]]:
    """The answers as score's tasks: --samples answers (consecutive pairs) to each of --shard queries."""
    queries = [pairs[i : i + samples] for i in range(0, len(pairs) - samples + 1, samples)]
    out = []
    for s, start in enumerate(range(0, len(queries), shard)):
        chunk = queries[start : start + shard]
        ids = list(range(start, start + len(chunk)))
        # each query's answers are graded against its first answer's gold, as samples of one question are
        task = Task(Checkpoint("bench", 1, Path("/bench"), "full"), "test", s, ids, [[1]] * len(ids), None, ids,
                    grader=name, golds=[q[0][1] for q in chunk])
        out.append((task, [[Completion(text, 100) for text, _ in q] for q in chunk]))
    return out


class OneByOne:
    """The driver's grading before: grader.grade, one answer after the other."""

    def __init__(self, grader):
        self.grader = grader

    def grade_many(self, pairs):
        return [self.grader.grade(text, gold) for text, gold in pairs]


def per_answer(run, work, n_answers: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in work:
            run(*item)
        times.append((time.perf_counter() - start) / n_answers)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="examples per dataset (two answers each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard", type=int, default=64, help="queries per task (score's shard_size)")
    parser.add_argument("--samples", type=int, default=5, help="answers per query")
    args = parser.parse_args(argv)
    print(f"{'grader':<7}{'answers':>8}  {'where':<16}{'ms/answer':>10}{'s/checkpoint':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        store = ScoreStore(Path(tmp) / "store", create=True)
        for name in ("gsm8k", "math"):
            pairs = answers(name, args.n)
            work = tasks(name, pairs, args.shard, args.samples)
            n = sum(len(c) for _, comps in work for c in comps)
            grader = get_grader(name)
            grader.grade(pairs[1][0], "-1")  # start math-verify's helpers outside the timing
            built = {}

            def write(task, samples, scores):
                store.write_part("samples", task.part, samples)
                store.write_part("test_scores", task.part, scores)

            def before(task, comps):
                write(task, *result_tables(task, comps, None, OneByOne(grader)))

            def actor(task, comps):
                built[task.part] = result_tables(task, comps, None, grader)

            costs = {"driver, before": per_answer(before, work, n, args.repeats),
                     "actor, after": per_answer(actor, work, n, args.repeats)}
            costs["driver, after"] = per_answer(lambda task, _: write(task, *built[task.part]), work, n, args.repeats)
            getattr(grader, "close", lambda: None)()
            for where in ("driver, before", "driver, after", "actor, after"):
                s = costs[where]
                print(f"{name:<7}{n:>8}  {where:<16}{s * 1e3:>10.3f}{s * PER_CHECKPOINT[name]:>14.1f}")
            print(f"{'':<7}{'':>8}  driver before / after: {costs['driver, before'] / costs['driver, after']:.1f}x;  "
                  f"one actor's grading / the driver's before: {costs['actor, after'] / costs['driver, before']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
