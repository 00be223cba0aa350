"""Curation: which training examples to keep, or collect more of, from their learning dynamics.

    from premem.curate import CurateConfig, curate
    result = curate(CurateConfig(store="scores/", data="train.jsonl", strategy="premem_low", budget=0.25, out="curated/"))

Strategies (premem.curate.strategies, one registry name each): premem_low, random, loss,
difficulty, cartography, s2l. The first per-example scoring stays importable as before:

    from premem.curate import example_scores, lowest_premem
    scores = example_scores(TrainingCurves.from_store(store), tau=-2.3)
    subset = lowest_premem(scores, fraction=0.25)
"""

from premem.curate.api import CurateConfig, CurateResult, curate, parse_budget
from premem.curate.select import example_scores, lowest_premem, write_subset
from premem.curate.strategies import (
    STRATEGIES,
    UNAVAILABLE,
    CurationInput,
    Selection,
    Strategy,
    describe,
    get_strategy,
)

__all__ = [
    "STRATEGIES",
    "UNAVAILABLE",
    "CurateConfig",
    "CurateResult",
    "CurationInput",
    "Selection",
    "Strategy",
    "curate",
    "describe",
    "example_scores",
    "get_strategy",
    "lowest_premem",
    "parse_budget",
    "write_subset",
]
