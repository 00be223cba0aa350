"""The robustness probe of premem score (perturbations=[...]): a tiny Llama pretrained on GSM8K, real Ray actors.

What the store holds is checked against what the model does: the perturbed samples are the backend's own greedy
continuations of prompt + perturbation, and the rest of the store is what a job without the probe writes.
"""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from premem.data import DataConfig
from premem.errors import InputError
from premem.execution import BackendOptions, ExecConfig
from premem.sampling.backend import SamplingParams
from premem.sampling.job import ScoreConfig, score
from premem.store import ScoreStore
from tests.conftest import shared

pytestmark = pytest.mark.usefixtures("local_ray")

N_TRAIN = 6
PERTURBATIONS = [" First", " We know that"]  # the paper's


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_llama_dir):
    """A run of two checkpoints (the GSM8K-pretrained tiny Llama twice: the step seeds the samples) and six
    GSM8K training examples."""
    root = tmp_path_factory.mktemp("perturb")
    lines = shared("gsm8k", "train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:N_TRAIN]) + "\n")
    for step in (1, 2):
        shutil.copytree(tiny_llama_dir, root / "run" / f"checkpoint-{step}")
    return root


def config(workdir, store, **kw) -> ScoreConfig:
    settings = dict(sampling=SamplingParams(samples=2, max_new_tokens=16), shard_size=4, sample="all")
    return ScoreConfig(run=str(workdir / "run"), store=str(store), train=DataConfig(path=str(workdir / "train.jsonl")),
                       exec=ExecConfig(options=BackendOptions(threads=1, batch_size=8), actors=1, progress=False),
                       **{**settings, **kw})


def read(store, table: str) -> pd.DataFrame:
    df = ScoreStore(store).read(table)
    key = [c for c in ("run", "step", "split", "example_id", "perturbation", "sample") if c in df.columns]
    return df.sort_values(key, ignore_index=True)


@pytest.fixture(scope="module")
def probed(workdir):
    """One uninterrupted job with the probe, and one without it."""
    summary = score(config(workdir, workdir / "probed", perturbations=PERTURBATIONS))
    score(config(workdir, workdir / "plain"))
    return summary


@pytest.mark.slow
def test_every_training_query_is_sampled_under_every_perturbation_at_every_checkpoint(workdir, probed):
    rows = read(workdir / "probed", "robustness_scores")
    assert len(rows) == 2 * N_TRAIN * len(PERTURBATIONS) and (rows["n_samples"] == 2).all()
    assert set(rows["perturbation"]) == set(PERTURBATIONS) and set(rows["step"]) == {1, 2}
    assert probed.tasks_total == 2 * (2 + 2 * 2)  # checkpoints x (train shards + perturbations x shards)
    samples = read(workdir / "probed", "robustness_samples")
    assert len(samples) == 2 * len(rows) and "split" not in samples.columns
    # n_correct and n_unparsed are the samples' grades, counted per (checkpoint, example, perturbation)
    counts = samples.groupby(["run", "step", "example_id", "perturbation"], as_index=False).agg(
        n_samples=("sample", "size"), n_correct=("correct_strict", "sum"),
        n_unparsed=("answer_strict", lambda a: int(a.isna().sum())))
    pd.testing.assert_frame_equal(rows[counts.columns.tolist()], counts, check_dtype=False)


@pytest.mark.slow
def test_without_the_probe_the_store_is_what_it_was(workdir, probed):
    """The unperturbed tables are a job without the probe's, row for row; its store has no robustness tables."""
    for table in ("train_scores", "samples"):
        pd.testing.assert_frame_equal(read(workdir / "probed", table), read(workdir / "plain", table),
                                      check_exact=True, obj=table)
    assert not ScoreStore(workdir / "plain").has("robustness_scores")


@pytest.mark.slow
def test_the_perturbation_is_in_the_prompt(workdir, tmp_path):
    """Greedy samples are the backend's own greedy continuations of prompt + perturbation, tokenized as one text."""
    from premem.data import load_example_set
    from premem.data.templates import PaperTemplate
    from premem.runs import find_checkpoints
    from premem.sampling.hf import HFBackend

    greedy = SamplingParams(samples=1, temperature=0.0, max_new_tokens=16)
    score(config(workdir, tmp_path / "store", perturbations=PERTURBATIONS, sampling=greedy, checkpoints="last"))
    stored = read(tmp_path / "store", "robustness_samples")
    examples = load_example_set(DataConfig(path=str(workdir / "train.jsonl"))).examples
    backend = HFBackend(find_checkpoints(workdir / "run")[-1], BackendOptions(threads=1))
    try:
        params = SamplingParams(**{**greedy.__dict__, "stop": PaperTemplate().stop})
        for p in PERTURBATIONS:
            prompts = [backend.tokenizer(PaperTemplate().render(ex).prompt + p)["input_ids"] for ex in examples]
            texts = [c[0].text for c in backend.generate(prompts, params, list(range(len(prompts))))]
            assert stored.loc[stored["perturbation"] == p, "text"].tolist() == texts
    finally:
        backend.close()
    unperturbed = read(tmp_path / "store", "samples")["text"].tolist()
    assert stored.loc[stored["perturbation"] == " First", "text"].tolist() != unperturbed


@pytest.mark.slow
def test_a_partial_store_is_completed_exactly(workdir, probed, tmp_path):
    """Rows missing from a store (a job killed before some tasks were written) are scored again and only they:
    the tables equal the uninterrupted job's, whatever order the perturbations are listed in now."""
    store_dir = tmp_path / "store"
    shutil.copytree(workdir / "probed", store_dir)
    store = ScoreStore(store_dir)
    scores, samples = store.read("robustness_scores"), store.read("robustness_samples")
    # lost: step 2 under " We know that" (both shards), and the second shard of step 1 under " First"
    lost = lambda df: ((df["step"] == 2) & (df["perturbation"] == " We know that")) | (  # noqa: E731
        (df["step"] == 1) & (df["perturbation"] == " First") & (df["example_id"] >= 4))
    store.write("robustness_scores", scores[~lost(scores)])
    store.write("robustness_samples", samples[~lost(samples)])
    resumed = score(config(workdir, store_dir, perturbations=PERTURBATIONS[::-1]))
    assert resumed.tasks_run == 3
    for table in ("robustness_scores", "robustness_samples", "train_scores", "samples"):
        pd.testing.assert_frame_equal(read(store_dir, table), read(workdir / "probed", table), check_exact=True,
                                      obj=table)
    again = score(config(workdir, store_dir, perturbations=PERTURBATIONS))
    assert again.tasks_run == 0


BAD = [  # (perturbations, the error)
    (" First", "perturbations: expected a list of texts"),
    ([" First", ""], "perturbations[1]: expected a non-empty text, got ''"),
    ([" First", 3], "perturbations[1]: expected a non-empty text, got 3"),
    ([" First", " First"], "perturbations: ' First' is listed twice"),
]


@pytest.mark.parametrize("value, error", BAD, ids=[e.split(":")[0] + str(i) for i, (_, e) in enumerate(BAD)])
def test_a_bad_perturbation_list_is_refused_before_anything_is_read_or_written(tmp_path, value, error):
    cfg = ScoreConfig(run=str(tmp_path / "run"), store=str(tmp_path / "store"),
                      train=DataConfig(path=str(tmp_path / "train.jsonl")), perturbations=value)
    with pytest.raises(InputError, match=f"^{re.escape(error)}"):
        score(cfg)
    assert list(tmp_path.iterdir()) == []


def test_perturbations_need_training_queries(tmp_path):
    cfg = ScoreConfig(run=str(tmp_path / "run"), store=str(tmp_path / "store"), train_examples="none",
                      test=DataConfig(path=str(tmp_path / "test.jsonl")), perturbations=[" First"])
    with pytest.raises(InputError, match="^perturbations: .*train_examples=none"):
        score(cfg)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_says_which_perturbation_in_one_line(tmp_path, capsys):
    from premem.cli import main

    code = main(["score", "--run", str(tmp_path / "run"), "--train", str(tmp_path / "t.jsonl"), "--store",
                 str(tmp_path / "store"), 'perturbations=[" First", ""]'])
    assert code == 2
    assert capsys.readouterr().err == "premem: error: perturbations[1]: expected a non-empty text, got ''\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_perturbation_that_leaves_no_room_in_the_context(workdir, tmp_path):
    cfg = config(workdir, tmp_path / "store", perturbations=[" First", " and" * 600])
    with pytest.raises(InputError, match=r"train.jsonl example 0: prompt and perturbation ' and and .*' take \d+ "
                                         r"tokens, leaving no room in the model's context of 512$"):
        score(cfg)
    assert not (tmp_path / "store").exists()
