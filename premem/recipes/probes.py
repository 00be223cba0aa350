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
from premem.data.arith import ArithConfig, preference_pairs, sft_both, write_benchmark, write_jsonl
from premem.errors import InputError
from premem.execution import ExecConfig, check_int
from premem.files import atomic_path
from premem.metrics.probe_analysis import SeedScores, extend_comparison, moves_table, sft_moves, tables_text, verdicts
from premem.report.probe_experiment import build_experiment_report
from premem.train.base_model import BaseModelConfig, build_base_model
from premem.train.config import TrainConfig, check_recipe_train

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
    exec: ExecConfig = field(default_factory=ExecConfig)
    """How the probes are scored (backend, its options, Ray actors: one pool for every run) and the rephrases
    written (backend and options), and whether bars show."""


@dataclass(frozen=True, eq=False)
class SeedResult(SeedScores):
    """One seed's runs and probe scores (read once when the seed is done), and the store they came from."""

    store: Path


@dataclass(frozen=True, eq=False)
class ProbesResult:
    """What experiment() made: per seed its runs and scores; moves.csv, tables.txt and report.html in out."""

    out: Path
    dpo_from: list[int]
    seeds: list[SeedResult]


def experiment(cfg: ProbesConfig) -> ProbesResult:
    """Train, probe and track every run of every seed; write moves.csv, tables.txt and report.html."""
    validate(cfg)
    out = Path(cfg.out)
    _, test_path = write_benchmark(cfg.benchmark, out / "data")
    base = build_base_model(cfg.model, cfg.benchmark, out / "base", cfg.exec.progress)
    results = [run_seed(cfg, base, test_path, seed) for seed in cfg.seeds]
    moves = moves_table(results)
    with atomic_path(out / "moves.csv") as tmp:
        moves.to_csv(tmp, index=False)
    with atomic_path(out / "tables.txt") as tmp:
        tmp.write_text(tables_text(results), encoding="utf-8")
    build_experiment_report(out, results, moves, cfg)
    return ProbesResult(out, list(cfg.dpo_from), results)


def summary(result: ProbesResult) -> str:
    """What `premem experiment probes` prints when it is done: SFT's moves, the verdicts, the extend comparison."""
    out = result.out
    ext = extend_comparison(result.seeds, result.dpo_from)
    lines = [
        "\nSFT: change of the mean summed log π(y|x) per type, mean over seeds "
        "(all: from the base model; trained: from the first epoch's checkpoint on)\n",
        sft_moves(pd.read_csv(out / "moves.csv")).to_string(float_format=lambda v: f"{v:+.1f}"),
        "\nsqueezing verdicts (change from the run's first checkpoint to its last; mean ± s.e. over prompts)\n",
        verdicts(result.seeds).to_string(index=False),
        "\nthe extend recipe: chosen's move under the same DPO, and extend − dpo paired by prompt "
        "(positive: chosen falls less)\n",
        ext.to_string(index=False, float_format=lambda v: f"{v:+.2f}"),
    ]
    for k, g in ext.groupby("from_epoch"):
        lines.append(f"from SFT epoch {k}: extend − dpo = {g['difference'].mean():+.2f} nats over {len(g)} seeds "
                     f"(per seed {', '.join(f'{d:+.2f}' for d in g['difference'])})")
    lines.append(f"\n{out / 'tables.txt'} (every run's table per checkpoint)  {out / 'moves.csv'}")
    lines.append(f"report: {out / 'report.html'}")
    return "\n".join(lines)


def validate(cfg: ProbesConfig) -> None:
    """Every setting, checked before anything is written: one InputError naming the first bad field
    (settings that would fail after minutes of training fail now)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    cfg.benchmark.validate("benchmark.", min_train=0)  # its test split gives the irrelevant responses
    cfg.model.validate("model.")
    if cfg.rejected not in REJECTED_KINDS:
        raise InputError(f"rejected {cfg.rejected!r}: expected one of {', '.join(REJECTED_KINDS)}")
    if cfg.dpo.method != "dpo":
        raise InputError(f"dpo.method {cfg.dpo.method!r}: the DPO runs must use method=dpo")
    if cfg.sft.method != "sft":
        raise InputError(f"sft.method {cfg.sft.method!r}: the SFT runs must use method=sft")
    check_recipe_train(cfg.sft, "sft.", method="sft")
    check_recipe_train(cfg.dpo, "dpo.", method="dpo")
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
    cfg.exec.validate()


def run_seed(cfg: ProbesConfig, base: Path, test_path: Path, seed: int) -> SeedResult:
    from premem.data.probes import ProbeBuildConfig
    from premem.sampling.probe_build import build_probes
    from premem.sampling.probes import ProbeTrackConfig, track
    from premem.train.api import train

    where = Path(cfg.out) / f"seed{seed}"
    pairs_path, chosen_path, both_path = write_pairs(cfg, base, seed, where)
    runs = where / "runs"

    def fit(c: TrainConfig, name: str, model: Path, data: Path) -> Path:
        log.info("seed %d: %s", seed, name)
        return train(dataclasses.replace(c, model=str(model), train=DataConfig(path=str(data)), out=str(runs / name),
                                         run_name=name, seed=seed, progress=cfg.exec.progress))

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
                                      irrelevant=str(test_path), model=str(sft), rephrase=cfg.rephrase, exec=cfg.exec))
    for run, start in starts.items():
        track(ProbeTrackConfig(run=str(runs / run), probes=str(probes), data=str(pairs_path), store=str(where / "store"),
                               base=str(start), exec=cfg.exec))  # one pool for every run (premem.execution)
    from premem.store import ScoreStore

    return SeedResult(seed, list(starts), ScoreStore(where / "store").read("probe_scores"), where / "store")


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
    from premem.execution import BackendOptions
    from premem.sampling.backend import SamplingParams
    from premem.runs import find_checkpoints
    from premem.sampling.hf import HFBackend

    # always transformers, in this process, whatever cfg.exec says: the pairs are the experiment's data, and must
    # be the same whichever engine then tracks the runs (sampling differs across engines for one seed)
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
    from premem.runs import read_run_info

    info = read_run_info(run_dir) or {}
    for c in info.get("checkpoints", []):
        if abs(c["epoch"] - epoch) < 1e-6:
            return run_dir / f"checkpoint-{c['step']}"
    have = ", ".join(f"{c['epoch']:g}" for c in info.get("checkpoints", []))
    raise InputError(f"{run_dir}: no checkpoint at epoch {epoch} (epochs: {have or 'none'})")
