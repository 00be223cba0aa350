"""A tiny benchmark with skills: word problems from eight families that need different skills.

    groups:  Ava buys 3 bags with 4 beads in each bag. How many beads does Ava buy?
             There are 3 bags of 4 beads. So 3 * 4 = 12. #### 12

The arithmetic benchmark (premem.data.arith) mixes two operations in chains of random length; which
of its test problems a model fails sits in specific number facts, which a "problem like this one"
(same operations, new numbers) does not keep, so curating by pre-memorization accuracy there is
i.i.d. data with a reweighted mix (issue 5's finding). GSM8K and MATH are not like that: they mix
problem types that a model learns unevenly. This benchmark is built to be like them:

- families: each family is a skill: its own question phrasing, its own operation (+, -, *, /) and
  step pattern, its own range of numbers. The eight: add and sub (a running amount, two steps),
  total and diff (two people's amounts, one step), double and half, groups and share.
- uneven prior: the base model's pretraining (`pretraining_texts`) holds every +/- fact
  `fact_passes` times and worked problems of the `pretrained` families (add, sub, total, diff)
  in another phrasing, but each * and / fact only `weak_fact_passes` times and no worked problem
  of double, half, groups or share. Finetuning then teaches the first four families' format over
  skills the model has, and the other four's facts from scratch, so it learns them unevenly.
- a test set drawn evenly over families (and training data too, in expectation), so test accuracy
  weighs every skill alike.
- `similar_problems` keeps an example's family (its skill) and varies everything else: numbers,
  names, things, phrasings. So "collect data like the examples the model could not solve" can
  carry what made them hard.
- memorizable detail, as in arith: each solution sentence is written in one of several equally
  valid phrasings drawn at random, so a gold trace's perplexity falls only when that very example
  is memorized.

The design is fixed before any curation runs on it (README, "The skills benchmark").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from premem.data.arith import ITEMS, NAMES, check_room
from premem.errors import InputError
from premem.execution import check_int

# family -> (question templates, first sentence of the solution, the operation's result sentence).
# {a}, {n}, {m}: the numbers, {b}: the first result, {c}: the second; {name}, {other}, {item}.
QUESTIONS = {
    "add": ["{name} has {a} {item}. {name} finds {n} more {item}, then gets {m} more. How many {item} does {name} "
            "have now?"],
    "sub": ["{name} has {a} {item}. {name} loses {n} {item}, then gives away {m}. How many {item} does {name} "
            "have left?"],
    "total": ["{name} has {a} {item} and {other} has {n} {item}. How many {item} do they have together?"],
    "diff": ["{name} has {a} {item} and {other} has {n} {item}. How many more {item} does {name} have than {other}?"],
    "double": ["{name} has {a} {item}. {other} has twice as many {item} as {name}. How many {item} does {other} have?"],
    "half": ["{name} has {a} {item} and gives half of them to {other}. How many {item} does {name} keep?"],
    "groups": ["{name} buys {a} bags with {n} {item} in each bag. How many {item} does {name} buy?"],
    "share": ["{name} shares {a} {item} equally among {n} friends. How many {item} does each friend get?"],
}
FAMILIES = tuple(QUESTIONS)
# what tells a family's question apart (checked in this order): the generator reads a template's family back
MARKERS = (("twice as many", "double"), ("half of them", "half"), ("bags with", "groups"),
           ("equally among", "share"), ("together", "total"), ("How many more", "diff"),
           ("then gets", "add"), ("then gives away", "sub"))
# the equations each family's solution writes, in order: (op, left, right, result) from the numbers
EQUATIONS = {
    "add": [("+", "a", "n", "b"), ("+", "b", "m", "c")],
    "sub": [("-", "a", "n", "b"), ("-", "b", "m", "c")],
    "total": [("+", "a", "n", "b")],
    "diff": [("-", "a", "n", "b")],
    "double": [("*", "a", "2", "b")],
    "half": [("/", "a", "2", "b")],
    "groups": [("*", "a", "n", "b")],
    "share": [("/", "a", "n", "b")],
}
FIRST = {  # the solution's first sentence: what the question gives
    "add": "{name} starts with {a} {item}.", "sub": "{name} starts with {a} {item}.",
    "total": "{name} has {a} and {other} has {n}.", "diff": "{name} has {a} and {other} has {n}.",
    "double": "{other} has 2 times {a}.", "half": "Half of {a} goes to {other}.",
    "groups": "There are {a} bags of {n} {item}.", "share": "{a} {item} go to {n} friends.",
}
# the memorizable detail: equally valid ways to say one equation, one drawn per sentence
SAY = ["So {eq}.", "That is {eq}.", "Then {eq}.", "We get {eq}.", "This gives {eq}.", "Now {eq} {item}."]
# before the first sentence; never the robustness probe's perturbations (" First", " We know that")
OPENERS = ["", "Note: ", "Given: ", "Here: "]
# the pretraining corpus's own phrasing of a worked problem: same skill, other words
PRETRAIN_SAY = {"+": "{x} plus {y} makes {z}.", "-": "{x} minus {y} makes {z}.", "*": "{x} times {y} makes {z}.",
                "/": "{x} split into {y} makes {z}."}


@dataclass
class SkillsConfig:
    """How the skills benchmark's problems are generated (premem/data/skills.py)."""

    n_train: int = 512
    """Training problems (families in turn, in a seeded order)."""
    n_test: int = 256
    """Held-out test problems, the same number from every family (never a training question)."""
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    """Problem families, each a skill: add, sub, total, diff, double, half, groups, share."""
    pretrained: list[str] = field(default_factory=lambda: ["add", "sub", "total", "diff"])
    """Families whose worked problems (in another phrasing) are in the base model's pretraining text."""
    max_number: int = 20
    """Largest amount in a problem (and result of + and -)."""
    max_factor: int = 5
    """Largest number of groups, size of a group or number of friends (* and / use 2..max_factor)."""
    weak_fact_passes: int = 1
    """Times each * and / fact is in the pretraining text (each + and - fact: the model's fact_passes)."""
    phrasings: int = 6
    """Phrasings to choose from per solution sentence (1..6): the memorizable detail."""
    seed: int = 0
    """Everything is a function of this seed."""

    def validate(self, prefix: str = "", min_train: int = 1) -> None:
        """One InputError naming the first bad setting (prefix: where the config sits, e.g. "skills.")."""
        check_int(prefix + "n_train", self.n_train, min_train)
        check_int(prefix + "n_test", self.n_test, 1)
        for key in ("families", "pretrained"):
            names = getattr(self, key)
            if not isinstance(names, list) or (key == "families" and not names):
                raise InputError(f"{prefix}{key}: expected a list of family names, got {names!r}")
            for i, name in enumerate(names):
                if name not in FAMILIES:
                    raise InputError(f"{prefix}{key}[{i}]: unknown family {name!r}; known: {', '.join(FAMILIES)}")
        check_int(prefix + "max_number", self.max_number, 8)  # add/sub need room for two steps
        check_int(prefix + "max_factor", self.max_factor, 2)
        check_int(prefix + "weak_fact_passes", self.weak_fact_passes, 0)
        check_int(prefix + "phrasings", self.phrasings, 1)
        if self.phrasings > len(SAY):
            raise InputError(f"{prefix}phrasings: expected 1..{len(SAY)}, got {self.phrasings!r}")
        check_int(prefix + "seed", self.seed, 0)


def numbers(family: str, rng: random.Random, cfg: SkillsConfig) -> dict[str, int]:
    """The family's numbers, drawn so every result is a whole number within range."""
    top, f = cfg.max_number, cfg.max_factor
    if family == "add":
        a = rng.randint(1, top - 2)
        n = rng.randint(1, top - a - 1)
        return {"a": a, "n": n, "m": rng.randint(1, top - a - n)}
    if family == "sub":
        a = rng.randint(3, top)
        n = rng.randint(1, a - 2)
        return {"a": a, "n": n, "m": rng.randint(1, a - n - 1)}
    if family == "total":
        a = rng.randint(1, top - 1)
        return {"a": a, "n": rng.randint(1, top - a)}
    if family == "diff":
        a = rng.randint(2, top)
        return {"a": a, "n": rng.randint(1, a - 1)}
    if family == "double":
        return {"a": rng.randint(1, top // 2)}
    if family == "half":
        return {"a": 2 * rng.randint(1, top // 2)}
    if family == "groups":
        return {"a": rng.randint(2, f), "n": rng.randint(2, f)}
    n = rng.randint(2, f)  # share: a whole number each
    return {"a": n * rng.randint(2, f), "n": n}


def apply(op: str, x: int, y: int) -> int:
    return {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op]


def problem(rng: random.Random, cfg: SkillsConfig, family: str) -> dict:
    """One problem of a family: question, GSM8K-form answer ("... #### 12"), final number, family, chain."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    values = numbers(family, rng, cfg)
    words = {"name": name, "other": other, "item": item}
    question = rng.choice(QUESTIONS[family]).format(**words, **values)
    chain = []
    for op, left, right, result in EQUATIONS[family]:
        x, y = values[left], int(right) if right.isdigit() else values[right]
        values[result] = apply(op, x, y)
        chain.append((op, x, y, values[result]))
    first = FIRST[family].format(**words, **values)
    opener = OPENERS[rng.randrange(len(OPENERS)) % cfg.phrasings]
    sentences = [opener + first]
    for op, x, y, z in chain:  # draw from all phrasings, then fold: the same random stream for any cfg.phrasings
        say = SAY[rng.randrange(len(SAY)) % cfg.phrasings]
        sentences.append(say.format(eq=f"{x} {op} {y} = {z}", item=item))
    final = chain[-1][3]
    return {"question": question, "answer": " ".join(sentences) + f" #### {final}", "final": final,
            "family": family, "chain": chain}


def family_of(question: str) -> str:
    """The family a question of this benchmark belongs to (InputError for a question it did not make)."""
    for marker, family in MARKERS:
        if marker in question:
            return family
    raise InputError(f"skills: cannot tell the family of {question[:60]!r}; not a skills-benchmark question")


def _draw(cfg: SkillsConfig, rng: random.Random, families: list[str], avoid: set[str]) -> list[dict]:
    """One new problem per listed family, none of whose questions is in avoid (avoid grows)."""
    out = []
    for family in families:
        misses = 0
        p = problem(rng, cfg, family)
        while p["question"] in avoid:
            misses += 1
            check_room(misses, len(avoid), len(avoid) + 1)
            p = problem(rng, cfg, family)
        avoid.add(p["question"])
        out.append(p)
    return out


def evenly(cfg: SkillsConfig, n: int, rng: random.Random) -> list[str]:
    """n family names, every family as often as n allows, in a seeded order."""
    names = [cfg.families[i % len(cfg.families)] for i in range(n)]
    rng.shuffle(names)
    return names


def generate(cfg: SkillsConfig) -> tuple[list[dict], list[dict]]:
    """(train, test) problems, each drawn evenly over the families; test questions never occur in train."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    test = _draw(cfg, rng, evenly(cfg, cfg.n_test, rng), seen)  # test first: train is what changes with n_train
    train = _draw(cfg, rng, evenly(cfg, cfg.n_train, rng), seen)
    return train, test


def fresh_problems(cfg: SkillsConfig, n: int, seed: int, avoid: set[str]) -> list[dict]:
    """n i.i.d. problems (families evenly), none of whose questions is in avoid."""
    rng = random.Random(seed)
    return _draw(cfg, rng, evenly(cfg, n, rng), set(avoid))


def similar_problems(questions: list[str], cfg: SkillsConfig, seed: int, avoid: set[str] = frozenset()) -> list[dict]:
    """One new problem per given question, of the same family (the same skill), with everything else
    new: numbers, names, things, phrasings. Questions in `avoid` are never returned."""
    rng = random.Random(seed)
    return _draw(cfg, rng, [family_of(q) for q in questions], set(avoid))


def pretraining_texts(cfg: SkillsConfig, n_problems: int = 2000, fact_passes: int = 4, seed: int = 1) -> list[str]:
    """Related text to pretrain on, uneven by design: every +/- fact fact_passes times, every * and / fact
    weak_fact_passes times, and worked problems (in the corpus's own phrasing) of the pretrained families only."""
    top, f = cfg.max_number, cfg.max_factor
    strong = [f"{a} + {n} = {a + n}." for a in range(top + 1) for n in range(1, top - a + 1)]
    strong += [f"{a} - {n} = {a - n}." for a in range(1, top + 1) for n in range(1, a + 1)]
    weak = [f"{a} * 2 = {2 * a}." for a in range(1, top // 2 + 1)] + [f"{2 * a} / 2 = {a}." for a in range(1, top // 2 + 1)]
    weak += [f"{a} * {n} = {a * n}." for a in range(2, f + 1) for n in range(2, f + 1)]
    weak += [f"{a * n} / {n} = {a}." for a in range(2, f + 1) for n in range(2, f + 1)]
    rng = random.Random(seed)
    facts = strong * fact_passes + weak * cfg.weak_fact_passes
    rng.shuffle(facts)
    texts = [" ".join(facts[i : i + 8]) for i in range(0, len(facts), 8)]
    if not cfg.pretrained or not n_problems:
        return texts
    train, test = generate(cfg)
    taken = {p["question"] for p in train + test}
    for p in _draw(cfg, rng, [cfg.pretrained[i % len(cfg.pretrained)] for i in range(n_problems)], taken):
        plain = [PRETRAIN_SAY[op].format(x=x, y=y, z=z) for op, x, y, z in p["chain"]]
        texts.append(p["question"] + "\nAnswer: " + " ".join(plain) + f" #### {p['final']}")
    return texts
