"""Curation: which training examples to keep, or collect more of, from their learning dynamics.

    from premem.curate import CurateConfig, curate
    result = curate(CurateConfig(store="scores/", data="train.jsonl", strategy="premem_low", budget=0.25, out="curated/"))

Strategies (premem.curate.strategies, one registry name each): premem_low, random, loss,
difficulty, cartography, s2l. Per-example PreMem across runs, what premem_low ranks by:

    from premem.curate import example_scores
    from premem.metrics.premem import PAPER_TAU, TrainingCurves
    scores = example_scores(TrainingCurves.from_store(store), tau=PAPER_TAU)
"""

from premem.curate.api import CurateConfig, CurateResult, curate, parse_budget
from premem.curate.select import example_scores
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
    "parse_budget",
]
