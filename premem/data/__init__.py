"""Datasets in any common form -> canonical examples; prompt templates; answer graders.

    from premem.data import DataConfig, load_examples, get_template, get_grader
    examples = load_examples(DataConfig(path="../shared/data/gsm8k/train.jsonl"))
    rendered = get_template("paper").render(examples[0])   # .prompt, .target
"""

from premem.data.examples import (
    AUTO_ORDER,
    CANONICAL_FIELDS,
    FORMATS,
    DataConfig,
    Example,
    ExampleSet,
    dataset_fingerprint,
    detect_format,
    load_example_set,
    load_examples,
)
from premem.data.grading import Grade, get_grader
from premem.data.io import Table, read_rows, read_table
from premem.data.templates import (
    TEMPLATES,
    ChatTemplate,
    PaperTemplate,
    RenderedExample,
    Template,
    get_template,
)

__all__ = [
    "AUTO_ORDER",
    "CANONICAL_FIELDS",
    "FORMATS",
    "TEMPLATES",
    "ChatTemplate",
    "DataConfig",
    "Example",
    "ExampleSet",
    "Grade",
    "PaperTemplate",
    "RenderedExample",
    "Table",
    "Template",
    "dataset_fingerprint",
    "detect_format",
    "get_grader",
    "get_template",
    "load_example_set",
    "load_examples",
    "read_rows",
    "read_table",
]
