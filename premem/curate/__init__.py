"""Curation: which training examples to collect more of, from their pre-memorization accuracy.

    from premem.curate import example_scores, lowest_premem
    scores = example_scores(TrainingCurves.from_store(store), tau=-2.3)
    subset = lowest_premem(scores, fraction=0.25)
"""

from premem.curate.select import example_scores, lowest_premem, write_subset

__all__ = ["example_scores", "lowest_premem", "write_subset"]
