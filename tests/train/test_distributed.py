"""premem train with workers=2: data-parallel on Ray Train, two CPU workers of one thread each."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from premem.runs import RUN_INFO, find_checkpoints
from premem.train.api import train
from premem.train.distributed import RAY_DIR


@pytest.mark.slow
def test_two_ray_train_workers_train_one_run(config, tmp_path):
    # Ray start and two worker processes importing torch: ~30-60 s on a busy 2-core machine
    run = train(config(out=str(tmp_path / "ddp"), workers=2))
    info = json.loads((run / RUN_INFO).read_text())

    # both workers took part: ranks 0 and 1 of one process group, in two processes
    workers = info["workers"]
    assert [w["rank"] for w in workers] == [0, 1] and info["world_size"] == 2
    assert all(w["world_size"] == 2 for w in workers)
    assert len({w["pid"] for w in workers}) == 2

    # rank 0 wrote the checkpoints into the run directory, as a single process does: the global
    # batch is the same (4 per worker), so are the steps
    assert [c.step for c in find_checkpoints(run)] == [5, 10]
    assert info["checkpoints"] == [{"step": 5, "epoch": 1.0}, {"step": 10, "epoch": 2.0}]
    assert not list(run.glob("checkpoint-*/optimizer.pt"))
    assert (run / RAY_DIR).is_dir()  # Ray's own bookkeeping stays under the run directory

    # and the result is the one-process run's: each step averaged both workers' gradients
    single = train(config(out=str(tmp_path / "single")))
    single_loss = json.loads((single / RUN_INFO).read_text())["workers"][0]["train_loss"]
    assert workers[0]["train_loss"] == pytest.approx(single_loss, rel=1e-4)
    a = load_file(run / "checkpoint-10" / "model.safetensors")
    b = load_file(single / "checkpoint-10" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
