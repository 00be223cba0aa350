"""What a run trains on: a seeded subset of the examples, rendered into TRL's rows.

    examples = subset(data.examples, cfg.data_fraction, cfg.seed)
    rows = render_rows(data, examples, cfg.template, tokenizer, cfg.max_length)
"""

from __future__ import annotations

import numpy as np

from premem.data import Example, ExampleSet, get_template
from premem.errors import InputError


def subset(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """A seeded fraction of the examples, in file order.

    The first round(fraction * n) of one seeded permutation: for a given seed the subset of a
    smaller fraction lies inside that of a larger one, so runs over fractions are nested.
    """
    if fraction >= 1.0:
        return list(examples)
    n = max(1, round(fraction * len(examples)))
    keep = set(np.random.default_rng(seed).permutation(len(examples))[:n].tolist())
    return [ex for i, ex in enumerate(examples) if i in keep]


def render_rows(data: ExampleSet, examples: list[Example], template_name: str, tokenizer, limit: int,
                preference: bool = False) -> list[dict]:
    """TRL prompt-completion rows ({"prompt", "completion", "example_id"}), length-checked.

    preference=True: TRL preference rows ({"prompt", "chosen", "rejected", "example_id"}), each
    response rendered like a target (the examples must hold a rejected response).

    TRL tokenizes prompt and prompt+completion with the tokenizer's special tokens and masks
    the prompt out of the loss (completion-only loss). The paper template's prompt is plain
    text, so that gives what `premem score` scores: tokenizer(prompt) + tokenizer(target,
    add_special_tokens=False). A chat prompt already holds its special tokens as text; a BOS
    written there is stripped, since the tokenizer adds it back.
    TRL appends eos to a completion that does not end with it: the model also learns to
    stop after the paper template's "\\nDone.".
    """
    template = get_template(template_name, tokenizer)
    chat = template_name == "chat"
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    rows = []
    for ex in examples:
        r = template.render(ex)
        prompt = r.prompt
        if chat and adds_bos and prompt.startswith(bos):
            prompt = prompt[len(bos):]
        n_prompt = len(tokenizer(prompt)["input_ids"])
        for name, target in [("target", r.target)] + ([("rejected response", r.rejected)] if preference else []):
            n = n_prompt + len(tokenizer(target, add_special_tokens=False)["input_ids"])
            n += 0 if target.endswith(tokenizer.eos_token) else 1
            if n > limit:
                raise InputError(
                    f"{data.path} example {ex.example_id}: prompt and {name} take {n} tokens, more than the {limit} "
                    "allowed (max_length, or the model's context); raise max_length or drop the example"
                )
        if preference:
            rows.append({"prompt": prompt, "chosen": r.target, "rejected": r.rejected, "example_id": ex.example_id})
        else:
            rows.append({"prompt": prompt, "completion": r.target, "example_id": ex.example_id})
    return rows
