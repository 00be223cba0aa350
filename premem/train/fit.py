"""One training process's part of a run: the method's trainer (premem.train.sft or .dpo), trained.

The one place a method is mapped to its trainer; premem.train.api calls fit in this process,
premem.train.distributed in each Ray Train worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from premem.train.config import TrainConfig
from premem.train.dpo import build_dpo_trainer
from premem.train.sft import build_trainer
from premem.train.trainer import quiet_bars


def fit(cfg: TrainConfig, run_dir: Path, rows: list[dict], world_size: int = 1, rank: int = 0) -> dict:
    """Train one process's part of the run; returns what it did, for the record."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with quiet_bars(not cfg.progress):
            if cfg.method == "dpo":
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
