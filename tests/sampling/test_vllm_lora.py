"""LoRA checkpoints on vLLM: adapters premem train leaves are served as adapters on one engine of their base
model (nothing written), and give what their merged copies give; an adapter vLLM refuses is merged, and the
log says which and why.

The run: LoRA adapters trained by premem train on the briefly pretrained tiny Llama (tests/sampling/conftest.py)
with 40 GSM8K problems, two checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from premem.models import load_tokenizer, local_model, materialize
from premem.runs import Checkpoint, find_checkpoints
from premem.execution import BackendOptions
from premem.sampling.backend import SamplingParams
from tests.conftest import shared
from tests.sampling.conftest import paper_prompt, paper_target

pytest.importorskip("vllm")

from premem.sampling.vllm_lora import (  # noqa: E402
    adapter_modules,
    adapter_rank,
    adapter_refusal,
    lora_engine_args,
    lora_request,
    serving,
)

OPTIONS = BackendOptions(threads=1)
GREEDY = SamplingParams(samples=1, temperature=0.0, max_new_tokens=48, stop=["\nDone."])
N_ROWS = 40


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = shared("gsm8k", "train.jsonl").read_text().splitlines()[:N_ROWS]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir, rows, tmp_path_factory) -> list[Checkpoint]:
    """premem train with lora: rank 8 on every linear layer, a checkpoint per epoch (a few seconds)."""
    from premem.train.api import train
    from premem.train.config import LoraConfig, TrainConfig

    root = tmp_path_factory.mktemp("lora")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(model=str(tiny_llama_dir), out=str(root / "run"), lr=3e-3, epochs=2, batch_size=8,
                      max_length=512, threads=1, progress=False, lora=LoraConfig(rank=8, alpha=16))
    cfg.train.path = str(data)
    return find_checkpoints(train(cfg))


@pytest.fixture(scope="module")
def pairs(lora_run, rows) -> tuple[list[list[int]], list[list[int]]]:
    tokenizer = load_tokenizer(lora_run[0])
    prompts = [tokenizer(paper_prompt(r["question"]))["input_ids"] for r in rows]
    targets = [tokenizer(paper_target(r["answer"]), add_special_tokens=False)["input_ids"] for r in rows]
    return prompts, targets


def adapter_with(base: Path, out: Path, **settings) -> Checkpoint:
    """A peft LoRA adapter on base with these LoraConfig settings, as one checkpoint of run r."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        **{"r": 4, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False, **settings}))
    model.save_pretrained(out / "checkpoint-1")
    return find_checkpoints(out)[0]


# -- what is served, without an engine ---------------------------------------------------------


def test_an_adapter_premem_trains_is_served_on_its_base(lora_run, tiny_llama_dir, tmp_path):
    c = lora_run[0]
    assert adapter_refusal(c) is None
    model_dir, tokenizer_dir, lora = serving(c, OPTIONS, tmp_path / "cache")
    # the base's tokenizer: it encodes as the adapter's (an adapter folder has no model config beside its own)
    assert Path(model_dir) == Path(tokenizer_dir) == tiny_llama_dir.resolve()
    assert (lora.lora_path, lora.lora_name) == (str(c.path.resolve()), f"{c.run}.step={c.step}")
    assert not (tmp_path / "cache").exists()  # nothing merged, nothing written


def test_a_refused_adapter_is_merged_and_the_log_says_why(tiny_llama_dir, tmp_path, caplog):
    """modules_to_save (a full copy of lm_head in the adapter): vLLM refuses it, so it is merged, in one INFO line."""
    c = adapter_with(tiny_llama_dir, tmp_path / "run", modules_to_save=["lm_head"])
    with caplog.at_level(logging.INFO, logger="premem.sampling.vllm_lora"):
        model_dir, tokenizer_dir, lora = serving(c, OPTIONS, tmp_path / "cache")
    assert lora is None and model_dir == tokenizer_dir == materialize(c, tmp_path / "cache")
    assert (model_dir / "config.json").is_file() and model_dir.parent == tmp_path / "cache"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "premem.sampling.vllm_lora"]
    assert line.startswith(f"{c.location}: merged into a full copy for vLLM") and "modules_to_save" in line
    assert "\n" not in line


@pytest.mark.parametrize("settings, why", [
    ({"use_dora": True}, "DoRA"),
    ({"r": 600}, "rank 600 is greater than max_lora_rank 512"),
    ({"bias": "lora_only"}, "bias"),
    ({"target_modules": ["q_proj", "lm_head"]}, "it adapts lm_head"),
])
def test_what_vllm_refuses_is_read_from_the_adapters_files(tiny_llama_dir, tmp_path, settings, why):
    assert why in adapter_refusal(adapter_with(tiny_llama_dir, tmp_path / "run", **settings))


def test_a_refused_adapter_without_a_cache_dir_is_an_input_error(tiny_llama_dir, tmp_path):
    from premem.errors import InputError

    c = adapter_with(tiny_llama_dir, tmp_path / "run", use_dora=True)
    with pytest.raises(InputError, match=r"vLLM needs a merged copy of this lora checkpoint \(vLLM does not yet"):
        serving(c, OPTIONS, None)


def test_the_engine_rank_modules_and_adapter_ids(lora_run, tiny_llama_dir, tmp_path):
    assert adapter_rank(lora_run[0].path) == 8
    # the engine wraps the adapted layers only (not the output layer)
    layers = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora_engine_args(lora_request(lora_run[0])) == {"enable_lora": True, "max_loras": 1, "max_lora_rank": 8,
                                                           "lora_target_modules": layers}
    assert adapter_modules(adapter_with(tiny_llama_dir, tmp_path / "q", r=4).path) == ("q_proj", "v_proj")
    assert adapter_rank(adapter_with(tiny_llama_dir, tmp_path / "a", r=4).path) == 8  # vLLM's smallest above 1
    assert adapter_rank(adapter_with(tiny_llama_dir, tmp_path / "b", r=17).path) == 32
    # one id per adapter; a retrained adapter in the same folder gets a new one (vLLM caches adapters by id)
    ids = [lora_request(c).lora_int_id for c in lora_run]
    assert len(set(ids)) == 2 and all(i > 0 for i in ids)
    c = adapter_with(tiny_llama_dir, tmp_path / "c")
    before = lora_request(c).lora_int_id
    weights = c.path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())
    assert lora_request(c).lora_int_id != before


# -- adapters against their merged copies, on engines (slow: ~30 s an engine) -------------------


def scores(backend, pairs) -> tuple[list[float], list[str]]:
    prompts, targets = pairs
    ppl = [t.perplexity for t in backend.target_logprobs(prompts, targets)]
    greedy = [c[0].text for c in backend.generate(prompts, GREEDY, list(range(len(prompts))))]
    return ppl, greedy


@pytest.mark.slow
def test_adapters_on_one_engine_give_what_their_merged_copies_give(lora_run, pairs, tmp_path):
    from premem.sampling.vllm_backend import VLLMBackend

    cache = tmp_path / "cache"
    served = VLLMBackend(lora_run[0], OPTIONS, cache_dir=cache)
    try:
        adapters = [scores(served, pairs)]
        assert served.reload(lora_run[1])  # the next adapter on the same engine
        adapters.append(scores(served, pairs))
    finally:
        served.close()
    assert not cache.exists()  # no merged copy on disk

    copies = [local_model(materialize(c, tmp_path / "merged")) for c in lora_run]
    merged = VLLMBackend(copies[0], OPTIONS)
    try:
        expected = [scores(merged, pairs)]
        if not merged.reload(copies[1]):  # engine reuse where the backend has it; else a new engine
            merged.close()
            merged = VLLMBackend(copies[1], OPTIONS)
        expected.append(scores(merged, pairs))
    finally:
        merged.close()

    for (ppl, greedy), (ppl_ref, greedy_ref) in zip(adapters, expected):
        assert max(abs(a / b - 1) for a, b in zip(ppl, ppl_ref)) < 1e-4
        assert greedy == greedy_ref
    assert adapters[0][0] != adapters[1][0]  # the second adapter was served, not the first again
    assert sum(g.strip() != "" for g in adapters[1][1]) > N_ROWS // 2
