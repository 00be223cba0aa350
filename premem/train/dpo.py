"""`premem train method=dpo`: direct preference optimization, leaving checkpoints premem can score.

A DPO run is a premem train run (premem.train.api): the same data subset, template,
checkpoints (save_every, checkpoints), premem_run.json and reuse of finished runs; only the
trainer differs. Each preference example (prompt/chosen/rejected, premem.data.examples) is
rendered by the template into a prompt and two responses, each like an SFT target; with the
paper template

    prompt   = question + "\\nAnswer:"
    chosen   = " " + chosen + "\\nDone."        rejected = " " + rejected + "\\nDone."

and TRL's DPOTrainer raises log π(chosen|x) − log π(rejected|x) relative to a frozen
reference model (ref_model; by default the starting model itself), with temperature beta.

The extend recipe (Ren & Sutherland; DESIGN.md §1) is two runs: SFT on both [x; y+] and
[x; y−] (premem.data.arith.sft_both), then DPO from that run's last checkpoint, whose
reference is then that same checkpoint.

With cfg.lora, DPO trains LoRA adapters on the model; its default reference is then the model with
the adapters switched off (the same weights, without a second copy in memory).
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


def build_dpo_trainer(cfg: TrainConfig, run_dir: Path, rows: list[dict]):
    """TRL's DPOTrainer for this run (rows: {prompt, chosen, rejected}); checkpoints as premem train saves them."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, cfg.model)
    # a second copy, kept frozen by TRL; LoRA without ref_model: none (the adapters switched off are the model)
    reference = None if cfg.lora is not None and not cfg.ref_model else load_model(cfg, cfg.ref_model or cfg.model)
    args, save_steps = training_args(
        cfg, run_dir, len(rows), 1, DPOConfig,
        beta=cfg.beta,
        loss_type=["sigmoid"],  # the DPO loss: -log sigmoid(beta * margin of the log-ratios)
        max_length=cfg.max_length,  # rows are length-checked already: nothing is truncated
    )
    with dataset_bars_off(), lora_errors(cfg):
        trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config(cfg))
    return add_callbacks(trainer, cfg, save_steps)
