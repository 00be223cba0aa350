"""Data-parallel finetuning on Ray Train: the same TRL trainer in every worker.

Ray Train (V2, the default in ray 2.60) starts `workers` actors, sets up a torch.distributed
process group among them (gloo on CPUs, nccl on GPUs) and sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR in each, which is all a Hugging Face Trainer needs to run
distributed: each worker builds the same SFTTrainer (premem.train.fit), the
Trainer shards the batches with a DistributedSampler and averages gradients with DDP, and
only rank 0 writes checkpoints, straight into the run directory. So the run directory looks
exactly like a single-process run's.

Neither of Ray's Hugging Face helpers is used: `prepare_trainer` only adapts Ray Data
iterables (the data here is a small in-memory list each worker gets whole), and
`RayTrainReportCallback` copies every checkpoint into Ray's storage as well (a second copy
premem does not read). Ray's own bookkeeping goes to <run_dir>/ray_train/ (RunConfig
storage_path), under the run directory like everything else a run writes. On several
machines the run directory must be on storage they all share.

The per-device batch is batch_size / (workers * grad_accum): the optimizer step sees the
same number of examples whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from premem.errors import InputError
from premem.train.config import TrainConfig
from premem.train.fit import fit

RAY_DIR = "ray_train"


def fit_distributed(cfg: TrainConfig, run_dir: Path, rows: list[dict]) -> list[dict]:
    """Train the run on cfg.workers Ray Train workers; returns each worker's record, by rank."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.constants import is_v2_enabled

    from premem.execution.actor_pool import release
    from premem.execution.cluster import ray_init  # imports ray: only when training on it

    if not is_v2_enabled():  # V1's RunConfig and Result lack what is used here
        raise InputError("workers: multi-worker training needs Ray Train V2; unset RAY_TRAIN_V2_ENABLED=0")
    ray_init(cfg.address)
    # a scoring pool kept alive by an earlier job in this process holds CPUs (and GPUs) the training workers
    # need; Ray would wait for them forever. Free it: the next score starts a new one.
    release()
    if cfg.use_gpu and ray.cluster_resources().get("GPU", 0) < cfg.workers:  # else Ray waits for them forever
        raise InputError(f"workers: {cfg.workers} GPU workers asked for, the Ray cluster has "
                         f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
    run_dir = Path(run_dir).resolve()  # workers do not share the driver's working directory
    resources = {"CPU": cfg.threads} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg, "run_dir": str(run_dir), "rows": rows},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir / RAY_DIR),
            # no retries: an interrupted run is restarted whole by the next `premem train`
            failure_config=FailureConfig(max_failures=0),
            # Ray Train turns print() in workers into log records, which breaks libraries that
            # capture stdout to parse it (datasets' fingerprinting runs dill, which dis.dis()es
            # functions: every bytecode line would be logged)
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    # Ray Train reads its settings from the driver's environment when fit() starts.
    # Workers importing torch on a busy machine can take longer than the default 60 s.
    with _environ(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="600"):
        result = trainer.fit()
    return result.return_value  # what rank 0's _worker_loop returned


@contextlib.contextmanager
def _environ(**defaults: str):
    """Set environment variables the user has not set, for the block only."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _worker_loop(config: dict) -> list[dict]:
    """One Ray Train worker: train, then gather every worker's record (rank 0's is returned)."""
    import torch.distributed as dist
    from ray import train as ray_train

    context = ray_train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    record = fit(config["cfg"], Path(config["run_dir"]), config["rows"], world_size=world_size, rank=rank)
    records = [None] * world_size
    dist.all_gather_object(records, record)  # also a barrier: rank 0's last checkpoint is written
    return sorted(records, key=lambda r: r["rank"])
