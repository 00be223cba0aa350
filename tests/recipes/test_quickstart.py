"""premem quickstart end to end, at a size that runs in about a minute: every stage real
(TRL training, Ray actors sampling, the fit, the curated subset, the HTML report)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from premem.config import load_config
from premem.recipes.quickstart import QuickstartConfig, quickstart
from premem.store import ScoreStore

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "benchmark.n_train=48", "benchmark.n_test=24", "model.pretrain_steps=60", "model.pretrain_problems=200",
    "model.vocab_size=512", "train.checkpoints=2", "sweep.lr=[1e-3,3e-3]", "sweep.epochs=[1,3]", "sweep.data_fraction=[1.0]",
    "sampling.samples=2", "sampling.max_new_tokens=48", "exec.actors=1", "exec.progress=false",
]


class Starts(logging.Handler):
    """The pool's word each time it starts actors."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.started = []

    def emit(self, record):
        if record.getMessage().startswith("starting "):
            self.started.append(record.getMessage())


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    from premem.execution import release

    out = tmp_path_factory.mktemp("qs") / "out"
    cfg = load_config(QuickstartConfig, None, SMALL + [f"out={out}"])
    release()  # no actors kept from an earlier test: the quickstart starts its own
    pool_log, starts = logging.getLogger("premem.execution.actor_pool"), Starts()
    level = pool_log.level
    pool_log.setLevel(logging.DEBUG)
    pool_log.addHandler(starts)
    try:
        result = quickstart(cfg)
    finally:
        pool_log.removeHandler(starts)
        pool_log.setLevel(level)
    return cfg, result, starts.started


@pytest.mark.slow
def test_quickstart_writes_every_stage(first):
    cfg, result, _ = first
    out = Path(cfg.out)
    assert sorted(result.runs) == ["lr1e-3_ep1_frac1_s0", "lr1e-3_ep3_frac1_s0", "lr3e-3_ep1_frac1_s0",
                                   "lr3e-3_ep3_frac1_s0"]
    store = ScoreStore(out / "store")
    runs = store.runs()
    assert set(runs["run"]) == set(result.runs) and {"lr", "epochs", "data_fraction"} <= set(runs.columns)
    train = store.read("train_scores")
    assert set(train["example_id"]) == set(range(48)) and train["perplexity"].gt(1).all()
    assert set(store.read("test_scores")["example_id"]) == set(range(24))
    assert result.prediction.n_runs == 4 and result.prediction.n_points >= 4
    curated = [json.loads(line) for line in (out / "curated" / "train.jsonl").read_text().splitlines()]
    assert len(curated) == 12  # a quarter of 48, the benchmark's own lines
    manifest = json.loads((out / "curated" / "manifest.json").read_text())
    scores = pd.DataFrame(manifest["examples"])
    chosen = scores[scores["selected"]]
    assert len(chosen) == 12 and chosen["score"].max() <= scores[~scores["selected"]]["score"].min()
    assert manifest["tau"] == result.prediction.tau and manifest["strategy"]["name"] == "premem_low"
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 4 and "http://" not in html and "https://" not in html
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["seconds"]) == {"benchmark", "base model", "train", "score", "predict", "curate", "report"}


@pytest.mark.slow
def test_one_pool_scores_every_run(first):
    cfg, result, started = first
    assert len(result.runs) == 4 and started == ["starting 1 SamplerActor actors (1 CPU, 0 GPUs each)"]


@pytest.mark.slow
def test_second_invocation_reuses_finished_work(first):
    cfg, result, _ = first
    out = Path(cfg.out)
    weights = sorted(out.glob("runs/*/checkpoint-*/model.safetensors")) + [out / "base" / "model.safetensors"]
    before = {p: p.stat().st_mtime_ns for p in weights}
    scores = ScoreStore(out / "store").read("train_scores")
    again = quickstart(cfg)
    assert {p: p.stat().st_mtime_ns for p in weights} == before  # nothing retrained
    assert again.seconds["train"] < 10 and again.seconds["score"] < 10 and again.seconds["base model"] < 5
    pd.testing.assert_frame_equal(ScoreStore(out / "store").read("train_scores"), scores)
    assert again.prediction.r2 == pytest.approx(result.prediction.r2)


@pytest.mark.parametrize(
    "override, message",
    [
        (["sweep.lr=[fast]"], "sweep.lr[0]: expected a number"),
        (["curate_fraction=2"], "curate_fraction: expected a number in (0, 1]"),
        (["sweep.lr=[1e-3]", "sweep.epochs=[4]", "sweep.data_fraction=[1.0]"], "sweep: 1 run(s) is too few"),
        (["benchmark.n_train=-5"], "benchmark.n_train: expected an integer >= 1, got -5"),  # issue 12
    ],
)
def test_quickstart_cli_rejects_bad_settings_before_writing(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "-m", "premem.cli", "quickstart", "--out", str(tmp_path / "q"), *override],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("override, message", [
    ("benchmark.n_test=0", "benchmark.n_test: expected an integer >= 1, got 0"),
    ("benchmark.steps=[3,2]", "benchmark.steps: expected [fewest, most] operations per problem"),
    ("benchmark.phrasings=0", "benchmark.phrasings: expected an integer >= 1, got 0"),
    ("model.heads=3", "model.hidden_size: 64 is not a multiple of heads (3)"),
    ("model.vocab_size=100", "model.vocab_size: expected an integer >= 260, got 100"),
    ("model.pretrain_lr=0", "model.pretrain_lr: expected a number > 0, got 0.0"),
    ("train.lr=-1", "train.lr: expected a value above 0, got -1.0"),
    ("train.epochs=0", "train.epochs: expected a value at least 1, got 0"),
    ("train.lr_scheduler=zigzag", "train.lr_scheduler: unknown schedule 'zigzag'"),
    ("train.method=dpo", "train.method 'dpo': these runs must use method=sft"),
    ("sweep.lr=[]", "sweep.lr: expected a non-empty list, got []"),
    ("sweep.epochs=[0,2]", "sweep.epochs[0]: expected an integer >= 1, got 0"),
    ("sweep.data_fraction=[0.5,1.5]", "sweep.data_fraction[1]: expected a number in (0, 1], got 1.5"),
    ("sweep.lr=[1e-3,1e-3]", "sweep.lr: [0.001, 0.001] lists a value twice"),
    ("sampling.samples=0", "sampling.samples: expected an integer >= 1, got 0"),
    ("exec.actors=0", "exec.actors: expected an integer >= 1, got 0"),
    ("exec.backend=tgi", "exec.backend: unknown backend 'tgi'"),
    ("tau=.nan", "tau: expected a finite number or 'auto'"),
    ("curate_fraction=0", "curate_fraction: expected a number in (0, 1], got 0.0"),
])
def test_every_setting_is_checked_before_anything_is_written(tmp_path, override, message):
    from premem.errors import InputError
    from premem.recipes.quickstart import validate

    cfg = load_config(QuickstartConfig, None, [f"out={tmp_path / 'q'}", override])
    with pytest.raises(InputError) as e:
        quickstart(cfg)  # validate() runs first: an error here has written nothing
    assert message in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []
    validate(load_config(QuickstartConfig, None, [f"out={tmp_path / 'q'}"]))  # the defaults pass


def test_a_yaml_exec_key_changes_only_what_it_names(tmp_path):
    (tmp_path / "qs.yaml").write_text("exec: {backend: vllm}\n")
    cfg = load_config(QuickstartConfig, str(tmp_path / "qs.yaml"), [])
    # the quickstart's own defaults stay: one thread and batches of 64 per actor, two actors
    assert (cfg.exec.backend, cfg.exec.options.threads, cfg.exec.options.batch_size, cfg.exec.actors) == ("vllm", 1, 64, 2)
    assert load_config(QuickstartConfig, str(ROOT / "configs" / "quickstart.yaml"), []).exec == QuickstartConfig().exec
