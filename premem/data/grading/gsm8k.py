"""The GSM8K grader: the answer is the number after "####"; numbers are compared as decimals."""

from __future__ import annotations

import re
from decimal import Decimal

from premem.data.grading.base import GraderBase, after_answer_is, cut_at_done


# A number as it appears in GSM8K text: "-3", "$1,000.50", ".5", "18" in "18 dollars".
_NUMBER = re.compile(
    r"""
    (?<![\w.,])                       # not the tail of a word or of a longer number ("x2", "1,5")
    (?P<sign>[-+\u2212]?)             # sign, ASCII or the Unicode minus
    \$?\s?                            # currency
    (?:
        (?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?   # 1,000 / 1000 / 1000.50
      | (?P<bare>\.\d+)                                   # .5
    )
    """,
    re.VERBOSE,
)
# Calculator annotations in GSM8K solutions: "48/2 = <<48/2=24>>24". They repeat numbers
# out of order (the last number of "<<48/2=24>>" is fine, but "<<24*2=48>>" in the middle
# of a line is not what the line says), so they are removed before anything is read.
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _canonical(match: re.Match) -> str:
    """The matched number as a plain decimal string: "$1,000.00" -> "1000", ".50" -> "0.5"."""
    sign = "-" if match["sign"] in ("-", "\u2212") else ""
    digits = match["int"].replace(",", "") + (match["frac"] or "") if match["int"] else "0" + match["bare"]
    text = format(Decimal(sign + digits), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def normalize_number(text: str) -> str | None:
    """The number a short answer string states, canonical; None if it is not just a number.

    Currency, thousands commas, a leading "+", "%", a trailing "." and unit words after the
    number are dropped ("$1,000.00" -> "1000", "18 dollars" -> "18", "50%" -> "50"). Anything
    with a second number in it ("12 - 5", "3/4") is not a number: None.
    """
    match = _NUMBER.match(text.strip())
    if match is None or re.search(r"\d", text.strip()[match.end():]):
        return None
    return _canonical(match)


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return None if match is None else _canonical(match)


def _last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else _canonical(last)


class GSM8KGrader(GraderBase):
    """GSM8K: the answer is the number after "####"."""

    name = "gsm8k"

    def extract_strict(self, text: str) -> str | None:
        """The first number on the line of the first "####"."""
        text = _CALCULATOR.sub("", cut_at_done(text))
        _, marker, after = text.partition("####")
        return _first_number(after.split("\n", 1)[0]) if marker else None

    def extract_flexible(self, text: str) -> str | None:
        """After "####", else after the last "The answer is", else the last number in the text."""
        text = _CALCULATOR.sub("", cut_at_done(text))
        _, marker, after = text.partition("####")
        if marker and (number := _first_number(after)) is not None:
            return number
        after = after_answer_is(text)
        if after is not None and (number := _first_number(after)) is not None:
            return number
        return _last_number(text)

    def gold_from_solution(self, solution: str) -> str | None:
        return self.extract_strict(solution)

    def equivalent(self, predicted: str, gold: str) -> bool:
        """Numerically equal when both are numbers ("1,000.00" == "1000"); else the same text."""
        a, b = normalize_number(predicted), normalize_number(gold)
        if a is not None and b is not None:
            return Decimal(a) == Decimal(b)
        return predicted.strip().lower() == gold.strip().lower()
