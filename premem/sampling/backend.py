"""The small interface every sampling backend implements (premem.sampling.engines names them).

A backend owns one loaded checkpoint and answers three questions about it:

    generate(prompt_ids, params, seeds)     -> k sampled continuations per prompt
    target_logprobs(prompt_ids, target_ids) -> summed log-probability of each gold target
                                               under teacher forcing, and its token count
    target_argmax(prompt_ids, target_ids)   -> under the same teacher forcing, the most likely
                                               token at each target position and the sum of
                                               their log-probabilities (the probes' greedy y*)

A backend is built on one checkpoint and can take others of the same architecture
(`reload(checkpoint) -> bool`), so an engine's start-up is paid once per run, not per checkpoint.

This protocol is everything callers use: they never ask which backend they hold or reach
into one (the engines' registry is premem.sampling.engines).

All take token ids, not text: the caller tokenizes once with the checkpoint's tokenizer
(prompt with special tokens, target without, concatenated), so the two backends score the
very same tokens and a perplexity means the same thing whichever produced it.

Seeds are per prompt: sample j of prompt i must not depend on which other prompts share
its batch, so a shard re-run after a crash reproduces the rows it lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from premem.errors import InputError
# how a backend loads and runs a checkpoint is an execution setting (premem.execution); named here too for callers
from premem.execution import check_int, check_number


@dataclass
class SamplingParams:
    """How answers are sampled (defaults: the paper's, DESIGN.md §1)."""

    samples: int = 5
    """k: answers sampled per query."""
    temperature: float = 0.8
    """Sampling temperature; 0 means greedy."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_new_tokens: int = 256
    """Longest answer generated."""
    stop: list[str] | None = None
    """Strings that end an answer (cut from the returned text); None: the prompt template's ("\nDone." for paper)."""
    seed: int = 2
    """Base seed; each query's seed is derived from it, its example id and the checkpoint step."""

    def validate(self, prefix: str = "sampling.") -> None:
        """Refuse settings no backend can sample with (before any work starts, not inside an actor)."""
        check_int(prefix + "samples", self.samples, 1)
        check_number(prefix + "temperature", self.temperature, lambda t: t >= 0, "a number >= 0 (0: greedy)")
        check_number(prefix + "top_p", self.top_p, lambda p: 0 < p <= 1, "a number in (0, 1]")
        check_int(prefix + "max_new_tokens", self.max_new_tokens, 1)
        check_int(prefix + "seed", self.seed, 0)
        stop = self.stop
        if stop is not None and not (isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)):
            raise InputError(f"{prefix}stop: expected a list of strings, got {self.stop!r}")


@dataclass(frozen=True)
class Completion:
    text: str  # the generated answer, cut at the first stop string
    n_tokens: int  # tokens generated (stop string included where the backend generated it)


@dataclass(frozen=True)
class TargetLogprob:
    sum_logprob: float  # sum over target tokens of log p(token | prompt, earlier target tokens)
    n_tokens: int

    @property
    def perplexity(self) -> float:
        import math

        # a summed log-probability is <= 0; float rounding on a memorized trace can land a hair above,
        # and the store refuses a perplexity below 1 as impossible
        return math.exp(max(-self.sum_logprob, 0.0) / self.n_tokens)


@dataclass(frozen=True)
class TargetArgmax:
    """The model's own choice along a gold target: at each target position the most likely token given the
    prompt and the gold tokens before it, and the sum of those tokens' log-probabilities (each given the gold
    prefix). The probes' greedy response y*; its log-probability is what the squeezing effect inflates."""

    tokens: tuple[int, ...]
    sum_logprob: float

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@runtime_checkable
class Backend(Protocol):
    name: str  # the registry name (for messages and records; callers never branch on it)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[Completion]]:
        """params.samples completions for each prompt; prompt i sampled with seeds[i]."""
        ...

    def target_logprobs(self, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> list[TargetLogprob]:
        """Teacher-forced log-probability of each target given its prompt."""
        ...

    def target_argmax(self, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> list[TargetArgmax]:
        """Teacher forcing on [prompt; target] as target_logprobs does, read at the argmax of each target position."""
        ...

    def reload(self, checkpoint) -> bool:
        """Load another checkpoint of the same architecture into the engine held, in place: True when done, and
        the backend then gives exactly what a new one on that checkpoint gives; False, with nothing changed, when
        it cannot (another architecture, config, tokenizer or dtype; an adapter or file kind it does not reload):
        the caller closes it and builds a new one (premem.sampling.actors)."""
        ...

    def close(self) -> None:
        """Free the model (and the engine's memory) before the next checkpoint is loaded."""
        ...


def check_scoring_inputs(prompt_ids: list[list[int]], target_ids: list[list[int]], what: str = "target_logprobs"
                         ) -> None:
    """What every backend's target_logprobs and target_argmax require of their inputs."""
    if len(prompt_ids) != len(target_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(target_ids)} targets")
    for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
        if not p or not t:
            raise InputError(f"{what}: input {i} has an empty {'prompt' if not p else 'target'}")
