"""Sampling throughput: premem against the raw engines it wraps, and 2 Ray actors against 1.

One run, one model, one workload (the same prompts, k samples each, the same sampling
settings), timed `--repeats` times; medians are reported, with ratios:

    premem hf backend / plain model.generate loop
    premem vllm backend / plain vllm.LLM.generate         (when vLLM is installed)
    premem score path, 1 actor / plain model.generate loop (Ray task overhead included)
    premem score path, 2 actors x 1 thread / best single-process setting

Tokens counted are generated tokens (stop strings and padding excluded the same way for all).
Model loading and engine start-up are not timed: each setting is warmed up first.

    python benchmarks/bench_sampling.py                      # builds a tiny Llama if --model is not given
    python benchmarks/bench_sampling.py --model DIR --prompts 64 --samples 4 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
POOLS = contextlib.ExitStack()  # actor pools, closed at exit
atexit.register(POOLS.close)
sys.path.insert(0, str(REPO))


def gsm8k_prompts(n: int) -> tuple[list[str], list[str]]:
    data = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()[: max(n, 300)]]
    prompts = [r["question"] + "\nAnswer:" for r in rows[:n]]
    texts = [r["question"] + " " + r["answer"] for r in rows]
    return prompts, texts


def timed(fn, repeats: int) -> tuple[float, int]:
    """Median seconds of fn() over repeats (after one warm-up), and the tokens it generated."""
    tokens = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), tokens


def raw_hf(model_dir: Path, prompt_ids, k: int, max_new: int, threads: int, batch: int):
    """The baseline: a plain batched model.generate loop, nothing of premem's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def run() -> int:
        n = 0
        torch.manual_seed(0)
        for i in range(0, len(prompt_ids), batch):
            chunk = prompt_ids[i : i + batch]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.8, top_p=0.95,
                    max_new_tokens=max_new, num_return_sequences=k, pad_token_id=pad,
                )
            new = out[:, width:]
            n += int((new != pad).sum())
        return n

    return run


def premem_backend(name: str, model_dir: Path, prompt_ids, k: int, max_new: int, threads: int, batch: int):
    from premem.runs import find_checkpoints
    from premem.execution import BackendOptions
    from premem.sampling.backend import SamplingParams
    from premem.sampling.engines import make_backend

    ckpt = find_checkpoints(model_dir)[0]
    backend = make_backend(name, ckpt, BackendOptions(threads=threads, batch_size=batch))
    params = SamplingParams(samples=k, max_new_tokens=max_new, stop=[])
    seeds = list(range(len(prompt_ids)))
    return lambda: sum(c.n_tokens for comps in backend.generate(prompt_ids, params, seeds) for c in comps)


def raw_vllm(model_dir: Path, prompt_ids, k: int, max_new: int, threads: int):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from premem.execution import BackendOptions
    from premem.sampling.vllm_backend import _cpu_environment, _environment

    # the same engine settings premem gives vLLM on CPU (a fixed KV cache, OpenMP threads bound to the cores):
    # the engine's default, a share of host memory, refuses to start when other processes hold a few GiB
    with _environment(_cpu_environment(threads, os.environ)):
        llm = LLM(model=str(model_dir), dtype="float32", seed=0, max_model_len=512, disable_log_stats=True,
                  kv_cache_memory_bytes=int(BackendOptions().kv_cache_gib * 2**30), enable_chunked_prefill=False)
    params = SamplingParams(n=k, temperature=0.8, top_p=0.95, max_tokens=max_new, ignore_eos=False)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in prompt_ids]

    def run() -> int:
        outs = llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    return run


def premem_actors(model_dir: Path, prompt_ids, k: int, max_new: int, actors: int, threads: int, batch: int):
    """The score path: tasks on Ray actors (shards of 16 prompts), checkpoint loaded once per actor."""
    from premem.execution import ExecConfig, pool, ray_init, run_tasks
    from premem.sampling.actors import SamplerActor, Task
    from premem.execution import BackendOptions
    from premem.sampling.backend import SamplingParams
    from premem.runs import find_checkpoints

    ckpt = find_checkpoints(model_dir)[0]
    params = SamplingParams(samples=k, max_new_tokens=max_new, stop=[])
    ray_init(None, num_cpus=os.cpu_count())
    # the pool lives until the benchmark ends (its actors are killed then), across the timed repeats
    options = BackendOptions(threads=threads, batch_size=batch)
    actor_pool = POOLS.enter_context(pool(ExecConfig(options=options, actors=actors), SamplerActor, ("hf", options, params)))
    shard = 16
    tasks = [
        Task(ckpt, "test", i // shard, list(range(i, i + shard)), prompt_ids[i : i + shard], None,
             list(range(i, i + shard)), [max_new] * len(prompt_ids[i : i + shard]))
        for i in range(0, len(prompt_ids), shard)
    ]

    def run() -> int:
        total = 0

        def add(result):
            nonlocal total
            total += sum(c.n_tokens for comps in result.completions for c in comps)

        run_tasks(actor_pool, tasks, add)
        return total

    return run


def hf_settings(record, model_dir, ids, k: int, m: int, b: int, cores: int) -> None:
    """The transformers settings: raw loop and premem's backend, in one process and on Ray actors."""
    import ray

    record(f"raw generate loop, {cores} threads", raw_hf(model_dir, ids, k, m, cores, b))
    record(f"premem hf backend, {cores} threads", premem_backend("hf", model_dir, ids, k, m, cores, b))
    record("raw generate loop, 1 thread", raw_hf(model_dir, ids, k, m, 1, b))
    record("premem score path, 1 actor x 1 thread", premem_actors(model_dir, ids, k, m, 1, 1, b))
    POOLS.close()  # kill this setting's actors while their Ray session is up
    ray.shutdown()
    record("premem score path, 2 actors x 1 thread", premem_actors(model_dir, ids, k, m, 2, 1, b))
    POOLS.close()
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="HF model directory (default: build a tiny Llama)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--only-vllm", action="store_true", help="time vLLM, raw and premem's, and nothing else")
    args = ap.parse_args()

    prompts, texts = gsm8k_prompts(args.prompts)
    model_dir = args.model
    if model_dir is None:
        from premem.train.tiny import build_tiny_model

        model_dir = build_tiny_model(texts, Path(tempfile.mkdtemp()) / "tiny", seed=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [tok(p)["input_ids"] for p in prompts]
    k, m, b = args.samples, args.max_new_tokens, args.batch
    print(f"model {model_dir}; {len(ids)} prompts x {k} samples, <= {m} new tokens; median of {args.repeats}; {os.cpu_count()} cores")

    results: dict[str, float] = {}

    def record(name: str, fn) -> None:
        seconds, tokens = timed(fn, args.repeats)
        results[name] = tokens / seconds
        print(f"  {name:<36} {tokens:>7} tokens  {seconds:7.2f} s  {tokens / seconds:9.0f} tok/s", flush=True)

    cores = os.cpu_count() or 1
    if not args.only_vllm:
        hf_settings(record, model_dir, ids, k, m, b, cores)
    if not args.no_vllm:
        try:
            import vllm  # noqa: F401
        except ImportError:
            print("  (vLLM not installed: skipping the vLLM comparison)")
        else:
            record("raw vllm LLM.generate", raw_vllm(model_dir, ids, k, m, cores))
            record("premem vllm backend", premem_backend("vllm", model_dir, ids, k, m, cores, b))

    r = results
    print("\nratios")
    if not args.only_vllm:
        best_single = max(r[f"raw generate loop, {cores} threads"], r["raw generate loop, 1 thread"])
        print(f"  premem hf backend / raw generate loop        {r[f'premem hf backend, {cores} threads'] / r[f'raw generate loop, {cores} threads']:.2f}x")
        print(f"  premem score path (1 actor) / raw, 1 thread  {r['premem score path, 1 actor x 1 thread'] / r['raw generate loop, 1 thread']:.2f}x")
        print(f"  2 actors / best single-process setting       {r['premem score path, 2 actors x 1 thread'] / best_single:.2f}x")
        print(f"  2 actors / 1 actor                           {r['premem score path, 2 actors x 1 thread'] / r['premem score path, 1 actor x 1 thread']:.2f}x")
    if "raw vllm LLM.generate" in r:
        print(f"  premem vllm backend / raw vllm               {r['premem vllm backend'] / r['raw vllm LLM.generate']:.2f}x")


if __name__ == "__main__":
    main()
