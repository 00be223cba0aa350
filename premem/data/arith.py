"""A tiny reasoning benchmark: seeded multi-step arithmetic word problems in GSM8K form.

    Mia has 23 shells. Mia finds 7 more shells. Mia loses 5 shells. How many shells does Mia have now?
    Mia starts with 23 shells. After finding 7, that is 23 + 7 = 30. Losing 5 leaves 30 - 5 = 25. #### 25

Small enough that a model of a few hundred thousand parameters, trained for minutes on a CPU,
shows the pre-memorization paper's phenomenon (DESIGN.md §1): it learns to solve the problems
its own way, then, with enough epochs, copies the training traces word for word.

Two parts of a trace matter, and their ratio is the knob:
- computation: the numbers and the running total, which the question determines. Getting
  them right on an unseen problem is the skill test accuracy measures.
- memorizable detail: which of several equally valid phrasings each step uses, chosen at
  random per example. Nothing in the question predicts it, so the gold trace's perplexity
  stays high until the model has seen that very example often enough to copy it; then it
  falls towards 1 (memorization), and the model's answer to that training query is right
  because it is recalled, not computed.

`pretraining_texts` gives related text for the model to start from: bare arithmetic facts
("23 + 7 = 30") and problems phrased differently from the finetuning traces, so finetuning
teaches the format and sharpens a skill the model already has some of.

`preference_pairs` gives preference data for DPO (DESIGN.md §1, learning dynamics): the
correct trace as chosen, and as rejected the same trace with one arithmetic slip whose wrong
result is carried on to a wrong final answer. `sft_both` gives the "extend" recipe's SFT
data: both responses of each pair as GSM8K-form rows, trained on before DPO.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from premem.errors import InputError
from premem.execution import check_int
from premem.files import atomic_path

NAMES = (
    "Mia Leo Ava Noah Emma Liam Zoe Omar Ivy Finn Ruby Eli Nora Theo Lily Max Aria Sam Isla Kai "
    "Jade Owen Maya Hugo Rosa Ezra Lena Jack Cleo Amir"
).split()
ITEMS = "shells stamps marbles apples books coins cards pencils stickers cookies beads plums".split()

# Each operation: how the question says it, and the equally valid ways a solution may say it.
# {n}: the operand, {a}: the running total before, {b}: after, {item}: the thing counted.
OPS = {
    "+": (
        ["{name} finds {n} more {item}.", "{name} gets {n} more {item}.", "{name} buys {n} {item}."],
        [
            "After adding {n}, that is {a} + {n} = {b}.",
            "Then {a} + {n} = {b} {item}.",
            "Adding {n} gives {a} + {n} = {b}.",
            "With {n} more, {a} + {n} = {b}.",
            "So now {a} + {n} = {b}.",
            "Next, {a} + {n} = {b} in total.",
        ],
    ),
    "-": (
        ["{name} loses {n} {item}.", "{name} gives away {n} {item}.", "{name} uses {n} {item}."],
        [
            "Taking away {n} leaves {a} - {n} = {b}.",
            "Then {a} - {n} = {b} {item}.",
            "Removing {n} gives {a} - {n} = {b}.",
            "With {n} fewer, {a} - {n} = {b}.",
            "So now {a} - {n} = {b}.",
            "Next, {a} - {n} = {b} are left.",
        ],
    ),
}
STARTS = [
    "{name} starts with {a} {item}.",
    "At first {name} has {a} {item}.",
    "In the beginning there are {a} {item}.",
    "{name} begins with {a}.",
]
# the pretraining corpus's own phrasing: same skill, other words
PRETRAIN_STEP = {"+": "{a} plus {n} makes {b}.", "-": "{a} minus {n} makes {b}."}


@dataclass
class ArithConfig:
    """How the tiny benchmark's problems are generated."""

    n_train: int = 512
    """Training problems."""
    n_test: int = 256
    """Held-out test problems (never a training question)."""
    steps: tuple[int, int] = (2, 3)
    """Fewest and most operations per problem."""
    max_number: int = 40
    """Largest starting amount and running total."""
    max_operand: int = 12
    """Largest number added or taken away in one step."""
    phrasings: int = 6
    """Phrasings to choose from per solution step (1..6): the memorizable detail."""
    seed: int = 0
    """Everything is a function of this seed."""

    def validate(self, prefix: str = "", min_train: int = 1) -> None:
        """One InputError naming the first bad setting (prefix: where the config sits, e.g. "benchmark.")."""
        check_int(prefix + "n_train", self.n_train, min_train)
        check_int(prefix + "n_test", self.n_test, 1)
        steps = list(self.steps) if isinstance(self.steps, (list, tuple)) else None
        if not (steps and len(steps) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in steps)
                and 1 <= steps[0] <= steps[1]):
            raise InputError(f"{prefix}steps: expected [fewest, most] operations per problem, 1 <= fewest <= most, "
                             f"got {self.steps!r}")
        check_int(prefix + "max_number", self.max_number, 2)  # a problem starts with 2..max_number things
        check_int(prefix + "max_operand", self.max_operand, 1)
        check_int(prefix + "phrasings", self.phrasings, 1)
        if self.phrasings > 6:
            raise InputError(f"{prefix}phrasings: expected 1..6 (the phrasings each step has), got {self.phrasings!r}")
        check_int(prefix + "seed", self.seed, 0)


def problem(rng: random.Random, cfg: ArithConfig, ops: str | None = None, like: list[int] | None = None,
            near: int = 0) -> dict:
    """One problem: question, GSM8K-style answer ("... #### 25") and the final number.

    ops: the operations to use, e.g. "+-+" (one per step; a step that would leave 0..max_number
    takes the other operation). None draws the number of steps and each operation at random.
    like: the start and the operands of a problem to stay near: each drawn within +-near of it
    (where the range allows). None draws them anywhere in range."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, cfg.max_number) if like is None else rng.randint(*_near(like[0], near, 2, cfg.max_number))
    question = [f"{name} has {total} {item}."]
    solution = [rng.choice(STARTS).format(name=name, a=total, item=item)]
    chain = []  # (op, before, operand, after) per step
    for i in range(rng.randint(*cfg.steps) if ops is None else len(ops)):
        # keep the running total within 0..max_number, so every fact stays in the learnable range
        allowed = [op for op in "+-" if (op == "+" and total + 1 <= cfg.max_number) or (op == "-" and total >= 1)]
        op = rng.choice(allowed) if ops is None or ops[i] not in allowed else ops[i]
        room = cfg.max_number - total if op == "+" else total
        top = min(cfg.max_operand, room)
        n = rng.randint(1, top) if like is None or i + 1 >= len(like) else rng.randint(*_near(like[i + 1], near, 1, top))
        new = total + n if op == "+" else total - n
        said, solved = OPS[op]
        question.append(rng.choice(said).format(name=name, n=n, item=item))
        # draw from all phrasings, then fold: the random stream (so the questions) is the same for any cfg.phrasings
        solution.append(solved[rng.randrange(len(solved)) % cfg.phrasings].format(a=total, n=n, b=new, item=item))
        chain.append((op, total, n, new))
        total = new
    question.append(f"How many {item} does {name} have now?")
    return {"question": " ".join(question), "answer": " ".join(solution) + f" #### {total}", "final": total, "chain": chain}


def generate(cfg: ArithConfig) -> tuple[list[dict], list[dict]]:
    """(train, test) problems; test questions never occur in train."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    out: list[dict] = []
    misses = 0
    while len(out) < cfg.n_train + cfg.n_test:
        p = problem(rng, cfg)
        if p["question"] not in seen:
            seen.add(p["question"])
            out.append(p)
            misses = 0
        else:
            misses += 1
            check_room(misses, len(out), cfg.n_train + cfg.n_test)
    return out[: cfg.n_train], out[cfg.n_train :]


MAX_MISSES = 10_000  # draws in a row that repeat a question: the settings allow no more distinct problems


def check_room(misses: int, have: int, want: int) -> None:
    """Refuse, rather than loop forever, when the settings cannot make `want` distinct problems."""
    if misses >= MAX_MISSES:
        raise InputError(f"benchmark: only about {have} distinct problems fit these settings (max_number, max_operand, "
                         f"steps), not the {want} asked for (n_train + n_test); ask for fewer or widen the ranges")


STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


def structure(answer: str) -> str:
    """The operations a GSM8K-form solution of this benchmark performs, in order: "+-+"."""
    return "".join(m.group(2) for m in STEP.finditer(answer))


def _near(x: int, near: int, lo: int, hi: int) -> tuple[int, int]:
    """The range x +- near within [lo, hi]; all of [lo, hi] if they do not meet."""
    a, b = max(lo, x - near), min(hi, x + near)
    return (a, b) if a <= b else (lo, hi)


def numbers(answer: str) -> list[int]:
    """The start and the operands of a GSM8K-form solution of this benchmark: [23, 7, 5]."""
    steps = STEP.findall(answer)
    return [int(steps[0][0])] + [int(m[2]) for m in steps] if steps else []


def similar_problems(answers: list[str], cfg: ArithConfig, seed: int, avoid: set[str] = frozenset(),
                     near: int | None = None) -> list[dict]:
    """One new problem per given solution, with the same operations in the same order: the same
    skills and structure, new names and things, and new numbers: anywhere in range (near None), or
    the start and each operand within +-near of the solution's (the same facts, nearly).
    Questions in `avoid` are never returned."""
    rng = random.Random(seed)
    out = []
    for answer in answers:
        ops = structure(answer) or None
        like = (numbers(answer) or None) if near is not None else None
        for _ in range(50):  # a few draws find numbers that keep every operation in range
            p = problem(rng, cfg, ops, like, near or 0)
            if p["question"] not in avoid and (ops is None or structure(p["answer"]) == ops):
                break
        misses = 0
        while p["question"] in avoid:  # names and things alone make hundreds of questions
            p = problem(rng, cfg, ops, like, near or 0)
            misses += 1
            check_room(misses, len(avoid), len(avoid) + 1)
        avoid = avoid | {p["question"]}
        out.append(p)
    return out


def pretraining_texts(cfg: ArithConfig, n_problems: int = 2000, fact_passes: int = 4, seed: int = 1) -> list[str]:
    """Related text to pretrain on: every addition/subtraction fact in range, and problems
    solved in the corpus's own phrasing (fresh questions, none from train or test)."""
    facts = [f"{a} + {n} = {a + n}." for a in range(cfg.max_number + 1) for n in range(1, cfg.max_operand + 1)]
    facts += [f"{a} - {n} = {a - n}." for a in range(cfg.max_number + 1) for n in range(1, min(a, cfg.max_operand) + 1)]
    rng = random.Random(seed)
    texts = []
    for _ in range(fact_passes):  # every fact fact_passes times, eight to a line, in a random order
        rng.shuffle(facts)
        texts += [" ".join(facts[i : i + 8]) for i in range(0, len(facts), 8)]
    n_facts = len(texts)
    train, test = generate(cfg)
    taken = {p["question"] for p in train + test}
    while len(texts) < n_facts + n_problems:
        p = problem(rng, cfg)
        if p["question"] in taken:
            continue
        plain = [PRETRAIN_STEP[op].format(a=a, n=n, b=b) for op, a, n, b in p["chain"]]
        texts.append(p["question"] + "\nAnswer: " + " ".join(plain) + f" #### {p['final']}")
    return texts


MISTAKES = (-3, -2, -1, 1, 2, 3)  # how far a slipped step's result is off


def with_mistake(p: dict, rng: random.Random) -> dict:
    """The problem's trace with one slip: one step's result off by a few, every later step
    computed on from the wrong total, so the final answer is wrong by as much.

    The trace keeps its words (phrasings, names, things); only the numbers of the equations
    from the slipped step on, and the final answer, change. Returns {answer, final, step}."""
    chain = p["chain"]
    if not chain:
        raise ValueError("a problem with no steps has no step to get wrong")
    k = rng.randrange(len(chain))
    lowest = min(after for _, _, _, after in chain[k:])
    d = rng.choice([d for d in MISTAKES if lowest + d >= 0])  # no running total below zero

    steps = itertools.count()  # the equations come in chain order

    def shifted(m: re.Match) -> str:
        j, a, op, n, b = next(steps), int(m.group(1)), m.group(2), m.group(3), int(m.group(4))
        return m.group(0) if j < k else f"{a + d if j > k else a} {op} {n} = {b + d}"

    trace, final = p["answer"].rsplit(" #### ", 1)
    wrong = STEP.sub(shifted, trace)
    return {"answer": f"{wrong} #### {int(final) + d}", "final": int(final) + d, "step": k}


def preference_rows(problems: list[dict], seed: int) -> list[dict]:
    """Preference rows {prompt, chosen, rejected} for these problems (dicts from `problem`/`generate`):
    chosen the correct trace, rejected the same trace with a slip (`with_mistake`), drawn with seed."""
    rng = random.Random(seed)
    return [{"prompt": p["question"], "chosen": p["answer"], "rejected": with_mistake(p, rng)["answer"]}
            for p in problems]


def preference_pairs(cfg: ArithConfig, n: int, seed: int) -> list[dict]:
    """n preference rows {prompt, chosen, rejected} on n distinct new problems, all a function of seed."""
    rng = random.Random(seed)
    problems, seen = [], set()
    misses = 0
    while len(problems) < n:
        p = problem(rng, cfg)
        if p["question"] not in seen and p["chain"]:
            seen.add(p["question"])
            problems.append(p)
            misses = 0
        else:
            misses += 1
            check_room(misses, len(problems), n)
    return preference_rows(problems, seed)


def sft_both(rows: list[dict]) -> list[dict]:
    """The extend recipe's SFT data: GSM8K-form rows {question, answer} on [prompt; chosen] and
    [prompt; rejected] of each preference row (the rejected row's gold answer is its own, wrong, one)."""
    out = []
    for r in rows:
        out += [{"question": r["prompt"], "answer": r["chosen"]}, {"question": r["prompt"], "answer": r["rejected"]}]
    return out


def write_jsonl(rows: list[dict], path: str | Path, keys: tuple[str, ...] = ("question", "answer")) -> Path:
    """Rows as JSONL with these keys (default GSM8K form: question, answer; preference rows:
    keys=("prompt", "chosen", "rejected")), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps({k: r[k] for k in keys}) + "\n")
    return Path(path)


def write_benchmark(cfg: ArithConfig, data_dir: str | Path) -> tuple[Path, Path]:
    """train.jsonl and test.jsonl in data_dir; the same seed writes the same files, so later stages can reuse work."""
    return write_splits(*generate(cfg), data_dir)


def write_splits(train: list[dict], test: list[dict], data_dir: str | Path) -> tuple[Path, Path]:
    """Problems as data_dir/train.jsonl and data_dir/test.jsonl in GSM8K form (any tiny benchmark's)."""
    paths = Path(data_dir) / "train.jsonl", Path(data_dir) / "test.jsonl"
    for rows, path in zip((train, test), paths):
        write_jsonl(rows, path)
    return paths
