"""Preparing premem score's work: every checkpoint tokenizes alike, prompts and gold targets tokenized once
and checked against the model's context (premem.sampling.job cuts them into tasks)."""

from __future__ import annotations

from dataclasses import dataclass

from premem.data import Example, ExampleSet
from premem.errors import InputError
from premem.models import check_same_tokenizer, load_tokenizer
from premem.runs import Checkpoint
from premem.execution import BackendOptions
from premem.sampling.backend import SamplingParams


def check_tokenizers(checkpoints: list[Checkpoint], options: BackendOptions):
    """Every checkpoint must tokenize alike: the scores of a run are compared across them."""
    tokenizers = [load_tokenizer(c, options) for c in checkpoints]
    check_same_tokenizer(checkpoints, tokenizers)
    return tokenizers[0]


def context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise InputError(f"{config.name_or_path}: cannot tell the model's context length from its config")


@dataclass
class Encoded:
    examples: list[Example]
    prompt_ids: list[list[int]]
    target_ids: list[list[int]] | None
    max_new_tokens: list[int]


def encode(ds: ExampleSet, template, tokenizer, context: int, params: SamplingParams, split: str) -> Encoded:
    """Tokenize prompts (with special tokens) and targets (without), and check they fit."""
    chat = getattr(template, "tokenizer", None) is not None  # chat prompts carry their own special tokens
    prompts, targets, caps = [], [], []
    for ex in ds.examples:
        r = template.render(ex)
        p = tokenizer(r.prompt, add_special_tokens=not chat)["input_ids"]
        t = tokenizer(r.target, add_special_tokens=False)["input_ids"]
        need = len(p) + (len(t) if split == "train" else 1)
        if need > context:
            what = "prompt and gold target" if split == "train" else "prompt"
            raise InputError(
                f"{ds.path} example {ex.example_id}: {what} take {need} tokens, more than the model's context "
                f"of {context}; shorten it or drop the example"
            )
        prompts.append(p)
        targets.append(t)
        caps.append(max(1, min(params.max_new_tokens, context - len(p))))
    return Encoded(ds.examples, prompts, targets if split == "train" else None, caps)
