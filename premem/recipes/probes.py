"""The learning-dynamics experiment on the tiny benchmark (Ren & Sutherland, ICLR 2025; DESIGN.md §1).

What the probes show on runs of every kind, from one command. For each seed:

    pairs        preference rows on new problems: chosen is the correct trace; rejected is, by
                 `rejected`: "sampled", a wrong answer sampled from the base model (off-policy:
                 another policy's words, "3 plus 4 makes 7.", which SFT makes unlikely; problems
                 whose samples are all right are skipped); "other", the correct trace of another
                 problem; or "slip", the same trace with one arithmetic slip carried on
    sft          SFT on [prompt; chosen] from the base model
    extend-sft   SFT on [prompt; chosen] and [prompt; rejected]: the extend recipe's first stage
    dpo-e<k>         DPO on the pairs from sft's checkpoint after k epochs (the reference model)
    extend-dpo-e<k>  the same DPO settings from extend-sft's checkpoint after k epochs: each
                     chosen response seen as often as before DPO, the rejected ones too
    probes       a probe set from the pairs; the rephrases are written by sft's last checkpoint
    store        every run's probe scores; step 0 of a run is the model it started from

    out/seed<s>/{pairs,chosen,both}.jsonl, runs/<run>/, probes/, store/
    out/moves.csv    per seed, run and type: the move of summed log π(y|x), first to last checkpoint
                     (and, for SFT runs, from their first checkpoint on), mean ± s.e. over prompts
    out/tables.txt   every run's per-checkpoint table, as `premem probe show` prints it
    out/report.html  the verdicts, the extend comparison, and each seed's probe plots and tables

Every run, probe set and tracked checkpoint is reused when present, so a killed experiment
resumes, and seeds can run as separate processes before one call over all of them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from premem.data import DataConfig
from premem.data.arith import ArithConfig, preference_pairs, sft_both, write_jsonl
from premem.errors import InputError
from premem.files import atomic_path
from premem.recipes.quickstart import (
    BaseModelConfig,
    build_base_model,
    check_base_model,
    check_benchmark,
    check_train,
    write_benchmark,
)
from premem.sampling.backend import check_int
from premem.train.sft import TrainConfig

log = logging.getLogger(__name__)

REJECTED_KINDS = ("sampled", "other", "slip")


@dataclass
class ProbesConfig:
    """The learning-dynamics experiment: probe SFT, off-policy DPO and the extend recipe on the tiny benchmark."""

    out: str = "premem-probes"
    """Directory for everything (per-seed data, runs, probe sets and stores; moves.csv, tables.txt, report.html)."""
    benchmark: ArithConfig = field(
        default_factory=lambda: ArithConfig(n_train=256, n_test=128, max_number=20, max_operand=6))
    """The task: the base model is the quickstart's for these settings, its test split gives the irrelevant responses."""
    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    """The tiny base model SFT starts from."""
    pairs: int = 256
    """Preference rows per seed (new problems, drawn with the seed)."""
    rejected: str = "other"
    """The rejected response: other (another problem's correct trace), sampled (a wrong answer sampled from the base
    model) or slip (this trace with one arithmetic slip carried on)."""
    sft: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=3e-3, epochs=8, batch_size=8, save_every="doubling", max_length=512)
    )
    """SFT, on chosen (sft) and on chosen and rejected (extend-sft); model, data and out are filled in."""
    dpo: TrainConfig = field(
        default_factory=lambda: TrainConfig(method="dpo", beta=0.1, lr=5e-4, epochs=8, batch_size=16, warmup_ratio=0.1,
                                            save_every="doubling", max_length=512)
    )
    """DPO, the same for both arms; model (and so the reference), data and out are filled in."""
    dpo_from: list[int] = field(default_factory=lambda: [1, 8])
    """SFT epochs after which DPO starts, one pair of DPO runs (dpo-e<k>, extend-dpo-e<k>) each; every one must be an
    epoch the SFT runs checkpoint (with save_every=doubling: 1, 2, 4, 8...)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds: of the preference data, of training, and of the probe draw."""
    probes: int = 32
    """Probe prompts per seed."""
    rephrase: bool = True
    """Probe types rephrase_chosen/rephrase_rejected, written by sft's last checkpoint."""
    actors: int = 1
    """Ray actors that score the probes."""
    progress: bool = True
    """Show progress bars."""


@dataclass(frozen=True, eq=False)
class SeedResult:
    seed: int
    store: Path
    runs: list[str]  # in the order they were trained: sft, extend-sft, then dpo-e<k>, extend-dpo-e<k> per start
    scores: pd.DataFrame  # the store's probe_scores, read once when the seed is done


def experiment(cfg: ProbesConfig) -> list[SeedResult]:
    """Train, probe and track every run of every seed; write moves.csv, tables.txt and report.html."""
    validate(cfg)
    out = Path(cfg.out)
    _, test_path = write_benchmark(cfg.benchmark, out / "data")
    base = build_base_model(cfg.model, cfg.benchmark, out / "base", cfg.progress)
    results = [run_seed(cfg, base, test_path, seed) for seed in cfg.seeds]
    moves = moves_table(results)
    with atomic_path(out / "moves.csv") as tmp:
        moves.to_csv(tmp, index=False)
    with atomic_path(out / "tables.txt") as tmp:
        tmp.write_text(tables_text(results), encoding="utf-8")
    from premem.report.probe_experiment import build_experiment_report

    build_experiment_report(out, results, moves, cfg)
    return results


def validate(cfg: ProbesConfig) -> None:
    """Every setting, checked before anything is written: one InputError naming the first bad field
    (settings that would fail after minutes of training fail now)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    check_benchmark(cfg.benchmark, "benchmark.", min_train=0)  # its test split gives the irrelevant responses
    check_base_model(cfg.model, "model.")
    if cfg.rejected not in REJECTED_KINDS:
        raise InputError(f"rejected {cfg.rejected!r}: expected one of {', '.join(REJECTED_KINDS)}")
    if cfg.dpo.method != "dpo":
        raise InputError(f"dpo.method {cfg.dpo.method!r}: the DPO runs must use method=dpo")
    if cfg.sft.method != "sft":
        raise InputError(f"sft.method {cfg.sft.method!r}: the SFT runs must use method=sft")
    check_train(cfg.sft, "sft.", method="sft")
    check_train(cfg.dpo, "dpo.", method="dpo")
    if cfg.sft.save_every != "doubling":
        raise InputError(f"sft.save_every {cfg.sft.save_every!r}: the DPO starts are found by epoch; use doubling")
    doubling = {2**i for i in range(cfg.sft.epochs.bit_length())} | {cfg.sft.epochs}
    bad = [e for e in cfg.dpo_from if e not in doubling] if isinstance(cfg.dpo_from, list) else [cfg.dpo_from]
    if bad or not cfg.dpo_from or len(set(cfg.dpo_from)) < len(cfg.dpo_from):
        raise InputError(f"dpo_from {cfg.dpo_from}: expected SFT epochs that are checkpointed ({sorted(doubling)}), "
                         "each once")
    check_int("probes", cfg.probes, 1)
    check_int("pairs", cfg.pairs, 1)
    if cfg.pairs < 2 * cfg.probes:
        raise InputError(f"pairs {cfg.pairs}: need at least twice the {cfg.probes} probe prompts")
    if not isinstance(cfg.seeds, list) or not cfg.seeds:
        raise InputError("seeds: expected at least one seed")
    for i, seed in enumerate(cfg.seeds):
        check_int(f"seeds[{i}]", seed, 0)
    if len(set(cfg.seeds)) < len(cfg.seeds):
        raise InputError(f"seeds: {cfg.seeds} lists a seed twice")
    check_int("actors", cfg.actors, 1)


def run_seed(cfg: ProbesConfig, base: Path, test_path: Path, seed: int) -> SeedResult:
    from premem.data.probes import ProbeBuildConfig, build_probes
    from premem.sampling.probes import ProbeTrackConfig, track
    from premem.train.sft import train

    where = Path(cfg.out) / f"seed{seed}"
    pairs_path, chosen_path, both_path = write_pairs(cfg, base, seed, where)
    runs = where / "runs"

    def fit(c: TrainConfig, name: str, model: Path, data: Path) -> Path:
        log.info("seed %d: %s", seed, name)
        return train(dataclasses.replace(c, model=str(model), train=DataConfig(path=str(data)), out=str(runs / name),
                                         run_name=name, seed=seed, progress=cfg.progress))

    sft = fit(cfg.sft, "sft", base, chosen_path)
    extend = fit(cfg.sft, "extend-sft", base, both_path)
    starts = {"sft": base, "extend-sft": base}
    for k in cfg.dpo_from:
        for name, sft_run in (("dpo", sft), ("extend-dpo", extend)):
            model = checkpoint_at_epoch(sft_run, k)
            starts[fit(cfg.dpo, f"{name}-e{k}", model, pairs_path).name] = model

    probes = where / "probes"
    if not (probes / "manifest.json").is_file():
        build_probes(ProbeBuildConfig(data=str(pairs_path), out=str(probes), n=cfg.probes, seed=seed,
                                      irrelevant=str(test_path), model=str(sft), rephrase=cfg.rephrase))
    for run, start in starts.items():
        track(ProbeTrackConfig(run=str(runs / run), probes=str(probes), data=str(pairs_path), store=str(where / "store"),
                               base=str(start), actors=cfg.actors, progress=cfg.progress))
    from premem.store import ScoreStore

    return SeedResult(seed, where / "store", list(starts), ScoreStore(where / "store").read("probe_scores"))


def write_pairs(cfg: ProbesConfig, base: Path, seed: int, where: Path) -> tuple[Path, Path, Path]:
    """The seed's preference rows, their chosen half as SFT data, and both halves (the extend recipe's SFT data)."""
    paths = where / "pairs.jsonl", where / "chosen.jsonl", where / "both.jsonl"
    if cfg.rejected == "sampled":  # draw extra problems: those the base model always gets right are skipped
        rows = sampled_wrong(preference_pairs(cfg.benchmark, 2 * cfg.pairs, seed=10_000 + seed), base, seed)
        if len(rows) < cfg.pairs:
            raise InputError(f"rejected=sampled: the base model got all but {len(rows)} of {2 * cfg.pairs} problems "
                             f"right in every sample; {cfg.pairs} pairs need more wrong answers (try rejected=slip)")
        rows = rows[: cfg.pairs]
    else:
        rows = preference_pairs(cfg.benchmark, cfg.pairs, seed=10_000 + seed)  # apart from the benchmark's own draws
    if cfg.rejected == "other":  # the next problem's correct trace: a wrong answer to this one, in no way on-policy
        rows = [dict(r, rejected=rows[(i + 1) % len(rows)]["chosen"]) for i, r in enumerate(rows)]
    write_jsonl(rows, paths[0], keys=("prompt", "chosen", "rejected"))
    write_jsonl([{"question": r["prompt"], "answer": r["chosen"]} for r in rows], paths[1])
    write_jsonl(sft_both(rows), paths[2])
    return paths


def sampled_wrong(rows: list[dict], base: Path, seed: int, samples: int = 8) -> list[dict]:
    """The rows whose prompt the base model answers wrongly in at least one of `samples` samples (temperature 1,
    the paper template), with the first wrong answer as rejected (one with a "#### N" final answer, so the extend
    recipe can train on it); the others are left out."""
    from premem.data.grading import get_grader
    from premem.data.templates import PaperTemplate
    from premem.sampling.backend import BackendOptions, SamplingParams
    from premem.sampling.checkpoints import find_checkpoints
    from premem.sampling.hf import HFBackend

    backend = HFBackend(find_checkpoints(base)[-1], BackendOptions(threads=1, batch_size=64))
    try:
        template, grader = PaperTemplate(), get_grader("gsm8k")
        prompts = [backend.tokenizer(r["prompt"] + "\nAnswer:")["input_ids"] for r in rows]
        params = SamplingParams(samples=samples, temperature=1.0, top_p=1.0, max_new_tokens=96, stop=template.stop)
        outs = backend.generate(prompts, params, [seed * 100_000 + i for i in range(len(rows))])
    finally:
        backend.close()
    kept = []
    for r, completions in zip(rows, outs):
        gold = grader.gold_from_solution(r["chosen"])
        grades = [(c.text.strip(), grader.grade(c.text, gold)) for c in completions]
        # a final answer, and a wrong one
        wrong = [text for text, g in grades if g.strict_answer is not None and not g.strict_correct]
        if wrong:
            kept.append(dict(r, rejected=wrong[0]))
    log.info("rejected=sampled: %d of %d problems have a wrong sample from the base model", len(kept), len(rows))
    return kept


def checkpoint_at_epoch(run_dir: Path, epoch: int) -> Path:
    """The run's checkpoint saved at the end of this epoch (premem_run.json records each one's epoch)."""
    from premem.train.sft import read_run_info

    info = read_run_info(run_dir) or {}
    for c in info.get("checkpoints", []):
        if abs(c["epoch"] - epoch) < 1e-6:
            return run_dir / f"checkpoint-{c['step']}"
    have = ", ".join(f"{c['epoch']:g}" for c in info.get("checkpoints", []))
    raise InputError(f"{run_dir}: no checkpoint at epoch {epoch} (epochs: {have or 'none'})")


def moves_table(results: list[SeedResult]) -> pd.DataFrame:
    """One row per seed, run, type and span: the move's mean, s.e., prompts up and prompts scored.
    span "all" is first to last checkpoint; SFT runs also get "trained", from their first checkpoint after
    step 0 on (the first epoch also teaches the base model the traces' format, which lifts every response)."""
    from premem.metrics.probes import moves

    rows = []
    for r in results:
        for run in r.runs:
            steps = sorted(set(r.scores.loc[r.scores["run"] == run, "step"]))
            spans = {"all": None} | ({"trained": steps[1]} if run.endswith("sft") and len(steps) > 2 else {})
            for span, first in spans.items():
                for t, m in moves(r.scores, run, first=first).items():
                    rows.append({"seed": r.seed, "run": run, "span": span, "first_step": first or steps[0],
                                 "last_step": steps[-1], "type": t, "mean": m.mean, "sem": m.sem, "up": m.up, "n": m.n})
    return pd.DataFrame(rows)


def sft_moves(moves: pd.DataFrame) -> pd.DataFrame:
    """The SFT runs' moves, mean over seeds: rows types (in table order), columns "<run> <span> (step a → b)"."""
    from premem.data.probes import ALL_TYPES

    sft = moves[moves["run"].str.endswith("sft")]
    if sft.empty:
        return pd.DataFrame()
    sft = sft.assign(column=[f"{r} {s} (step {a} → {b})" for r, s, a, b in
                             zip(sft["run"], sft["span"], sft["first_step"], sft["last_step"])])
    table = sft.pivot_table(index="type", columns="column", values="mean", aggfunc="mean", sort=False)
    return table.loc[[t for t in ALL_TYPES if t in table.index]].rename_axis(columns=None)


def tables_text(results: list[SeedResult]) -> str:
    from premem.metrics.probes import report

    return "\n\n".join(f"== seed {r.seed} ==\n\n{report(r.scores, r.runs)}" for r in results) + "\n"


def extend_comparison(results: list[SeedResult], dpo_from: list[int]) -> pd.DataFrame:
    """Per seed and DPO start: chosen's move under DPO in each arm, and extend's minus plain's, paired by prompt
    (positive: chosen falls less after the extend recipe's SFT)."""
    from premem.metrics.probes import compare, moves

    rows = []
    for r in results:
        for k in dpo_from:
            plain, ext = f"dpo-e{k}", f"extend-dpo-e{k}"
            d = compare(r.scores, ext, plain, "chosen")
            rows.append({"seed": r.seed, "from_epoch": k, "dpo_chosen": moves(r.scores, plain)["chosen"].mean,
                         "extend_chosen": moves(r.scores, ext)["chosen"].mean, "difference": d.mean, "sem": d.sem,
                         "prompts_less_fall": d.up, "n": d.n})
    return pd.DataFrame(rows)


def verdicts(results: list[SeedResult]) -> pd.DataFrame:
    """Per seed and run: the squeezing verdict and its three moves."""
    from premem.metrics.probes import squeezing

    rows = []
    for r in results:
        for run in r.runs:
            v = squeezing(r.scores, run)
            rows.append({"seed": r.seed, "run": run, "squeezing": {True: "yes", False: "no", None: "?"}[v.squeezing],
                         **{t: v.moves[t].describe() if t in v.moves else "-" for t in ("greedy", "chosen", "rejected")}})
    return pd.DataFrame(rows)
