"""How premem starts a vLLM engine on CPU: one process (the engine core, its worker inside it) instead of vLLM's
own two (engine core, and the worker spawned from it), with the same results; an executor the caller names wins.

Real engines on the tiny Llama (two starts: slow). benchmarks/vllm_startup.py measures what it saves.
"""

from __future__ import annotations

import psutil
import pytest

from premem.execution import BackendOptions
from premem.sampling.backend import SamplingParams

OPTIONS = BackendOptions(threads=1, kv_cache_gib=0.25, max_model_len=256)
GREEDY = SamplingParams(samples=1, temperature=0.0, max_new_tokens=16)
SAMPLED = SamplingParams(samples=3, temperature=0.8, top_p=0.95, max_new_tokens=16)
PROMPTS = [[1, 5, 9, 13], [1, 7, 7, 2, 30], [1, 40]]


def engine_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if p.name().startswith("VLLM") and p.status() != psutil.STATUS_ZOMBIE]


def run(checkpoint, **engine_args) -> tuple[int, dict]:
    """Start an engine, count its processes, and take its outputs (greedy, seeded, prompt logprobs)."""
    from premem.sampling.vllm_backend import VLLMBackend

    backend = VLLMBackend(checkpoint, OPTIONS, **engine_args)
    try:
        n = len(engine_processes())
        out = {"greedy": backend.generate(PROMPTS, GREEDY, [0, 1, 2]),
               "sampled": backend.generate(PROMPTS, SAMPLED, [3, 4, 5]),
               "logprobs": backend.target_logprobs(PROMPTS, [[11, 12], [13], [14, 15, 16]])}
    finally:
        backend.close()
    return n, out


@pytest.mark.slow
def test_a_cpu_engine_is_one_process_and_gives_what_vllms_two_give(tiny_llama):
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the CPU layout only")
    ours, ours_out = run(tiny_llama)
    theirs, theirs_out = run(tiny_llama, distributed_executor_backend="mp")  # the caller's choice wins
    assert (ours, theirs) == (1, 2)
    assert ours_out == theirs_out  # texts, token counts and summed logprobs, bit for bit
