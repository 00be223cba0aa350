"""The two sampling backends on a real tiny Llama (trained briefly on GSM8K), no mocks.

transformers first, then vLLM against it: the same perplexities (1e-3 relative), the same
greedy answers and teacher-forced argmax, the same probe-tracking rows, reproducible seeded
sampling, stop strings cut. Both implement the whole Backend protocol. A checkpoint reloaded into a
running backend gives bit for bit what a fresh one on it gives. The vLLM engine starts once for the
module (~30 s; once more for the reload check) and is shut down by the last test; the transformers
reference results are computed before it starts, so the two never compete for the cores.
"""

from __future__ import annotations

import json

import psutil
import pytest
import torch

from premem.errors import InputError
from premem.execution import BackendOptions
from premem.sampling.backend import Backend, Completion, SamplingParams
from premem.sampling.hf import HFBackend, cut_at_stop
from tests.conftest import shared
from tests.sampling.conftest import paper_prompt, paper_target

N = 16  # GSM8K test questions
MAX_NEW = 64
SEEDS = list(range(1000, 1000 + N))
# 16 prompts: two batches, so batching is exercised. One thread: on a machine other jobs share,
# two OpenMP threads on two cores spin-wait on each other and run 5-25x slower.
OPTIONS = BackendOptions(threads=1, batch_size=8)
GREEDY = SamplingParams(samples=3, temperature=0.0, max_new_tokens=MAX_NEW, stop=["\nDone."])
SAMPLE = SamplingParams(samples=4, temperature=0.8, top_p=0.95, max_new_tokens=MAX_NEW, stop=["\nDone."])
STOPS = ["=", "\n"]  # strings the tiny model's answers hold early on ("2*3=<<2*3=6>>6\n")


@pytest.fixture(scope="module")
def hf(tiny_llama):
    backend = HFBackend(tiny_llama, OPTIONS)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def pairs(hf):
    """Token ids of N GSM8K prompts (with BOS) and gold targets (without), the paper's template."""
    lines = shared("gsm8k", "test.jsonl").read_text().splitlines()[:N]
    rows = [json.loads(line) for line in lines]
    tok = hf.tokenizer
    prompts = [tok(paper_prompt(r["question"]))["input_ids"] for r in rows]
    targets = [tok(paper_target(r["answer"]), add_special_tokens=False)["input_ids"] for r in rows]
    assert all(p[0] == tok.bos_token_id for p in prompts)
    return prompts, targets


@pytest.fixture(scope="module")
def later(tiny_llama, tmp_path_factory):
    """Another checkpoint of the tiny Llama: the same architecture, config and tokenizer, trained 20 steps more."""
    import shutil

    from premem.train.tiny import pretrain_briefly

    path = tmp_path_factory.mktemp("later") / "llama"
    shutil.copytree(tiny_llama.path, path)
    texts = [json.loads(line)["question"] for line in shared("gsm8k", "train.jsonl").read_text().splitlines()[:200]]
    pretrain_briefly(path, texts, steps=20, lr=3e-3, seed=1, threads=1)
    return type(tiny_llama)(run="tiny", step=20, path=path, kind="full")


@pytest.fixture(scope="module")
def wider(tiny_llama, tmp_path_factory):
    """A checkpoint of another architecture: the tiny Llama's files, but a wider MLP in its config and weights."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("wider")
    config = AutoConfig.from_pretrained(tiny_llama.path, local_files_only=True)
    config.intermediate_size += 8
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    path = root / "llama"
    shutil.copytree(tiny_llama.path, path)  # the same tokenizer and generation config
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "model" / name, path / name)
    return type(tiny_llama)(run="wider", step=0, path=path, kind="full")


def outputs(backend, pairs) -> dict:
    """Everything a backend gives on the test pairs: perplexities, seeded samples, greedy answers, y*."""
    prompts, targets = pairs
    return {"logprobs": backend.target_logprobs(prompts, targets), "samples": backend.generate(prompts, SAMPLE, SEEDS),
            "greedy": backend.generate(prompts, GREEDY, SEEDS), "argmax": backend.target_argmax(prompts, targets)}


def probe_task(checkpoint, pairs):
    """Probe tracking's work for one checkpoint: each GSM8K gold answer as a probe's chosen response, and y*."""
    from premem.sampling.probes import ProbeTask

    prompts, targets = pairs
    ids = list(range(len(prompts)))
    return ProbeTask(checkpoint, [(i, "chosen") for i in ids], prompts, targets, ids, prompts, targets)


def probe_rows(backend, checkpoint, pairs):
    """The probe_scores rows `premem probe track` writes for this checkpoint, through this backend."""
    from premem.models import load_tokenizer
    from premem.sampling.probes import result_rows, score_task

    return result_rows(score_task(backend, probe_task(checkpoint, pairs)), load_tokenizer(checkpoint, OPTIONS))


@pytest.fixture(scope="module")
def hf_reference(hf, pairs, tiny_llama):
    """What vLLM must reproduce, computed before the engine starts."""
    prompts, targets = pairs
    return {"logprobs": hf.target_logprobs(prompts, targets), "greedy": hf.generate(prompts, GREEDY, SEEDS),
            "argmax": hf.target_argmax(prompts, targets), "probe_rows": probe_rows(hf, tiny_llama, pairs)}


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# -- shared checks ----------------------------------------------------------------------------


def check_seeded_sampling(backend, prompts):
    first = backend.generate(prompts, SAMPLE, SEEDS)
    assert [len(c) for c in first] == [SAMPLE.samples] * N
    assert first == backend.generate(prompts, SAMPLE, SEEDS), "same seeds, different samples"
    # a prompt's samples depend on its own seed, not on the batch it ran in
    assert first[:3] == backend.generate(prompts[:3], SAMPLE, SEEDS[:3])
    assert first[5] == backend.generate([prompts[5]], SAMPLE, [SEEDS[5]])[0]
    other = backend.generate(prompts, SAMPLE, [s + 1 for s in SEEDS])
    assert all(a != b for a, b in zip(first, other)), "different seeds, same samples"
    # the k samples of one prompt are different draws
    assert all(len({c.text for c in samples}) > 1 for samples in first)
    assert all(0 < c.n_tokens <= MAX_NEW for samples in first for c in samples)


def check_stop_strings(backend, prompts):
    greedy = SamplingParams(samples=1, temperature=0.0, max_new_tokens=MAX_NEW, stop=[])
    free = backend.generate(prompts, greedy, SEEDS)
    cut = backend.generate(prompts, SamplingParams(**{**greedy.__dict__, "stop": STOPS}), SEEDS)
    stopped = 0
    for [f], [c] in zip(free, cut):
        assert c.text == cut_at_stop(f.text, STOPS)
        assert not any(s in c.text for s in STOPS)
        if c.text != f.text:
            stopped += 1
            assert c.n_tokens < f.n_tokens  # generation stopped there, not just the text
    assert stopped >= N // 2, "the stop strings hardly occurred: the test proves little"


# -- transformers -------------------------------------------------------------------------------


def test_hf_batched_scoring_matches_one_by_one(hf, pairs, hf_reference):
    prompts, targets = pairs
    batched = hf_reference["logprobs"]
    for p, t, b in zip(prompts, targets, batched):
        [alone] = hf.target_logprobs([p], [t])
        assert alone.n_tokens == b.n_tokens == len(t)
        assert rel(b.sum_logprob, alone.sum_logprob) < 1e-5
        assert rel(b.perplexity, alone.perplexity) < 1e-5
    # a trained model: the gold targets are far likelier than uniform over the vocabulary
    vocab = len(hf.tokenizer)
    assert all(1 < b.perplexity < vocab / 4 for b in batched)


def test_hf_implements_the_protocol(hf):
    assert isinstance(hf, Backend)


def test_hf_argmax_is_the_most_likely_token_under_teacher_forcing(hf, pairs, hf_reference):
    """y* at each position is at least as likely as the gold token there: its summed log-prob equals the target's
    where y* is the target, and exceeds it where they differ."""
    prompts, targets = pairs
    for best, gold, target in zip(hf_reference["argmax"], hf_reference["logprobs"], targets):
        assert best.n_tokens == len(target)
        if list(best.tokens) == target:
            assert best.sum_logprob == pytest.approx(gold.sum_logprob, abs=1e-4)
        else:
            assert best.sum_logprob > gold.sum_logprob
    with pytest.raises(InputError, match="target_argmax: input 1 has an empty target"):
        hf.target_argmax(prompts[:2], [targets[0], []])


def test_hf_gives_the_callers_thread_count_back(tiny_llama, tmp_path):
    """torch's thread count is process-wide: options.threads while the backend is open, the caller's after close(),
    and after a checkpoint that fails to load."""
    caller = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        backend = HFBackend(tiny_llama, BackendOptions(threads=1))
        assert torch.get_num_threads() == 1
        backend.close()
        assert torch.get_num_threads() == 3
        backend.close()  # idempotent: nothing to give back twice
        assert torch.get_num_threads() == 3
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{not json")
        with pytest.raises(Exception):
            HFBackend(type(tiny_llama)(run="broken", step=0, path=broken, kind="full"), BackendOptions(threads=1))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(caller)


def test_hf_greedy(hf_reference):
    for samples in hf_reference["greedy"]:
        assert len(samples) == GREEDY.samples and len(set(samples)) == 1  # k copies of one answer
        assert "\nDone." not in samples[0].text  # cut at the stop string
    assert sum(s[0].n_tokens < MAX_NEW for s in hf_reference["greedy"]) >= N // 2  # most answers ended early


def test_hf_seeded_sampling(hf, pairs):
    check_seeded_sampling(hf, pairs[0])


def test_hf_stop_strings(hf, pairs):
    check_stop_strings(hf, pairs[0])


def test_hf_bad_inputs_are_input_errors(hf, pairs):
    prompts, targets = pairs
    with pytest.raises(InputError, match="empty target"):
        hf.target_logprobs(prompts[:2], [targets[0], []])
    with pytest.raises(InputError, match="empty"):
        hf.generate([[]], SAMPLE, [0])
    with pytest.raises(InputError, match="top_p"):
        hf.generate(prompts[:1], SamplingParams(top_p=0.0), [0])
    nothing = hf.generate(prompts[:2], SamplingParams(samples=2, max_new_tokens=0), [0, 1])
    assert nothing == [[Completion("", 0)] * 2] * 2


def test_hf_reload_gives_what_a_fresh_load_gives(tiny_llama, later, pairs):
    """The model held takes another checkpoint's weights in place; then, and back on the first, every output is
    bit for bit a fresh load's."""
    from premem.sampling.hf import engine_identity

    assert engine_identity(later) == engine_identity(tiny_llama)
    fresh_later = HFBackend(later, OPTIONS)
    want = outputs(fresh_later, pairs)
    fresh_later.close()
    backend = HFBackend(tiny_llama, OPTIONS)
    try:
        first = outputs(backend, pairs)
        assert first["logprobs"] != want["logprobs"] and first["samples"] != want["samples"]  # two different models
        assert backend.reload(later)
        assert outputs(backend, pairs) == want
        assert backend.reload(tiny_llama)
        assert outputs(backend, pairs) == first
    finally:
        backend.close()


def test_hf_reload_refuses_what_does_not_fit(hf, tiny_llama, wider, pairs, hf_reference):
    """Another architecture, a LoRA adapter, a GGUF file: False, and the model held is left as it was."""
    from dataclasses import replace

    from premem.sampling.hf import engine_identity

    assert engine_identity(wider) not in (None, engine_identity(tiny_llama))
    assert not hf.reload(wider)
    assert not hf.reload(replace(tiny_llama, kind="lora", base_model=str(tiny_llama.path)))
    assert engine_identity(replace(tiny_llama, kind="gguf", gguf_file="model.gguf")) is None
    assert hf.target_logprobs(*pairs) == hf_reference["logprobs"]


def test_tiny_model_is_deterministic(tmp_path):
    from premem.train.tiny import build_tiny_model

    lines = shared("gsm8k", "train.jsonl").read_text().splitlines()[:100]
    texts = [json.loads(line)["question"] for line in lines]
    a, b, c = (build_tiny_model(texts, tmp_path / name, vocab_size=400, seed=s) for name, s in [("a", 0), ("b", 0), ("c", 1)])
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()  # the seed is the model's


# -- vLLM (slow: the engine takes ~30 s to start) ----------------------------------------------


@pytest.fixture(scope="module")
def vllm(tiny_llama, hf_reference):  # hf_reference first: computed before the engine takes the cores
    pytest.importorskip("vllm")
    from premem.sampling.vllm_backend import VLLMBackend

    # enforce_eager: skips torch.compile (~10-30 s at start); the model code is the same
    backend = VLLMBackend(tiny_llama, OPTIONS, enforce_eager=True)
    yield backend
    backend.close()


@pytest.mark.slow
def test_perplexities_agree(vllm, pairs, hf_reference):
    prompts, targets = pairs
    got = vllm.target_logprobs(prompts, targets)
    for v, h in zip(got, hf_reference["logprobs"]):
        assert v.n_tokens == h.n_tokens
        assert rel(v.perplexity, h.perplexity) < 1e-3


@pytest.mark.slow
def test_greedy_answers_identical(vllm, pairs, hf_reference):
    assert vllm.generate(pairs[0], GREEDY, SEEDS) == hf_reference["greedy"]


@pytest.mark.slow
def test_vllm_implements_the_protocol(vllm):
    assert isinstance(vllm, Backend)


@pytest.mark.slow
def test_teacher_forced_argmax_agrees(vllm, pairs, hf_reference):
    """The probes' greedy y* (argmax at each gold-prefix position, and the sum of those log-probs):
    vLLM's prompt_logprobs rank-1 tokens against transformers' logits."""
    got = vllm.target_argmax(*pairs)
    for v, h, target in zip(got, hf_reference["argmax"], pairs[1]):
        assert v.n_tokens == len(target) and v.tokens == h.tokens
        assert rel(v.sum_logprob, h.sum_logprob) < 1e-3


@pytest.mark.slow
def test_probe_tracking_agrees(vllm, pairs, tiny_llama, hf_reference):
    """The rows probe tracking writes for a checkpoint, scored through vLLM and through transformers: the same
    keys, token counts and greedy texts; log-probs within 1e-3 relative."""
    import pandas as pd

    got, ref = probe_rows(vllm, tiny_llama, pairs), hf_reference["probe_rows"]
    keys = ["run", "step", "probe_id", "type", "n_tokens", "text"]
    assert len(got) == 2 * N and set(got["type"]) == {"chosen", "greedy"}
    pd.testing.assert_frame_equal(got[keys], ref[keys])
    for column in ("sum_logprob", "mean_logprob"):
        assert got[column].tolist() == pytest.approx(ref[column].tolist(), rel=1e-3)


@pytest.mark.slow
def test_vllm_seeded_sampling(vllm, pairs):
    check_seeded_sampling(vllm, pairs[0])


@pytest.mark.slow
def test_vllm_stop_strings(vllm, pairs):
    check_stop_strings(vllm, pairs[0])


@pytest.mark.slow
def test_vllm_reload_gives_what_a_fresh_engine_gives(vllm, tiny_llama, later, wider, pairs):
    """Weights reloaded in the running engine (prefix cache reset): every output bit for bit a new engine's on that
    checkpoint, and back on the first checkpoint the first's. Another architecture is refused, engine untouched."""
    from premem.sampling.vllm_backend import VLLMBackend

    first = outputs(vllm, pairs)
    assert not vllm.reload(wider)
    assert vllm.reload(later)
    reloaded = outputs(vllm, pairs)
    assert reloaded["logprobs"] != first["logprobs"] and reloaded["samples"] != first["samples"]
    assert vllm.reload(tiny_llama)
    assert outputs(vllm, pairs) == first  # the prefix cache held the later weights' blocks of the same prompts
    fresh = VLLMBackend(later, OPTIONS, enforce_eager=True)
    try:
        assert outputs(fresh, pairs) == reloaded
    finally:
        fresh.close()


@pytest.mark.slow
def test_vllm_close_ends_the_engine(vllm):
    """Last in the module: close() ends the engine's processes (the fixture's close is then a no-op)."""
    engine = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM")]
    assert engine, "no engine processes found"
    vllm.close()
    gone, alive = psutil.wait_procs(engine, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(RuntimeError, match="after close"):
        vllm.generate([[1]], GREEDY, [0])
