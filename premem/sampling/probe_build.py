"""`premem probe build` with a model: the probe types the model writes, and the whole probe set.

premem.data.probes draws the probe prompts and makes every type that needs no model; this module
loads cfg.model (a model directory, or a run: its last checkpoint) and adds

    random_tokens        as many random token ids as y+ has, from the model's tokenizer, decoded
    rephrase_chosen      y+ rewritten by the model through cfg.rephrase_prompt (greedy; model_written: true)
    rephrase_rejected    y- rewritten the same way

    probes = build_probes(ProbeBuildConfig(data="pairs.jsonl", out="probes/", model="runs/sft"))
"""

from __future__ import annotations

import random

from premem.data.examples import Example
from premem.data.probes import ProbeBuildConfig, ProbeRow, ProbeSet
from premem.data.probes import build_probes as build_offline
from premem.errors import InputError
from premem.models import load_config, load_tokenizer
from premem.runs import find_checkpoints
from premem.sampling.backend import SamplingParams
from premem.sampling.engines import make_backend
from premem.sampling.encoding import context_length


def build_probes(cfg: ProbeBuildConfig) -> ProbeSet:
    """The probe set of cfg, the model-written types included when cfg.model names a model."""
    cfg.exec.validate()
    return build_offline(cfg, model_rows)


def model_rows(cfg: ProbeBuildConfig, probes: list[Example]) -> tuple[list[ProbeRow], dict]:
    """random_tokens from the model's tokenizer, and the model's rephrases of y+ and y- (the manifest's
    `model` section with them)."""
    options = cfg.exec.options
    checkpoint = find_checkpoints(cfg.model)[-1]
    tokenizer = load_tokenizer(checkpoint, options)
    rows = random_token_rows(probes, tokenizer, cfg.seed)
    info = {"path": str(checkpoint.location), "rephrased": 0, "rephrase_dropped": 0}
    if not cfg.rephrase:
        return rows, info
    if "{response}" not in cfg.rephrase_prompt:
        raise InputError("rephrase_prompt: it must hold {response} (and may hold {prompt})")
    context = context_length(load_config(checkpoint, options))
    asks, where = [], []
    for ex in probes:
        for kind, response in (("rephrase_chosen", ex.solution), ("rephrase_rejected", ex.rejected)):
            ids = tokenizer(cfg.rephrase_prompt.format(prompt=ex.question, response=response))["input_ids"]
            if len(ids) < context:
                asks.append(ids)
                where.append((ex, kind, response))
            else:
                info["rephrase_dropped"] += 1
    backend = make_backend(cfg.exec.backend, checkpoint, options)
    try:
        answers = _greedy(backend, asks, [max(1, min(cfg.rephrase_max_new_tokens, context - len(ids))) for ids in asks],
                          cfg.seed)
    finally:
        backend.close()
    for (ex, kind, response), text in zip(where, answers):
        if text and text != response:
            rows.append(ProbeRow(ex.example_id, ex.question, kind, text, model_written=True))
            info["rephrased"] += 1
        else:
            info["rephrase_dropped"] += 1
    info["rephrase_prompt"] = cfg.rephrase_prompt
    return rows, info


def random_token_rows(probes: list[Example], tokenizer, seed: int) -> list[ProbeRow]:
    """For each probe, as many random (non-special) token ids as its y+ has, decoded."""
    rng = random.Random(f"{seed}/random_tokens")
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    rows = []
    for ex in probes:
        length = len(tokenizer(" " + ex.solution, add_special_tokens=False)["input_ids"])
        text = tokenizer.decode(rng.choices(vocab, k=max(1, length)), skip_special_tokens=True).strip()
        if text:
            rows.append(ProbeRow(ex.example_id, ex.question, "random_tokens", text, model_written=False))
    return rows


def _greedy(backend, asks: list[list[int]], caps: list[int], seed: int) -> list[str]:
    """Each prompt's greedy continuation of at most its cap tokens, up to a blank line or "\nDone."."""
    answers: list = [None] * len(asks)
    for cap in sorted(set(caps)):  # only prompts near the context get a lower cap
        idx = [i for i, c in enumerate(caps) if c == cap]
        params = SamplingParams(samples=1, temperature=0.0, max_new_tokens=cap, stop=["\nDone.", "\n\n"])
        for i, comps in zip(idx, backend.generate([asks[i] for i in idx], params, [seed] * len(idx))):
            answers[i] = comps[0].text.strip()
    return answers
