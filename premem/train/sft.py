"""Supervised finetuning: TRL's SFTTrainer on prompt/completion rows, the loss on the completion only.

One premem train run (premem.train.api) with method=sft trains this trainer: every epoch (or
every N steps) a checkpoint is saved in the Hugging Face layout, weights only (no optimizer
state), which `premem score` finds (premem.runs.find_checkpoints):

    <run_dir>/checkpoint-<step>/   config.json, model.safetensors, tokenizer files, trainer_state.json

With cfg.lora the model is wrapped in LoRA adapters (peft, by TRL) and each checkpoint holds the
adapter instead: adapter_config.json (naming the base model's absolute path) + adapter_model.safetensors.
"""

from __future__ import annotations

from pathlib import Path

from premem.train.config import TrainConfig
from premem.train.trainer import (
    add_callbacks,
    dataset_bars_off,
    load_model,
    load_tokenizer,
    lora_errors,
    peft_config,
    training_args,
)


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
    with dataset_bars_off(), lora_errors(cfg):  # TRL's five dataset passes (eos, tokenize, labels, ...): milliseconds
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=peft_config(cfg))
    return add_callbacks(trainer, cfg, save_steps)

