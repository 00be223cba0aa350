"""What every premem trainer shares: the model and tokenizer it starts from, its schedule and
checkpoints (TRL's config), its callbacks, and quiet progress bars.

premem.train.sft and premem.train.dpo build their TRL trainer from these pieces; premem.train.fit
runs one of them.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from premem.errors import InputError
from premem.execution import BackendOptions
from premem.models import load_model as load_checkpoint_model
from premem.models import load_tokenizer as load_checkpoint_tokenizer
from premem.models import local_model
from premem.train.config import TrainConfig


def load_options(cfg: TrainConfig) -> BackendOptions:
    """How premem.models loads the run's models: local files, safetensors unless allow_pickle."""
    return BackendOptions(trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)


def load_tokenizer(cfg: TrainConfig):
    """The starting model's tokenizer, with a pad token (padding is masked out of the loss)."""
    tokenizer = load_checkpoint_tokenizer(local_model(cfg.model), load_options(cfg))
    if tokenizer.eos_token is None:
        raise InputError(f"{cfg.model}: the tokenizer has no eos token")
    if tokenizer.pad_token is None:  # any token will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: TrainConfig, path: str | Path):
    """The causal LM in `path`, float32 master weights (bf16 autocast on GPUs that have it)."""
    import torch

    if cfg.use_gpu and not torch.cuda.is_available():
        raise InputError("use_gpu: no CUDA device here")
    # resolved: a LoRA checkpoint's adapter_config.json names this path as its base, read from anywhere later
    return load_checkpoint_model(local_model(Path(path).resolve()), load_options(cfg), "float32")


def peft_config(cfg: TrainConfig):
    """peft's LoraConfig for TRL's trainer (None: full finetuning). Plain adapters only (no modules_to_save,
    bias or DoRA): what vLLM serves as adapters without merging."""
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM")


@contextlib.contextmanager
def lora_errors(cfg: TrainConfig):
    """peft's refusal of target modules the model lacks, as the one-line error naming the setting."""
    try:
        yield
    except ValueError as e:
        if cfg.lora is None or "target modules" not in str(e).lower():
            raise
        raise InputError(f"lora.target_modules: {cfg.lora.target_modules!r} does not fit {cfg.model} "
                         f"({str(e).splitlines()[0]})") from None


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


@contextlib.contextmanager
def quiet_bars(quiet: bool):
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
