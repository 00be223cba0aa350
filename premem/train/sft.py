"""`premem train`: supervised finetuning (or DPO) that leaves checkpoints premem can score.

One run: the training examples (a DataConfig, optionally a seeded fraction of them) are
rendered by a template into prompt/completion pairs and finetuned with TRL's SFTTrainer,
the loss on the completion only. Every epoch (or every N steps) a checkpoint is saved in
the Hugging Face layout, weights only (no optimizer state):

    <run_dir>/checkpoint-<step>/   config.json, model.safetensors, tokenizer files, trainer_state.json
    <run_dir>/premem_run.json      what was trained: run, model, lr, epochs, data_fraction, seed,
                                   batch_size, n_train, train_example_ids, checkpoints [{step, epoch}]

`premem score` finds the checkpoints with premem.sampling.checkpoints.find_checkpoints and
reads premem_run.json into runs.parquet. A sweep trains one run per point of a grid over
lr, epochs, data_fraction and seed, each in <out>/<name>/ (e.g. lr1e-3_ep3_frac0.5_s0).

Resuming is at the level of runs: premem_run.json is written first with finished=false
and rewritten with finished=true at the end, so a re-run skips finished runs and restarts
an interrupted one from scratch (checkpoints hold no optimizer state to resume from).

    cfg = load_config(TrainConfig, "configs/train/tiny.yaml")
    run_dir = train(cfg)                      # one run in cfg.out
    run_dirs = sweep(cfg, cfg.sweep)          # a grid of runs under cfg.out

workers > 1 trains data-parallel on Ray Train (premem.train.distributed); the run
directory looks the same either way. method=dpo trains the same kind of run on preference
data with TRL's DPOTrainer (premem.train.dpo), in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from premem.data import DataConfig, Example, ExampleSet, get_template, load_example_set
from premem.errors import InputError
from premem.files import atomic_path

log = logging.getLogger(__name__)

RUN_INFO = "premem_run.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9._=+-]+$")
# Settings that make two runs different runs: a finished run is reused only if these match.
_SAME_RUN_KEYS = ("model_path", "lr", "epochs", "data_fraction", "seed", "batch_size", "template", "max_length",
                  "train_fingerprint", "lr_scheduler", "warmup_ratio", "weight_decay", "save_every",
                  "checkpoints_asked", "method", "beta", "ref_model_path")
# What a record written before a key existed meant by its absence.
_RECORD_DEFAULTS = {"method": "sft"}
METHODS = ("sft", "dpo")


@dataclass
class SweepConfig:
    """A grid of runs: every combination of the listed values (a missing list: the base config's value)."""

    lr: list[float] | None = None
    """Learning rates."""
    epochs: list[int] | None = None
    """Numbers of epochs."""
    data_fraction: list[float] | None = None
    """Fractions of the training examples (seeded subsets)."""
    seed: list[int] | None = None
    """Seeds (of the subset, the data order and the trainer)."""


@dataclass
class TrainConfig:
    """What `premem train` finetunes, on which data, how, and where it writes."""

    model: str = ""
    """Local Hugging Face model directory (config.json, *.safetensors, tokenizer files) to finetune."""
    method: str = "sft"
    """sft (supervised finetuning on the solution) or dpo (direct preference optimization on preference data:
    prompt/chosen/rejected, each response rendered by the template like an SFT target; one process only)."""
    beta: float = 0.1
    """method=dpo: the DPO temperature (larger keeps the model closer to the reference model)."""
    ref_model: str = ""
    """method=dpo: local model directory of the frozen reference model (default: the starting model itself,
    i.e. the SFT checkpoint DPO starts from)."""
    train: DataConfig = field(default_factory=DataConfig)
    """Training data (any format premem reads; see configs/data/)."""
    out: str = ""
    """Run directory (one run); for a sweep, the directory holding one run directory per grid point."""
    run_name: str | None = None
    """Name of the run (default: the run directory's name); in a sweep, a prefix of the generated names."""
    template: str = "paper"
    """Prompt template: paper (question + "\\nAnswer:" -> " " + solution + "\\nDone.") or chat (the tokenizer's)."""
    lr: float = 2e-5
    """Peak learning rate (AdamW)."""
    epochs: int = 3
    """Passes over the training examples."""
    data_fraction: float = 1.0
    """Train on this fraction of the examples, drawn with `seed` (a smaller fraction's subset is in a larger one's)."""
    seed: int = 0
    """Seed of the data subset, the data order and the trainer."""
    batch_size: int = 128
    """Examples per optimizer step, over all workers and accumulation steps (the paper's runs: 128)."""
    grad_accum: int = 1
    """Gradient accumulation steps: each worker's micro-batch is batch_size / (workers * grad_accum)."""
    max_length: int = 1024
    """Longest prompt + target in tokens; a longer example is an error (it would be truncated or dropped)."""
    save_every: str | int = "epoch"
    """Checkpoint frequency: "epoch"; "doubling" (epochs 1, 2, 4, 8, ... and the last: dense while the model
    still solves problems its own way, sparse once it has memorized them); or a number of optimizer steps
    (the last step is always saved)."""
    checkpoints: int = 0
    """If > 0: save about this many evenly spaced checkpoints instead (save_every is then ignored), so
    short and long runs of a sweep get the same number of points to score."""
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: str = "linear"
    """Learning-rate schedule after warm-up: linear, cosine, constant, ... (transformers' scheduler names)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower (large models)."""
    threads: int = 1
    """torch CPU threads per training process (on a shared machine more threads can spin-wait and be slower)."""
    workers: int = 1
    """Training processes: 1 trains in this process; more train data-parallel on Ray Train."""
    use_gpu: bool = False
    """Train on GPUs (one per worker)."""
    address: str | None = None
    """Ray cluster to join when workers > 1 (default: start a local Ray); out must then be on shared storage."""
    trust_remote_code: bool = False
    """Allow the model's own Python code to run (off unless you trust the model)."""
    allow_pickle: bool = False
    """Allow loading .bin/.pt (pickle) weights; by default only safetensors are loaded."""
    progress: bool = True
    """Show a progress bar."""
    sweep: SweepConfig | None = None
    """A grid of runs (premem train runs it when present, or with --sweep)."""


# -- config checks ---------------------------------------------------------------------------


def check_config(cfg: TrainConfig) -> TrainConfig:
    """The config with numbers coerced (YAML reads "1e-5" as text); InputError names a bad field."""
    if not cfg.model:
        raise InputError("model: say which model to finetune (a local Hugging Face model directory)")
    if not cfg.out:
        raise InputError("out: say where to write the run (a directory)")
    if cfg.template not in ("paper", "chat"):
        raise InputError(f"template: unknown template {cfg.template!r}; known: paper, chat")
    if cfg.run_name is not None and not _RUN_NAME.match(str(cfg.run_name)):
        raise InputError(f"run_name: {cfg.run_name!r} may hold only letters, digits and . _ = + -")
    if cfg.method not in METHODS:
        raise InputError(f"method: unknown method {cfg.method!r}; known: {', '.join(METHODS)}")
    c = dataclasses.replace(
        cfg,
        lr=_number(cfg.lr, "lr", float, low=0.0, low_open=True),
        epochs=_number(cfg.epochs, "epochs", int, low=1),
        data_fraction=_number(cfg.data_fraction, "data_fraction", float, low=0.0, low_open=True, high=1.0),
        seed=_number(cfg.seed, "seed", int, low=0),
        batch_size=_number(cfg.batch_size, "batch_size", int, low=1),
        grad_accum=_number(cfg.grad_accum, "grad_accum", int, low=1),
        max_length=_number(cfg.max_length, "max_length", int, low=2),
        warmup_ratio=_number(cfg.warmup_ratio, "warmup_ratio", float, low=0.0, high=1.0, high_open=True),
        weight_decay=_number(cfg.weight_decay, "weight_decay", float, low=0.0),
        threads=_number(cfg.threads, "threads", int, low=1),
        workers=_number(cfg.workers, "workers", int, low=1),
        checkpoints=_number(cfg.checkpoints, "checkpoints", int, low=0),
        beta=_number(cfg.beta, "beta", float, low=0.0, low_open=True),
    )
    if c.method == "dpo" and c.workers > 1:
        raise InputError(f"workers: method dpo trains in one process; set workers=1 (got {c.workers})")
    if c.save_every not in ("epoch", "doubling"):
        if isinstance(c.save_every, str) and not c.save_every.strip().isdigit():
            raise InputError(f"save_every: expected 'epoch', 'doubling' or a number of steps, got {c.save_every!r}")
        c.save_every = _number(c.save_every, "save_every", int, low=1)
    if c.batch_size % (c.workers * c.grad_accum):
        raise InputError(
            f"batch_size: {c.batch_size} examples per step do not split evenly over {c.workers} worker(s) x "
            f"{c.grad_accum} accumulation step(s); make batch_size a multiple of workers * grad_accum"
        )
    return c


def check_scheduler(name: str) -> None:
    """Apart from check_config: importing transformers takes seconds, too long for a config check."""
    from transformers import SchedulerType

    known = [s.value for s in SchedulerType]
    if name not in known:
        raise InputError(f"lr_scheduler: unknown schedule {name!r}; known: {', '.join(known)}")


def _number(value: Any, name: str, kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False):
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = float(value) if kind is float else int(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if low is not None and (number < low or (low_open and number == low)):
        raise InputError(f"{name}: expected a value {'above' if low_open else 'at least'} {low:g}, got {value!r}")
    if high is not None and (number > high or (high_open and number == high)):
        raise InputError(f"{name}: expected a value {'below' if high_open else 'at most'} {high:g}, got {value!r}")
    return number


def check_model_dir(cfg: TrainConfig, key: str = "model") -> Path:
    """The model directory cfg.<key>, if it is a local full model premem may load."""
    path = Path(getattr(cfg, key))
    if not path.is_dir():
        raise InputError(f"{key}: {path} is not a local model directory (premem trains local models only)")
    names = {p.name for p in path.iterdir() if p.is_file()}
    if "config.json" not in names:
        hint = " (a LoRA adapter: merge it into its base model first)" if "adapter_config.json" in names else ""
        raise InputError(f"{path}: no config.json; not a Hugging Face model directory{hint}")
    if not any(n.endswith(".safetensors") for n in names):
        pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth")) and n != "training_args.bin")
        if not pickles:
            raise InputError(f"{path}: no model weights (*.safetensors)")
        if not cfg.allow_pickle:
            raise InputError(
                f"{path}: only pickle weights ({pickles[0]}); premem loads safetensors only — set allow_pickle=true "
                "if you trust this file"
            )
    return path


# -- data -------------------------------------------------------------------------------------


def subset(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """A seeded fraction of the examples, in file order.

    The first round(fraction * n) of one seeded permutation: for a given seed the subset of a
    smaller fraction lies inside that of a larger one, so runs over fractions are nested.
    """
    if fraction >= 1.0:
        return list(examples)
    n = max(1, round(fraction * len(examples)))
    keep = set(np.random.default_rng(seed).permutation(len(examples))[:n].tolist())
    return [ex for i, ex in enumerate(examples) if i in keep]


def render_rows(data: ExampleSet, examples: list[Example], template_name: str, tokenizer, limit: int,
                preference: bool = False) -> list[dict]:
    """TRL prompt-completion rows ({"prompt", "completion", "example_id"}), length-checked.

    preference=True: TRL preference rows ({"prompt", "chosen", "rejected", "example_id"}), each
    response rendered like a target (the examples must hold a rejected response).

    TRL tokenizes prompt and prompt+completion with the tokenizer's special tokens and masks
    the prompt out of the loss (completion-only loss). The paper template's prompt is plain
    text, so that gives what `premem score` scores: tokenizer(prompt) + tokenizer(target,
    add_special_tokens=False). A chat prompt already holds its special tokens as text; a BOS
    written there is stripped, since the tokenizer adds it back.
    TRL appends eos to a completion that does not end with it: the model also learns to
    stop after the paper template's "\\nDone.".
    """
    template = get_template(template_name, tokenizer)
    chat = template_name == "chat"
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    rows = []
    for ex in examples:
        r = template.render(ex)
        prompt = r.prompt
        if chat and adds_bos and prompt.startswith(bos):
            prompt = prompt[len(bos):]
        n_prompt = len(tokenizer(prompt)["input_ids"])
        for name, target in [("target", r.target)] + ([("rejected response", r.rejected)] if preference else []):
            n = n_prompt + len(tokenizer(target, add_special_tokens=False)["input_ids"])
            n += 0 if target.endswith(tokenizer.eos_token) else 1
            if n > limit:
                raise InputError(
                    f"{data.path} example {ex.example_id}: prompt and {name} take {n} tokens, more than the {limit} "
                    "allowed (max_length, or the model's context); raise max_length or drop the example"
                )
        if preference:
            rows.append({"prompt": prompt, "chosen": r.target, "rejected": r.rejected, "example_id": ex.example_id})
        else:
            rows.append({"prompt": prompt, "completion": r.target, "example_id": ex.example_id})
    return rows


# -- one run ----------------------------------------------------------------------------------


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
    info = {
        "run": name,
        "model": cfg.model,
        "model_path": str(model_dir.resolve()),
        "method": cfg.method,
        **({"beta": cfg.beta, "ref_model": cfg.ref_model or cfg.model, "ref_model_path": str(ref_dir.resolve())}
           if dpo else {}),
        "lr": cfg.lr,
        "epochs": cfg.epochs,
        "data_fraction": cfg.data_fraction,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "n_train": len(examples),
        "train_example_ids": sorted(ex.example_id for ex in examples),
        "checkpoints": [],
        "template": cfg.template,
        "max_length": cfg.max_length,
        "lr_scheduler": cfg.lr_scheduler,
        "warmup_ratio": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "grad_accum": cfg.grad_accum,
        "save_every": cfg.save_every,
        "checkpoints_asked": cfg.checkpoints,
        "train_path": data.path,
        "train_fingerprint": data.fingerprint,
        "finished": False,
    }
    if _reuse_finished(run_dir, info):
        return run_dir

    check_scheduler(cfg.lr_scheduler)
    tokenizer = load_tokenizer(cfg)
    from transformers import AutoConfig

    def model_config(path):
        return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, local_files_only=True)

    model_cfg = model_config(model_dir)
    context = getattr(model_cfg, "max_position_embeddings", None)
    if ref_dir != model_dir:
        vocab = getattr(model_cfg, "vocab_size", None), getattr(model_config(ref_dir), "vocab_size", None)
        if vocab[0] != vocab[1]:
            raise InputError(f"ref_model: {ref_dir} has a vocabulary of {vocab[1]} tokens, the model {vocab[0]}; "
                             "the reference must share the model's tokenizer")
    rows = render_rows(data, examples, cfg.template, tokenizer, min(cfg.max_length, context or cfg.max_length),
                       preference=dpo)
    write_run_info(run_dir, info)  # first: marks the directory as a premem run, unfinished

    start = time.perf_counter()
    log.info("%s: training on %d examples for %d epochs (%d worker(s))", name, len(rows), cfg.epochs, cfg.workers)
    if cfg.workers > 1:
        from premem.train.distributed import fit_distributed

        workers = fit_distributed(cfg, run_dir, rows)
    else:
        workers = [fit(cfg, run_dir, rows)]
    info.update(
        checkpoints=list_checkpoints(run_dir, cfg.allow_pickle),
        seconds=round(time.perf_counter() - start, 2),
        world_size=cfg.workers,
        workers=workers,
        finished=True,
    )
    write_run_info(run_dir, info)
    log.info("%s: %d checkpoints in %s (%.1f s)", name, len(info["checkpoints"]), run_dir, info["seconds"])
    return run_dir


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
    for key in _SAME_RUN_KEYS:
        before = prior.get(key, _RECORD_DEFAULTS.get(key))
        if before != info.get(key):
            raise InputError(
                f"{run_dir / RUN_INFO}: a finished run with {key} {before!r}, not {info.get(key)!r}; "
                "choose another run directory or delete this one"
            )
    log.info("%s: finished before; reusing it", run_dir)
    return True


def read_run_info(run_dir: str | Path) -> dict | None:
    """The run's premem_run.json, or None if it has none."""
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None


def write_run_info(run_dir: Path, info: dict) -> None:
    # one key per line, each value on its line: readable, and the id list stays one line
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in info.items()) + "\n}\n"
    with atomic_path(Path(run_dir) / RUN_INFO) as tmp:
        tmp.write_text(text)


def list_checkpoints(run_dir: Path, allow_pickle: bool = False) -> list[dict]:
    """[{step, epoch}] of the run's checkpoints, as `premem score` will find them."""
    from premem.sampling.checkpoints import find_checkpoints

    out = []
    for c in find_checkpoints(run_dir, allow_pickle=allow_pickle):
        state = json.loads((c.path / "trainer_state.json").read_text())
        out.append({"step": c.step, "epoch": round(float(state["epoch"]), 4)})
    return out


# -- the trainer (runs in this process, or in each Ray Train worker) ----------------------------


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code,
                                                  local_files_only=True)
    except (OSError, ValueError) as e:
        raise InputError(f"{cfg.model}: cannot load the tokenizer ({e})") from None
    if tokenizer.eos_token is None:
        raise InputError(f"{cfg.model}: the tokenizer has no eos token")
    if tokenizer.pad_token is None:  # padding is masked out of the loss; any token will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_trainer(cfg: TrainConfig, run_dir: Path, rows: list[dict], world_size: int = 1):
    """TRL's SFTTrainer for this run: completion-only loss, weights-only checkpoints in run_dir."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, cfg.model)
    args, save_steps = training_args(
        cfg, run_dir, len(rows), world_size, SFTConfig,
        completion_only_loss=True,  # prompt tokens get label -100 (needs the prompt-completion form)
        max_length=cfg.max_length,
    )
    # example_id rides along for the record; the trainer drops columns the model does not take
    with dataset_bars_off():  # TRL's five dataset passes (eos, tokenize, labels, ...) take milliseconds
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return add_callbacks(trainer, cfg, save_steps)


def load_model(cfg: TrainConfig, path: str):
    """The causal LM in `path`, float32 master weights (bf16 autocast on GPUs that have it)."""
    import torch
    from transformers import AutoModelForCausalLM

    if cfg.use_gpu and not torch.cuda.is_available():
        raise InputError("use_gpu: no CUDA device here")
    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.float32,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=None if cfg.allow_pickle else True,
        local_files_only=True,
    )


def training_args(cfg: TrainConfig, run_dir: Path, n_rows: int, world_size: int, config_class, **extra):
    """(TRL config of config_class, save_steps): the run's schedule and checkpoints, whatever the method."""
    import torch

    save_steps = cfg.save_every
    if cfg.checkpoints:
        # the trainer's step count: each optimizer step takes batch_size examples over all workers
        total = math.ceil(n_rows / cfg.batch_size) * cfg.epochs
        save_steps = max(1, math.ceil(total / cfg.checkpoints))
    by_epoch = save_steps in ("epoch", "doubling")
    args = config_class(
        output_dir=str(run_dir),
        per_device_train_batch_size=cfg.batch_size // (world_size * cfg.grad_accum),
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="epoch" if by_epoch else "steps",
        save_steps=1 if by_epoch else save_steps,
        save_only_model=True,  # weights, config, tokenizer, trainer_state.json: what scoring needs
        logging_steps=0.1,  # a fraction of the run: ten loss lines per run, not one per step
        report_to="none",
        disable_tqdm=not cfg.progress,
        use_cpu=not cfg.use_gpu,
        bf16=bool(cfg.use_gpu and torch.cuda.is_bf16_supported()),
        gradient_checkpointing=cfg.gradient_checkpointing,  # TRL turns it on by default
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every parameter gets a gradient; True costs a graph walk per step
        **extra,
    )
    return args, save_steps


def add_callbacks(trainer, cfg: TrainConfig, save_steps):
    """The doubling-epochs saver when asked for, and no log printing without a progress bar."""
    from transformers import PrinterCallback

    if save_steps == "doubling":
        trainer.add_callback(doubling_epochs())
    if not cfg.progress:  # without a progress bar the Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    return trainer


@contextlib.contextmanager
def dataset_bars_off():
    """No datasets progress bars while a trainer prepares its dataset (restored after)."""
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def doubling_epochs():
    """A callback keeping the checkpoints of epochs 1, 2, 4, 8, ... and the last step."""
    from transformers import TrainerCallback

    class DoublingEpochs(TrainerCallback):
        """Keep the epoch-end saves of epochs 1, 2, 4, 8, ... and the last; drop the others.

        Runs after the trainer's own flow callback, which asks for a save at every epoch end."""

        def on_epoch_end(self, args, state, control, **kwargs):
            epoch = round(state.epoch)
            last = state.global_step >= state.max_steps
            control.should_save = last or (epoch & (epoch - 1) == 0)
            return control

    return DoublingEpochs()


def fit(cfg: TrainConfig, run_dir: Path, rows: list[dict], world_size: int = 1, rank: int = 0) -> dict:
    """Train one process's part of the run; returns what it did, for the record."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with _quiet(not cfg.progress):
            if cfg.method == "dpo":
                from premem.train.dpo import build_dpo_trainer

                trainer = build_dpo_trainer(cfg, run_dir, rows)
            else:
                trainer = build_trainer(cfg, run_dir, rows, world_size)
            result = trainer.train()
    finally:
        torch.set_num_threads(before)
    return {
        "rank": rank,
        "pid": os.getpid(),
        "world_size": trainer.args.world_size,
        "steps": result.global_step,
        "train_loss": round(float(result.training_loss), 6),
    }


@contextlib.contextmanager
def _quiet(quiet: bool):
    """No datasets / transformers progress bars while quiet (their switches are global: restored after)."""
    import datasets
    from transformers.utils import logging as hf_logging

    turn_off = quiet and not datasets.are_progress_bars_disabled(), quiet and hf_logging.is_progress_bar_enabled()
    if turn_off[0]:
        datasets.disable_progress_bars()
    if turn_off[1]:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if turn_off[0]:
            datasets.enable_progress_bars()
        if turn_off[1]:
            hf_logging.enable_progress_bar()


# -- sweeps -----------------------------------------------------------------------------------


def grid_points(cfg: TrainConfig, grid: SweepConfig) -> list[tuple[str, TrainConfig]]:
    """(run name, config) for every point of the grid, in a fixed order."""
    axes = {}
    for key in ("lr", "epochs", "data_fraction", "seed"):
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
