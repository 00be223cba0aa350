"""vLLM engine start-up on CPU: what an engine start costs under each engine setting, and what the setting does
to the work after it (sampling speed) and to the outputs.

    python benchmarks/vllm_startup.py --run RUN_DIR --train TRAIN.jsonl          # e.g. a quickstart run
    python benchmarks/vllm_startup.py ... --settings compiled,eager --repeats 3

Each trial is a fresh Python process (as a Ray actor is): it imports vLLM, starts premem's VLLMBackend on the
run's first checkpoint under one setting, then for every checkpoint (weights reloaded in place after the
first) scores the run's trained training examples (perplexities) and samples them (--samples per query, seeded as
`premem score` seeds them). Trials are interleaved (setting A, B, ..., A, B, ...) so that others' load on the
machine falls on every setting alike; medians are printed. Per setting: start s (import + engine start),
work s (every checkpoint's reload, scoring and sampling), total, the ratio of the total against the first setting,
the share of the total spent starting, the trial process's whole life (interpreter start, encoding the queries
and the engine's shutdown included), and whether its outputs (seeded sample texts, perplexities, greedy texts at
the last checkpoint) are identical to the first setting's. Settings: see SETTINGS. torch.compile's caches
(~/.cache/vllm, /tmp/torchinductor_*) are warm after the first trial, as on a user's second run: a first-ever
compiled start is slower. vLLM's scripts need the __main__ guard (spawn).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's premem, wherever it runs from

from premem.sampling.vllm_backend import ONE_PROCESS  # noqa: E402 - after the path insert above

# name -> (engine args, environment) on top of premem's; "compiled" is vLLM's own CPU layout and compilation: the
# engine core and its worker in two spawned processes, torch.compile with inductor (a warm-up pass at start)
MP = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
SETTINGS = {
    "compiled": ({"enforce_eager": False, "distributed_executor_backend": "mp"}, MP),
    "eager": ({"enforce_eager": True, "distributed_executor_backend": "mp"}, MP),
    # the worker inside the engine core's (spawned) process, not in a second one (premem's default on CPU)
    "compiled_oneproc": ({"enforce_eager": False, "distributed_executor_backend": ONE_PROCESS}, MP),
    "eager_oneproc": ({"enforce_eager": True, "distributed_executor_backend": ONE_PROCESS}, MP),
    # no engine process at all: the engine core and its worker in this one (torch threads set to --threads)
    "compiled_inproc": ({"enforce_eager": False}, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
    "eager_inproc": ({"enforce_eager": True}, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
    # also no torch.compile of vLLM's small helpers (the logprob ranks' batched_count_greater_than, inductor)
    "eager_nocompile": ({"enforce_eager": True, "distributed_executor_backend": "mp"},
                        {**MP, "TORCH_COMPILE_DISABLE": "1"}),
    "premem": ({}, {}),  # whatever premem's VLLMBackend does by default
}


def trial(args) -> dict:
    """One setting, in this (fresh) process: start, then every checkpoint's work; timings and outputs."""
    engine_args, env = SETTINGS[args.child]
    os.environ.update(env)
    from premem.execution import BackendOptions
    from premem.runs import find_checkpoints
    from premem.sampling.backend import SamplingParams

    options = BackendOptions(threads=args.threads, kv_cache_gib=args.kv_cache_gib, max_model_len=args.max_model_len)
    checkpoints = find_checkpoints(args.run)[: args.checkpoints]
    # the queries are encoded by the driver in `premem score`: not part of an engine's start
    prompts, targets, seeds_of, stop = queries(args, checkpoints[0], options)
    params = SamplingParams(samples=args.samples, max_new_tokens=args.max_new_tokens, stop=stop)
    if env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":  # the worker runs in this process, at its thread count
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import vllm  # noqa: F401 - an actor pays the import once, as part of its first engine's start

    from premem.sampling.vllm_backend import VLLMBackend

    imported = time.perf_counter() - t0
    backend = VLLMBackend(checkpoints[0], options, **engine_args)
    start = time.perf_counter() - t0
    out = {"texts": [], "logprobs": []}
    t1 = time.perf_counter()
    for i, c in enumerate(checkpoints):
        if i and not backend.reload(c):
            raise RuntimeError(f"{c.path}: not reloaded")
        out["logprobs"].append([t.sum_logprob for t in backend.target_logprobs(prompts, targets)])
        comps = backend.generate(prompts, params, seeds_of(c))
        out["texts"].append([x.text for cs in comps for x in cs])
    work = time.perf_counter() - t1
    greedy = SamplingParams(samples=1, temperature=0.0, max_new_tokens=args.max_new_tokens, stop=stop)
    out["greedy"] = [cs[0].text for cs in backend.generate(prompts, greedy, seeds_of(checkpoints[-1]))]
    backend.close()
    return {"setting": args.child, "import_s": imported, "start_s": start, "work_s": work, **out}


def queries(args, checkpoint, options):
    """The run's trained training examples, encoded as `premem score` encodes them; seeds per checkpoint."""
    from premem.data import DataConfig, get_template, load_example_set
    from premem.models import load_config
    from premem.sampling.backend import SamplingParams
    from premem.sampling.encoding import check_tokenizers, context_length, encode
    from premem.sampling.job import only_trained, query_seed, run_metadata

    tokenizer = check_tokenizers([checkpoint], options)
    template = get_template("paper", tokenizer)
    params = SamplingParams(samples=args.samples, max_new_tokens=args.max_new_tokens, stop=list(template.stop))
    enc = encode(load_example_set(DataConfig(path=str(args.train))), template, tokenizer,
                 context_length(load_config(checkpoint, options)), params, "train")
    ids = run_metadata(args.run).get("train_example_ids")
    if ids is not None:
        enc = only_trained(enc, ids, args.run, args.train)
    if args.examples:
        enc = only_trained(enc, [e.example_id for e in enc.examples][: args.examples], args.run, args.train)
    example_ids = [e.example_id for e in enc.examples]

    def seeds_of(c):
        return [query_seed(params.seed, c.step, "train", e) for e in example_ids]

    return enc.prompt_ids, enc.target_ids, seeds_of, list(template.stop)


def run_trial(args, setting: str, work: Path, i: int) -> dict:
    out = work / f"{setting}.{i}.json"
    cmd = [sys.executable, __file__, "--child", setting, "--out", str(out), "--run", str(args.run),
           "--train", str(args.train), "--samples", str(args.samples), "--max-new-tokens", str(args.max_new_tokens),
           "--checkpoints", str(args.checkpoints), "--threads", str(args.threads), "--examples", str(args.examples),
           "--kv-cache-gib", str(args.kv_cache_gib), "--max-model-len", str(args.max_model_len)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{setting} failed:\n{done.stderr[-4000:]}")
    r = json.loads(out.read_text())
    r["process_s"] = time.perf_counter() - t0  # interpreter start and engine shutdown included
    return r


def same(a: dict, b: dict) -> str:
    """Whether b's outputs are a's: seeded texts, perplexities (summed logprobs), greedy texts."""
    texts = sum(x != y for xs, ys in zip(a["texts"], b["texts"]) for x, y in zip(xs, ys))
    n = sum(len(xs) for xs in a["texts"])
    lp = max(abs(x - y) / max(abs(x), 1e-12) for xs, ys in zip(a["logprobs"], b["logprobs"]) for x, y in zip(xs, ys))
    greedy = sum(x != y for x, y in zip(a["greedy"], b["greedy"]))
    if texts == 0 and lp == 0 and greedy == 0:
        return "identical"
    return f"{texts}/{n} seeded texts differ, logprobs within {lp:.1e} rel, {greedy} greedy differ"


def report(results: dict[str, list[dict]]) -> str:
    names = list(results)
    base = results[names[0]]
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("import_s", "start_s", "work_s", "process_s")}
           for s, rs in results.items()}
    lines = [f"{'setting':<18}{'import s':>9}{'start s':>9}{'work s':>9}{'total s':>9}{'vs ' + names[0]:>14}"
             f"{'start %':>9}{'process s':>11}  outputs vs {names[0]} (every trial)"]
    for s in names:
        m = med[s]
        total = m["start_s"] + m["work_s"]
        ref = med[names[0]]["start_s"] + med[names[0]]["work_s"]
        verdicts = sorted({same(base[0], r) for r in results[s]})
        lines.append(f"{s:<18}{m['import_s']:>9.1f}{m['start_s']:>9.1f}{m['work_s']:>9.1f}{total:>9.1f}"
                     f"{ref / total:>13.2f}x{100 * m['start_s'] / total:>8.1f}%{m['process_s']:>11.1f}  "
                     f"{'; '.join(verdicts)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory (its checkpoints, in step order)")
    parser.add_argument("--train", type=Path, required=True, help="the run's training JSONL")
    parser.add_argument("--settings", default="compiled,eager,compiled_oneproc,eager_oneproc,eager_inproc",
                        help=f"comma-separated, the first is the reference; of {', '.join(SETTINGS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=6, help="the run's first N checkpoints")
    parser.add_argument("--examples", type=int, default=0, help="only the first N trained examples (0: all)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--work", type=Path, help="where trial results go (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.out.write_text(json.dumps(trial(args)))
        return 0
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="vllm_startup."))
    work.mkdir(parents=True, exist_ok=True)
    print(f"run {args.run}: first {args.checkpoints} checkpoints; train {args.train}; {args.samples} samples, max "
          f"{args.max_new_tokens} new tokens; {args.threads} thread(s); {args.repeats} interleaved repeats; work {work}",
          flush=True)
    results: dict[str, list[dict]] = {s: [] for s in settings}
    for i in range(args.repeats):
        for s in settings:
            r = run_trial(args, s, work, i)
            results[s].append(r)
            print(f"  repeat {i} {s:<16} start {r['start_s']:.1f} s (import {r['import_s']:.1f}), "
                  f"work {r['work_s']:.1f} s", flush=True)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
