"""The MATH grader: the answer is the last \\boxed{}; equivalence is decided by HF math-verify.

Timeouts for math-verify. Its own timeouts use signal.alarm, which only works in the main
thread, so they are off here (parsing_timeout=None, timeout_seconds=None). A worker thread with
a deadline is not enough either: the slow cases are single C-level big-integer operations
(sympy evaluating 2^{2^{2^100}} or 9999999999^{99999999}) that hold the GIL, so the thread
waiting on the deadline never gets to run (measured: no wake-up in 60 s). Only a separate
process can be stopped mid-computation. So math-verify runs in helper processes: the workers
of a pebble ProcessPool (two by default), started with "spawn" on a grader's first real check,
in each process that grades. A check that passes its deadline gets its helper killed and
replaced by pebble, logs a warning and counts as not equivalent. The grader pickles as its
settings only, so it works from threads (which share the helpers), process pools and Ray
workers alike. The parent process never imports math-verify at all. `MathGrader.close()` stops
the helpers; so do collecting the grader and the process's exit. As with any spawn-based pool,
a script that grades needs the `if __name__ == "__main__":` guard: helpers import its main module.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import re
import threading
from concurrent.futures import wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, NamedTuple

from pebble import ProcessExpired, ProcessPool

from premem.data.grading.base import Grade, GraderBase, after_answer_is, cut_at_done

logger = logging.getLogger(__name__)


_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Math spans: $$...$$, $...$, \(...\), \[...\]; an escaped dollar (\$5) is money, not math.
# A \( or \[ span may not hold another of its own opener: otherwise every unclosed opener
# would scan to the end of the text, which is quadratic (a 120 KB sample of "\(" took ~50 s).
# With it each scan stops at the next opener, so the search is linear. (Dollars need no such
# rule: every unescaped $ closes the span before it, so only the last one can scan to the end.)
_MATH_SPAN = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$"
    r"|\\\(((?:(?!\\\().)+?)\\\)|\\\[((?:(?!\\\[).)+?)\\\]",
    re.DOTALL,
)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces matched), or None.

    `\\boxed 5` without braces gives the token after it. A last box left unclosed (a truncated
    sample) or an empty box gives None: the final answer cannot be read.
    """
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start + len(command):]
    if not rest.lstrip().startswith("{"):
        # "\boxed 5": the token after the command, up to a space or the end of the math span
        token = re.match(r"\s+([^\s$]+)", rest)
        return token[1] if token else None
    rest = rest.lstrip()
    depth, i = 0, 0
    while i < len(rest):
        if rest[i] == "\\":  # \{ and \} are literal braces (sets), \\ is a line break: skip both chars
            i += 2
            continue
        if rest[i] == "{":
            depth += 1
        elif rest[i] == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i].strip() or None
        i += 1
    return None


def _math_spans(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None).strip() for m in _MATH_SPAN.finditer(text)]


def normalize_latex(text: str) -> str:
    """A cheap canonical form for the fast path: identical forms are certainly equivalent.

    Only rewrites that never change meaning: surrounding $ and a final period go, \\dfrac and
    \\tfrac become \\frac, \\left/\\right and thin spaces go, and all whitespace goes.
    """
    text = text.strip().removesuffix(".").strip().strip("$").strip()
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    text = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", text)
    text = re.sub(r"\\[,;:! ]", "", text)
    return "".join(text.split())


class MathGrader(GraderBase):
    """MATH: the answer is the last \\boxed{}; equivalence by math-verify (in helper processes).

    close() stops this process's helpers; they also stop when the grader is collected and when
    the process exits.
    """

    name = "math"

    def __init__(self, timeout_s: float = 5.0, max_answer_chars: int = 1000, max_workers: int | None = None):
        self.timeout_s = timeout_s  # per equivalence check, parse + verify
        self.max_answer_chars = max_answer_chars  # longer "answers" are junk; never sent to sympy
        self.max_workers = max_workers  # helper processes; None: min(2, CPUs), enough for a few threads
        self._helpers: _Helpers | None = None  # made on first use, by the process that uses them
        self._lock = threading.Lock()

    def extract_strict(self, text: str) -> str | None:
        return last_boxed(cut_at_done(text))

    def extract_flexible(self, text: str) -> str | None:
        """The last box, else what follows the last "The answer is", else the last math span."""
        text = cut_at_done(text)
        if (boxed := last_boxed(text)) is not None:
            return boxed
        after = after_answer_is(text)
        if after is not None:
            line = after.strip().split("\n", 1)[0]
            spans = _math_spans(line)
            answer = spans[0] if spans else line.lstrip(":").strip().removesuffix(".").strip()
            if answer:
                return answer
        spans = _math_spans(text)
        return spans[-1] if spans else None

    def gold_from_solution(self, solution: str) -> str | None:
        return self.extract_strict(solution)

    def equivalent(self, predicted: str, gold: str) -> bool:
        """Same normalised string, else math-verify's verdict within timeout_s (False past it)."""
        settled = self._settled(predicted, gold)
        if settled is not None:
            return settled
        return self._verdict(predicted, gold, lambda: self._ask_helper(predicted, gold))

    def grade_many(self, pairs: list[tuple[str, str]]) -> list[Grade]:
        """grade() of every (text, gold) pair, asking math-verify once per distinct (answer, gold) and all at once:
        the checks run side by side on the helpers (samples of one query often agree), each within timeout_s."""
        extracted = [(self.extract_strict(text), self.extract_flexible(text), gold) for text, gold in pairs]
        asks = sorted({(answer, gold) for strict, flexible, gold in extracted for answer in (strict, flexible)
                       if answer is not None and gold and self._settled(answer, gold) is None})
        verdicts = self._verdicts(asks)

        def right(answer: str | None, gold: str) -> bool:
            if answer is None or not gold:
                return False
            settled = self._settled(answer, gold)
            return verdicts[answer, gold] if settled is None else settled

        grades = []
        for strict, flexible, gold in extracted:
            strict_ok = right(strict, gold)
            grades.append(Grade(strict, flexible, strict_ok, strict_ok if flexible == strict else right(flexible, gold)))
        return grades

    def _settled(self, predicted: str, gold: str) -> bool | None:
        """The verdict where the strings alone settle it (the same normal form; empty or junk-long: wrong); None
        where math-verify must be asked."""
        a, b = normalize_latex(predicted), normalize_latex(gold)
        if a == b:
            return bool(a)
        if not a or not b or max(len(predicted), len(gold)) > self.max_answer_chars:
            return False
        return None

    def _verdict(self, predicted: str, gold: str, ask: Callable[[], bool]) -> bool:
        """ask()'s verdict on (predicted, gold); False, with a warning, when its helper timed out or died."""
        try:
            return ask()
        except TimeoutError:  # pebble has killed the helper and starts a fresh one
            logger.warning(
                "math-verify gave no answer within %.1f s comparing %.80r with gold %.80r; counted as wrong",
                self.timeout_s, predicted, gold,
            )
            return False
        except ProcessExpired as error:  # the helper died mid-check; pebble starts a fresh one
            logger.warning(
                "math-verify's helper died (exit code %s) comparing %.80r with gold %.80r; counted as wrong",
                error.exitcode, predicted, gold,
            )
            return False
        except ImportError as error:
            raise RuntimeError("math-verify cannot be imported in the helper process (is it installed?)") from error

    def _verdicts(self, asks: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """math-verify's verdict on every (predicted, gold), all scheduled on the helpers at once. Checks a broken
        pool left unanswered are asked again one by one (equivalent's path, which starts a fresh pool)."""
        if not asks:
            return {}
        helpers = self._get_helpers()
        futures = {ask: helpers.pool.schedule(_math_verify_equivalent, args=ask, timeout=self.timeout_s) for ask in asks}
        try:
            _wait_all(helpers.pool, list(futures.values()))
        except RuntimeError:  # BrokenProcessPool: some checks will never be answered by this pool
            self._drop(helpers)
        verdicts = {}
        for (predicted, gold), future in futures.items():
            answered = future.done() and not future.cancelled() and not isinstance(future.exception(), RuntimeError)
            if answered:  # a verdict, a timeout or a helper that died: that check's answer
                verdicts[predicted, gold] = self._verdict(predicted, gold, future.result)
            else:
                verdicts[predicted, gold] = self.equivalent(predicted, gold)
        return verdicts

    def _ask_helper(self, predicted: str, gold: str) -> bool:
        """math-verify's verdict from one of this process's helpers."""
        helpers = self._get_helpers()
        try:
            return _check(helpers.pool, predicted, gold, self.timeout_s)
        except RuntimeError:  # BrokenProcessPool is one
            # The pool is unusable: an idle helper died (pebble then gives up on the whole pool),
            # close() stopped it meanwhile, or its helpers could not start. A fresh pool gets one
            # more try.
            self._drop(helpers)
        try:
            return _check(self._get_helpers().pool, predicted, gold, self.timeout_s)
        except RuntimeError as error:
            raise RuntimeError("the math-verify helper process failed to start") from error

    def _get_helpers(self) -> _Helpers:
        """This process's pool of helpers, made on first use (nothing starts until a check)."""
        with self._lock:
            if self._helpers is None or self._helpers.pid != os.getpid():
                # none yet, or we are a fork of the process that made them: those are not ours to use
                pool = ProcessPool(
                    max_workers=self.max_workers or min(2, os.cpu_count() or 1),
                    max_tasks=0,  # a helper lives until it is killed; its imports cost seconds
                    initializer=_start_helper,
                    # not fork: forking a threaded parent (pebble's own threads, Ray, vLLM) is unsafe
                    context=multiprocessing.get_context("spawn"),
                )
                # multiprocessing calls this when the grader is collected and when the process
                # exits, atexit or not: a process-pool worker that exits with helpers still running
                # would otherwise wait for them (non-daemon children) forever
                stop = multiprocessing.util.Finalize(self, _stop_pool, args=(pool,), exitpriority=10)
                self._helpers = _Helpers(os.getpid(), pool, stop)
            return self._helpers

    def _drop(self, helpers: _Helpers) -> None:
        with self._lock:
            if self._helpers is helpers:
                self._helpers = None
        helpers.stop()

    def close(self) -> None:
        """Stop the helper processes now; a later check starts new ones."""
        with self._lock:
            helpers, self._helpers = self._helpers, None
        if helpers is not None and helpers.pid == os.getpid():  # a fork leaves its parent's alone
            helpers.stop()

    # Pickling (process pools, Ray) sends the settings only; the receiver starts its own helpers.
    def __getstate__(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s, "max_answer_chars": self.max_answer_chars, "max_workers": self.max_workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


# -----------------------------------------------------------------------------
# math-verify helper processes: the workers of a pebble ProcessPool


class _Helpers(NamedTuple):
    pid: int  # the process that made the pool; only it may use or stop it
    pool: ProcessPool
    stop: Callable[[], None]  # stops the pool, once, whoever calls it first


def _check(pool: ProcessPool, predicted: str, gold: str, timeout_s: float) -> bool:
    """One check in the pool: the verdict, or the exception pebble gives for it."""
    future = pool.schedule(_math_verify_equivalent, args=(predicted, gold), timeout=timeout_s)
    # A pool that breaks as the check comes in (helpers that die at once) can leave its future
    # pending forever (seen with pebble 5.2.3), so look at the pool now and then, not wait blind.
    while not wait([future], timeout=1.0).done:
        if not pool.active:
            raise BrokenProcessPool("the pool stopped without answering")
    return future.result()


def _wait_all(pool: ProcessPool, futures: list) -> None:
    """Wait for every check, looking at the pool now and then as _check does (a broken pool answers none)."""
    pending = futures
    while pending:
        pending = list(wait(pending, timeout=1.0).not_done)
        if pending and not pool.active:
            raise BrokenProcessPool("the pool stopped without answering")


def _stop_pool(pool: ProcessPool) -> None:
    pool.stop()  # at once; a check still waiting on this pool retries on a fresh one
    pool.join()


def _start_helper() -> None:
    """Runs once in each new helper, before its first check, so outside every check's timeout."""
    # the timeouts are pebble's, so math-verify's warning that its own are off is noise
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        import math_verify  # noqa: F401  (sympy and all, a second or more: not on a check's clock)
    except ImportError:
        pass  # each check imports it again, and that ImportError reaches the parent


def _math_verify_equivalent(predicted: str, gold: str) -> bool:
    """math-verify's verdict (runs in a helper). Both sides are bare LaTeX answers."""
    from math_verify import LatexExtractionConfig, parse, verify

    # Wrapped in \boxed{} and read with the boxed pattern first: the whole string is the answer,
    # no guessing which part of it is. Only LaTeX extraction: the plain-number fallback could
    # pick a stray digit out of LaTeX that failed to parse and call it a match.
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    try:
        gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
        predicted_parsed = parse("\\boxed{" + predicted + "}", extraction_config=config, parsing_timeout=None)
        return verify(gold_parsed, predicted_parsed, timeout_seconds=None)
    except ImportError:
        raise  # a broken install, not a wrong answer
    except Exception:
        return False  # LaTeX that math-verify cannot read is not a match
