"""What `premem train` is told: the run's config (TrainConfig), a sweep's grid (SweepConfig), and their checks.

    cfg = check_config(load_config(TrainConfig, "configs/train/tiny.yaml"))

check_config refuses a bad field in one line naming it, before anything is loaded; check_scheduler
(which imports transformers) and check_model_dir (which reads the model directory) are apart.

With `lora:` set, a run trains LoRA adapters (peft, through TRL's peft_config) instead of the whole
model, and its checkpoints hold adapters (adapter_config.json + adapter_model.safetensors on the
base model's absolute path), which `premem score` finds and serves as adapters:

    lora: {rank: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from premem.data import DataConfig
from premem.errors import InputError
from premem.execution import check_int, check_number

_RUN_NAME = re.compile(r"^[A-Za-z0-9._=+-]+$")
METHODS = ("sft", "dpo")
ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output layer


@dataclass
class LoraConfig:
    """LoRA adapters to train instead of the whole model (peft's LoraConfig, given to TRL's trainer)."""

    rank: int = 16
    """r: the rank of each adapter's update B @ A (vLLM serves ranks up to 512 as adapters; above, merged)."""
    alpha: float = 32.0
    """lora_alpha: the update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on each adapted layer's input during training."""
    target_modules: list[str] | str = ALL_LINEAR
    """The layers adapted: "all-linear" (every linear layer but the output layer) or a list of module names
    (e.g. [q_proj, v_proj]; a name matches a module whose name ends with it)."""


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
    lora: LoraConfig | None = None
    """Train LoRA adapters (rank, alpha, dropout, target_modules) instead of the whole model; checkpoints then
    hold adapters on the model, which premem score serves as adapters (none: full finetuning)."""
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
        lora=check_lora(cfg.lora) if cfg.lora is not None else None,
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


def check_lora(lora: LoraConfig) -> LoraConfig:
    """The LoRA settings with numbers coerced; InputError names a bad one as lora.<field>."""
    if not isinstance(lora, LoraConfig):
        raise InputError(f"lora: expected the LoRA settings (rank, alpha, dropout, target_modules), got {lora!r}")
    modules = lora.target_modules
    if isinstance(modules, str):
        if modules != ALL_LINEAR:
            raise InputError(f"lora.target_modules: expected {ALL_LINEAR!r} or a list of module names, got {modules!r}")
    elif not (isinstance(modules, list) and modules and all(isinstance(m, str) and m.strip() for m in modules)):
        raise InputError(f"lora.target_modules: expected {ALL_LINEAR!r} or a non-empty list of module names, "
                         f"got {modules!r}")
    elif len(set(modules)) < len(modules):
        raise InputError(f"lora.target_modules: {modules} names a module twice")
    return dataclasses.replace(
        lora,
        rank=_number(lora.rank, "lora.rank", int, low=1),
        alpha=_number(lora.alpha, "lora.alpha", float, low=0.0, low_open=True),
        dropout=_number(lora.dropout, "lora.dropout", float, low=0.0, high=1.0, high_open=True),
    )


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


# -- the training settings a recipe fills in (the quickstart and the experiments) ---------------------


def check_recipe_train(t: TrainConfig, prefix: str, method: str = "sft") -> None:
    """A recipe's training settings (model, data and out are the recipe's own), with train's own checks;
    prefix names where they sit (e.g. "train.")."""
    try:
        check_config(dataclasses.replace(t, model=t.model or "base", out=t.out or "runs"))
        check_scheduler(t.lr_scheduler)
    except InputError as e:
        raise InputError(f"{prefix}{e}") from None
    if t.method != method:
        raise InputError(f"{prefix}method {t.method!r}: these runs must use method={method}")


def check_sweep(sweep: SweepConfig, prefix: str) -> None:
    """Each list of the grid: non-empty where given, no value twice, every value one a run can take."""
    rules = {
        "lr": lambda name, v: check_number(name, v, lambda lr: lr > 0, "a number > 0"),
        "epochs": lambda name, v: check_int(name, v, 1),
        "data_fraction": lambda name, v: check_number(name, v, lambda f: 0 < f <= 1, "a number in (0, 1]"),
        "seed": lambda name, v: check_int(name, v, 0),
    }
    for key, check in rules.items():
        values = getattr(sweep, key)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            raise InputError(f"{prefix}{key}: expected a non-empty list, got {values!r}")
        for i, v in enumerate(values):
            check(f"{prefix}{key}[{i}]", v)
        if len(set(values)) < len(values):
            raise InputError(f"{prefix}{key}: {values} lists a value twice (the same run twice)")
