"""`premem train`: supervised finetuning (or DPO) that leaves checkpoints premem can score.

One run: the training examples (a DataConfig, optionally a seeded fraction of them) are
rendered by a template into prompt/completion pairs (premem.train.rows) and finetuned by the
method's trainer (premem.train.sft, premem.train.dpo), which saves checkpoints in the Hugging
Face layout every epoch or every N steps. The run directory (premem.runs) then holds

    <run_dir>/checkpoint-<step>/   config.json, model.safetensors, tokenizer files, trainer_state.json
                                   (with lora: adapter_config.json + adapter_model.safetensors instead)
    <run_dir>/premem_run.json      what was trained (premem.runs.RUN_KEYS): run, model, lr, epochs,
                                   data_fraction, seed, batch_size, n_train, train_example_ids, checkpoints ...

`premem score` finds the checkpoints with premem.runs.find_checkpoints and reads premem_run.json
into runs.parquet. A sweep trains one run per point of a grid over lr, epochs, data_fraction and
seed, each in <out>/<name>/ (e.g. lr1e-3_ep3_frac0.5_s0).

Resuming is at the level of runs: premem_run.json is written first with finished=false
and rewritten with finished=true at the end, so a re-run skips finished runs and restarts
an interrupted one from scratch (checkpoints hold no optimizer state to resume from).

    cfg = load_config(TrainConfig, "configs/train/tiny.yaml")
    run_dir = train(cfg)                      # one run in cfg.out
    run_dirs = sweep(cfg, cfg.sweep)          # a grid of runs under cfg.out

workers > 1 trains data-parallel on Ray Train (premem.train.distributed); the run
directory looks the same either way. method=dpo trains in one process.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import time
from pathlib import Path

from premem.data import Example, ExampleSet, load_example_set
from premem.errors import InputError
from premem.models import load_config, local_model
from premem.runs import RUN_INFO, list_checkpoints, read_run_info, run_difference, run_record, write_run_info
from premem.train.config import SweepConfig, TrainConfig, check_config, check_model_dir, check_scheduler
from premem.train.fit import fit
from premem.train.rows import render_rows, subset
from premem.train.trainer import load_options, load_tokenizer

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> Path:
    """Finetune one run into cfg.out; returns the run directory. A finished run there is reused."""
    cfg = check_config(cfg)
    run_dir = Path(cfg.out)
    return _run(cfg, run_dir, cfg.run_name or run_dir.resolve().name)


def _run(cfg: TrainConfig, run_dir: Path, name: str) -> Path:
    model_dir = check_model_dir(cfg)
    dpo = cfg.method == "dpo"
    ref_dir = check_model_dir(cfg, "ref_model") if dpo and cfg.ref_model else model_dir
    data = load_example_set(cfg.train)
    if dpo and any(ex.rejected is None for ex in data.examples):
        raise InputError(
            f"{data.path}: method dpo trains on preference data (prompt, chosen, rejected); this is {data.format} data"
        )
    examples = subset(data.examples, cfg.data_fraction, cfg.seed)
    info = _record(cfg, name, model_dir, ref_dir, data, examples)
    if _reuse_finished(run_dir, info):
        return run_dir

    check_scheduler(cfg.lr_scheduler)
    tokenizer = load_tokenizer(cfg)
    context = _context_length(cfg, model_dir, ref_dir)
    rows = render_rows(data, examples, cfg.template, tokenizer, min(cfg.max_length, context or cfg.max_length),
                       preference=dpo)
    write_run_info(run_dir, info)  # first: marks the directory as a premem run, unfinished

    start = time.perf_counter()
    log.info("%s: training on %d examples for %d epochs (%d worker(s))", name, len(rows), cfg.epochs, cfg.workers)
    if cfg.workers > 1:
        from premem.train.distributed import fit_distributed  # imports Ray Train: only when asked for

        workers = fit_distributed(cfg, run_dir, rows)
    else:
        workers = [fit(cfg, run_dir, rows)]
    info = run_record(**{
        **info,
        "checkpoints": list_checkpoints(run_dir, cfg.allow_pickle),
        "seconds": round(time.perf_counter() - start, 2),
        "world_size": cfg.workers,
        "workers": workers,
        "finished": True,
    })
    write_run_info(run_dir, info)
    log.info("%s: %d checkpoints in %s (%.1f s)", name, len(info["checkpoints"]), run_dir, info["seconds"])
    return run_dir


def _record(cfg: TrainConfig, name: str, model_dir: Path, ref_dir: Path, data: ExampleSet,
            examples: list[Example]) -> dict:
    """The run's premem_run.json before training: what makes it this run, and finished=false."""
    dpo = {"beta": cfg.beta, "ref_model": cfg.ref_model or cfg.model, "ref_model_path": str(ref_dir.resolve())}
    return run_record(
        run=name,
        model=cfg.model,
        model_path=str(model_dir.resolve()),
        method=cfg.method,
        **(dpo if cfg.method == "dpo" else {}),
        **({"lora": dataclasses.asdict(cfg.lora)} if cfg.lora else {}),
        lr=cfg.lr,
        epochs=cfg.epochs,
        data_fraction=cfg.data_fraction,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        n_train=len(examples),
        train_example_ids=sorted(ex.example_id for ex in examples),
        checkpoints=[],
        template=cfg.template,
        max_length=cfg.max_length,
        lr_scheduler=cfg.lr_scheduler,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        grad_accum=cfg.grad_accum,
        save_every=cfg.save_every,
        checkpoints_asked=cfg.checkpoints,
        train_path=data.path,
        train_fingerprint=data.fingerprint,
        finished=False,
    )


def _context_length(cfg: TrainConfig, model_dir: Path, ref_dir: Path) -> int | None:
    """The model's context (None: it names none); refuses a reference model of another vocabulary."""
    model_cfg = load_config(local_model(model_dir), load_options(cfg))
    if ref_dir != model_dir:
        ref_cfg = load_config(local_model(ref_dir), load_options(cfg))
        vocab = getattr(model_cfg, "vocab_size", None), getattr(ref_cfg, "vocab_size", None)
        if vocab[0] != vocab[1]:
            raise InputError(f"ref_model: {ref_dir} has a vocabulary of {vocab[1]} tokens, the model {vocab[0]}; "
                             "the reference must share the model's tokenizer")
    return getattr(model_cfg, "max_position_embeddings", None)


def _reuse_finished(run_dir: Path, info: dict) -> bool:
    """True if run_dir holds this run, finished; clears an unfinished one; refuses foreign directories."""
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise InputError(f"out: {run_dir} exists and is not a directory")
    prior = read_run_info(run_dir)
    if prior is None:
        if any(run_dir.iterdir()):
            raise InputError(f"out: {run_dir} is not empty and holds no {RUN_INFO}; choose a new run directory")
        return False
    if not prior.get("finished"):
        log.info("%s: an unfinished run; starting it again", run_dir)
        shutil.rmtree(run_dir)
        return False
    differs = run_difference(prior, info)
    if differs:
        key, before, after = differs
        raise InputError(
            f"{run_dir / RUN_INFO}: a finished run with {key} {before!r}, not {after!r}; "
            "choose another run directory or delete this one"
        )
    log.info("%s: finished before; reusing it", run_dir)
    return True


# -- sweeps -----------------------------------------------------------------------------------


def grid_points(cfg: TrainConfig, grid: SweepConfig) -> list[tuple[str, TrainConfig]]:
    """(run name, config) for every point of the grid, in a fixed order."""
    axes = {}
    for key in (f.name for f in dataclasses.fields(SweepConfig)):
        values = getattr(grid, key)
        if values is None:
            values = [getattr(cfg, key)]
        if not isinstance(values, list) or not values:
            raise InputError(f"sweep.{key}: expected a non-empty list of values, got {values!r}")
        axes[key] = values
    points, seen = [], {}
    for combo in itertools.product(*axes.values()):
        point = check_config(dataclasses.replace(cfg, sweep=None, **dict(zip(axes, combo))))
        name = run_name(point)
        if name in seen:
            raise InputError(f"sweep: two grid points are both run {name}; list each value once")
        seen[name] = point
        points.append((name, point))
    return points


def run_name(cfg: TrainConfig) -> str:
    """lr1e-3_ep3_frac0.5_s0 (prefixed with cfg.run_name when set)."""
    mantissa, exponent = f"{cfg.lr:e}".split("e")
    lr = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    name = f"lr{lr}_ep{cfg.epochs}_frac{cfg.data_fraction:g}_s{cfg.seed}"
    return f"{cfg.run_name}_{name}" if cfg.run_name else name


def sweep(cfg: TrainConfig, grid: SweepConfig | None = None) -> list[Path]:
    """Train every grid point into <cfg.out>/<name>/; finished runs are reused. Returns the run dirs."""
    cfg = check_config(cfg)
    grid = grid or cfg.sweep or SweepConfig()
    points = grid_points(cfg, grid)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    log.info("sweep: %d runs under %s", len(points), out)
    return [_run(point, out / name, name) for name, point in points]
