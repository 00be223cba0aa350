"""Engine reuse, end to end: `premem score` on a run of several checkpoints with one engine per actor for the
whole run (weights reloaded in place), against a new engine per checkpoint (exec.options.reuse_engine=false, the
old way), against the raw engine doing the same work in this process (no Ray, no store, no grading).

    python benchmarks/engine_reuse.py --small                       # builds a tiny run: 6 checkpoints, 32 examples
    python benchmarks/engine_reuse.py --run RUN_DIR --train TRAIN.jsonl --test TEST.jsonl   # e.g. a quickstart run
    python benchmarks/engine_reuse.py ... --backends vllm --examples 32                    # first 32 of each split

Each mode starts from nothing but Ray (its own actors, engines and store); printed per backend: the wall time
of each mode, the seconds spent starting engines (summed over actors) and reloading weights, the share of the
total spent starting engines, the ratios, and whether the score tables (train and test scores, sample texts) of
the two `premem score` modes are identical, and the raw engine's texts and perplexities the same as theirs.
vLLM's scripts need the __main__ guard (spawn).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's premem, wherever it runs from

os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def build_small_run(work: Path) -> tuple[Path, Path, Path]:
    """A tiny benchmark (32 training and 32 test problems), a tiny base model, and one run of 6 checkpoints
    (one per epoch), built with premem's own pieces; reused when already there."""
    from premem.data import DataConfig
    from premem.data.arith import ArithConfig, write_benchmark
    from premem.train.api import train
    from premem.train.base_model import BaseModelConfig, build_base_model
    from premem.train.config import TrainConfig

    bench = ArithConfig(n_train=32, n_test=32, max_number=20, max_operand=6)
    train_path, test_path = write_benchmark(bench, work / "data")
    base = build_base_model(BaseModelConfig(pretrain_steps=200, pretrain_problems=500), bench, work / "base",
                            progress=False)
    run = train(TrainConfig(model=str(base), train=DataConfig(path=str(train_path)), out=str(work / "runs" / "small"),
                            lr=3e-3, epochs=6, batch_size=8, save_every="epoch", max_length=512, progress=False))
    return run, train_path, test_path


def first_examples(path: Path, n: int, out: Path) -> Path:
    """The first n examples of a JSONL file, written to out (the run's other examples are not scored)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    return out


def score_config(args, backend: str, reuse: bool, store: Path):
    from premem.data import DataConfig
    from premem.execution import BackendOptions, ExecConfig
    from premem.sampling.backend import SamplingParams
    from premem.sampling.job import ScoreConfig

    options = BackendOptions(threads=args.threads, batch_size=64, kv_cache_gib=args.kv_cache_gib,
                             max_model_len=args.max_model_len, reuse_engine=reuse)
    # every pair sampled (where premem skips memorized ones by default): the raw engine does the same work
    every = {"sample": "all"} if "sample" in ScoreConfig.__dataclass_fields__ else {}
    return ScoreConfig(**every, run=str(args.run), store=str(store), train=DataConfig(path=str(args.train)),
                       test=DataConfig(path=str(args.test)), train_examples="all" if args.examples else "trained",
                       sampling=SamplingParams(samples=args.samples, max_new_tokens=args.max_new_tokens),
                       exec=ExecConfig(backend=backend, options=options, actors=args.actors, progress=False))


def run_score(cfg) -> dict:
    """premem score, timed from a pool-less process state to the compacted store, with the actors' engine stats."""
    from premem.execution import actor_pool, release
    from premem.sampling.job import score

    release()
    start = time.perf_counter()
    summary = score(cfg)
    total = time.perf_counter() - start
    import ray

    live = actor_pool._live  # the pool score() used, still live: ask its actors how they loaded checkpoints
    stats = ray.get([a.engine_stats.remote() for a in live.actors])
    release()
    return {"total": total, "tokens": summary.generated_tokens, "actors": len(stats),
            "started": sum(s.started for s in stats), "start_s": sum(s.started_s for s in stats),
            "reloaded": sum(s.reloaded for s in stats), "reload_s": sum(s.reloaded_s for s in stats)}


def score_work(cfg):
    """What score() hands the actors, rebuilt from the same public pieces: checkpoints, tasks, params."""
    from premem.data import get_template, load_example_set
    from premem.models import load_config
    from premem.runs import find_checkpoints
    from premem.sampling.backend import SamplingParams
    from premem.sampling.encoding import check_tokenizers, context_length, encode
    from premem.sampling.job import make_tasks, only_trained, run_metadata

    options = cfg.exec.options
    checkpoints = find_checkpoints(cfg.run)
    tokenizer = check_tokenizers(checkpoints, options)
    template = get_template(cfg.template, tokenizer)
    context = context_length(load_config(checkpoints[0], options))
    params = SamplingParams(**{**cfg.sampling.__dict__, "stop": list(template.stop)})
    encoded = {}
    for split, data in (("train", cfg.train), ("test", cfg.test)):
        encoded[split] = encode(load_example_set(data), template, tokenizer, context, params, split)
    ids = run_metadata(cfg.run).get("train_example_ids")
    if cfg.train_examples == "trained" and ids is not None:
        encoded["train"] = only_trained(encoded["train"], ids, cfg.run, cfg.train.path)
    tasks = {c: [t for split in encoded for t in make_tasks(c, split, encoded[split], params, 10**9)]
             for c in checkpoints}
    return checkpoints, tasks, params


def run_raw(cfg, backend: str) -> dict:
    """The same checkpoints, queries, seeds and caps straight through the engine in this process: one engine,
    weights swapped in place per checkpoint, every query of a checkpoint in one call (no Ray, store or grading)."""
    checkpoints, tasks, params = score_work(cfg)
    engine = RawVLLM(cfg, params) if backend == "vllm" else RawHF(cfg, params)
    start = time.perf_counter()
    out, loads = {}, {"start_s": 0.0, "reload_s": 0.0}
    for i, c in enumerate(checkpoints):
        t0 = time.perf_counter()
        engine.start(c) if i == 0 else engine.reload(c)
        loads["start_s" if i == 0 else "reload_s"] += time.perf_counter() - t0
        for task in tasks[c]:
            out[(c.step, task.split)] = engine.work(task)
    total = time.perf_counter() - start
    engine.close()
    tokens = sum(n for texts, _ in out.values() for n in texts["n_tokens"])
    return {"total": total, "tokens": tokens, "actors": 1, "started": 1, "reloaded": len(checkpoints) - 1,
            **loads, "out": out}


class RawVLLM:
    """vllm.LLM with premem's engine settings (CPU: kv_cache_memory_bytes, no chunked prefill), called directly."""

    def __init__(self, cfg, params):
        self.cfg, self.params, self.llm = cfg, params, None

    def start(self, checkpoint):
        from vllm import LLM

        from premem.sampling.vllm_backend import _cpu_environment, _environment

        o = self.cfg.exec.options
        with _environment(_cpu_environment(o.threads, os.environ) | {"HF_HUB_OFFLINE": "1"}):
            self.llm = LLM(model=str(checkpoint.path), dtype=o.dtype, max_model_len=o.max_model_len, seed=0,
                           load_format="safetensors", kv_cache_memory_bytes=int(o.kv_cache_gib * 2**30),
                           enable_chunked_prefill=False)

    def reload(self, checkpoint):
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(checkpoint.path.resolve())})
        self.llm.reset_prefix_cache()

    def work(self, task):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        p = self.params
        ppl = None
        if task.target_ids is not None:
            scoring = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=a + b) for a, b in
                                      zip(task.prompt_ids, task.target_ids)], scoring, use_tqdm=False)
            ppl = [_ppl(sum(o.prompt_logprobs[j][o.prompt_token_ids[j]].logprob
                            for j in range(len(a), len(a) + len(b))), len(b))
                   for o, a, b in zip(outs, task.prompt_ids, task.target_ids)]
        requests = [SamplingParams(n=p.samples, seed=s, temperature=p.temperature, top_p=p.top_p, max_tokens=cap,
                                   stop=p.stop) for s, cap in zip(task.seeds, task.max_new_tokens)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=a) for a in task.prompt_ids], requests,
                                 use_tqdm=False)
        texts = [_cut(c.text, p.stop) for o in outs for c in o.outputs]
        return {"text": texts, "n_tokens": [len(c.token_ids) for o in outs for c in o.outputs]}, ppl

    def close(self):
        self.llm.llm_engine.engine_core.shutdown()


class RawHF:
    """premem's transformers backend itself, in this process (it is the engine: there is no other to call)."""

    def __init__(self, cfg, params):
        self.cfg, self.params, self.backend = cfg, params, None

    def start(self, checkpoint):
        from premem.sampling.engines import make_backend

        self.backend = make_backend("hf", checkpoint, self.cfg.exec.options)

    def reload(self, checkpoint):
        assert self.backend.reload(checkpoint)

    def work(self, task):
        from premem.sampling.actors import generate_capped

        ppl = None
        if task.target_ids is not None:
            ppl = [t.perplexity for t in self.backend.target_logprobs(task.prompt_ids, task.target_ids)]
        comps = generate_capped(self.backend, task, self.params)
        return {"text": [c.text for cs in comps for c in cs], "n_tokens": [c.n_tokens for cs in comps for c in cs]}, ppl

    def close(self):
        self.backend.close()


def _ppl(sum_logprob: float, n: int) -> float:
    from premem.sampling.backend import TargetLogprob

    return TargetLogprob(sum_logprob, n).perplexity


def _cut(text, stop):
    from premem.sampling.hf import cut_at_stop

    return cut_at_stop(text, stop)


def tables(store: Path) -> dict:
    import pandas as pd

    keys = ["run", "step", "split", "example_id", "sample"]
    out = {}
    for name in ("train_scores", "test_scores", "samples"):
        df = pd.read_parquet(store / f"{name}.parquet")
        out[name] = df.sort_values([k for k in keys if k in df.columns]).reset_index(drop=True)
    return out


def same_tables(a: dict, b: dict) -> bool:
    return all(a[k].equals(b[k]) for k in a)


def raw_matches(raw_out: dict, t: dict) -> str:
    """How close the raw engine came to the store: sample texts that differ, largest relative perplexity gap
    (the raw engine batches every query of a checkpoint at once, premem by shard: float sums may differ)."""
    samples, scores = t["samples"], t["train_scores"]
    texts, gap = 0, 0.0
    for (step, split), (got, ppl) in raw_out.items():
        want = samples[(samples.step == step) & (samples.split == split)].sort_values(["example_id", "sample"])
        texts += sum(a != b for a, b in zip(got["text"], want["text"]))
        if ppl is not None:
            ref = scores[scores.step == step].sort_values("example_id")["perplexity"].tolist()
            gap = max([gap] + [abs(a - b) / b for a, b in zip(ppl, ref)])
    return f"{texts} of {len(samples)} sample texts differ, perplexities within {gap:.1e} relative"


def bench_backend(args, backend: str, work: Path) -> dict:
    """Every mode --repeats times, interleaved (reuse, per ckpt, raw, reuse, ...); each figure the median."""
    runs = {"reuse": [], "per_checkpoint": [], "raw": []}
    for rep in range(args.repeats):
        for mode, reuse in (("reuse", True), ("per_checkpoint", False)):
            store = work / "stores" / f"{backend}-{mode}-{rep}"
            runs[mode].append(run_score(score_config(args, backend, reuse, store)) | {"store": store})
        runs["raw"].append(run_raw(score_config(args, backend, True, work / "unused"), backend))
    a = tables(runs["reuse"][0]["store"])
    stores = [tables(r["store"]) for mode in ("reuse", "per_checkpoint") for r in runs[mode]]
    results = {mode: median_run(rs) for mode, rs in runs.items()}
    results["totals"] = {mode: [round(r["total"], 1) for r in rs] for mode, rs in runs.items()}
    results["identical"] = all(same_tables(a, b) for b in stores)
    results["raw_vs_store"] = raw_matches(runs["raw"][0].pop("out"), a)
    return results


def median_run(runs: list[dict]) -> dict:
    """The median of each figure over repeats."""
    keys = ("total", "tokens", "actors", "started", "start_s", "reloaded", "reload_s")
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def report(backend: str, r: dict) -> str:
    n = len(r["totals"]["reuse"])
    lines = [f"\n{backend}: {r['reuse']['tokens']:.0f} generated tokens per mode; medians of {n} repeat(s)",
             f"{'mode':<26}{'total s':>9}{'engines':>9}{'start s':>9}{'start %':>9}{'reloads':>9}{'reload s':>10}"
             f"  totals"]
    for mode, name in (("reuse", "premem score, reuse"), ("per_checkpoint", "premem score, per ckpt"),
                       ("raw", "raw engine")):
        m = r[mode]
        share = 100 * m["start_s"] / (m["actors"] * m["total"])
        lines.append(f"{name:<26}{m['total']:>9.1f}{m['started']:>9.0f}{m['start_s']:>9.1f}{share:>8.1f}%"
                     f"{m['reloaded']:>9.0f}{m['reload_s']:>10.2f}  {' '.join(map(str, r['totals'][mode]))}")
    lines.append(f"per ckpt / reuse: {r['per_checkpoint']['total'] / r['reuse']['total']:.2f}x;  "
                 f"reuse / raw engine: {r['reuse']['total'] / r['raw']['total']:.2f}x")
    same = "identical" if r["identical"] else "DIFFER"
    lines.append(f"score tables (train, test, samples) of every premem score run: {same};  raw engine vs store: "
                 f"{r['raw_vs_store']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="build and score a tiny run (6 checkpoints, 32 examples)")
    parser.add_argument("--run", type=Path, help="run directory to score (with --train and --test)")
    parser.add_argument("--train", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--examples", type=int, default=0, help="score only the first N examples of each split")
    parser.add_argument("--backends", default="vllm,hf")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="run every mode this often, interleaved; medians")
    parser.add_argument("--work", type=Path, help="where the run, data and stores go (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="engine_reuse."))
    if args.small:
        args.run, args.train, args.test = build_small_run(work)
    elif not (args.run and args.train and args.test):
        parser.error("say which run (--run, --train, --test), or --small")
    if args.examples:
        args.train = first_examples(args.train, args.examples, work / "data_subset" / "train.jsonl")
        args.test = first_examples(args.test, args.examples, work / "data_subset" / "test.jsonl")
    from premem.execution import ray_init
    from premem.runs import find_checkpoints

    ray_init(None)  # once, outside every timing
    n = len(find_checkpoints(args.run))
    print(f"run {args.run}: {n} checkpoints; train {args.train}, test {args.test}; {args.samples} samples, "
          f"max {args.max_new_tokens} new tokens; {args.actors} actor(s) x {args.threads} thread(s); work {work}")
    summary = {}
    for backend in args.backends.split(","):
        r = bench_backend(args, backend, work)
        print(report(backend, r), flush=True)
        summary[backend] = {k: ({kk: vv for kk, vv in v.items() if kk != "store"} if isinstance(v, dict) else v)
                            for k, v in r.items()}
    (work / "engine_reuse.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
