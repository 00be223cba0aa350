"""premem: pre-memorization data curation for LLM finetuning.

The package is split by stage, data flowing one way (see DESIGN.md §2):
data -> (train) -> (sampling) -> store -> metrics -> (curate) -> report.
"""

__version__ = "0.1.0"
