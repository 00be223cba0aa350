"""`premem experiment probes` end to end on a very small setting: real tiny model, TRL SFT and DPO,
probes tracked on Ray actors; the tables, verdicts and extend comparison it writes; a re-run
reuses everything; bad settings fail before anything is trained."""

from __future__ import annotations

import os
import re

import pandas as pd
import pytest

from premem.cli import main
from premem.config import load_config
from premem.data.grading import get_grader
from premem.metrics.probe_analysis import extend_comparison, verdicts
from premem.recipes.probes import ProbesConfig, experiment, summary, write_pairs

# 150 pretraining steps: enough for the base model to end its (mostly wrong) answers with "#### N", which
# rejected=sampled needs
SMALL = ["seeds=[0]", "rejected=sampled", "pairs=16", "probes=4", "benchmark.n_train=32", "benchmark.n_test=12",
         "model.pretrain_steps=150", "model.pretrain_problems=200", "model.vocab_size=512", "sft.epochs=2",
         "sft.batch_size=8", "dpo.epochs=2", "dpo.batch_size=8", "dpo_from=[1]", "rephrase=false", "exec.actors=1",
         "exec.progress=false"]
RUNS = ["sft", "extend-sft", "dpo-e1", "extend-dpo-e1"]


@pytest.mark.slow
def test_tiny_probe_experiment_end_to_end(tmp_path, capsys):
    out = tmp_path / "probes"
    assert main(["experiment", "probes", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    cfg = load_config(ProbesConfig, None, [f"out={out}", *SMALL])

    seed = out / "seed0"
    pairs = pd.read_json(seed / "pairs.jsonl", lines=True)
    # rejected=sampled: the base model's own answers, in its pretraining words, each with a wrong final answer
    grader = get_grader("gsm8k")
    assert len(pairs) == 16 and pairs["rejected"].str.contains(" makes ").all()
    for chosen, rejected in zip(pairs["chosen"], pairs["rejected"]):
        gold = grader.gold_from_solution(chosen)
        assert grader.extract_strict(rejected) not in (None, gold)
    assert len(pd.read_json(seed / "both.jsonl", lines=True)) == 32
    for run in RUNS:
        assert (seed / "runs" / run / "premem_run.json").is_file()

    moves = pd.read_csv(out / "moves.csv")
    assert sorted(moves["run"].unique()) == sorted(RUNS)
    # SFT runs: span all from the base model (step 0), and trained from their first checkpoint on
    sft = moves[(moves["run"] == "sft") & (moves["type"] == "chosen")].set_index("span")
    assert sft.loc["all", "first_step"] == 0 and sft.loc["trained", "first_step"] == 2 and sft.loc["all", "n"] == 4
    assert sft.loc["all", "mean"] > 0  # two epochs of SFT on chosen raise it from the base model
    assert set(moves.loc[moves["run"] == "dpo-e1", "span"]) == {"all"}

    result = experiment(cfg)  # a second call: every run, probe set and tracked checkpoint reused
    results = result.seeds
    assert [r.runs for r in results] == [RUNS] and result.out == out
    assert printed.endswith(summary(result) + "\n")  # what the CLI prints is the recipe's summary, the same again
    v = verdicts(results).set_index("run")
    assert set(v["squeezing"]) <= {"yes", "no"} and re.fullmatch(r"[+-]\d+\.\d\d ± \d+\.\d\d \([0-4]/4 up\)",
                                                                  v.loc["dpo-e1", "chosen"])
    ext = extend_comparison(results, [1])
    row = ext.iloc[0]
    assert row["difference"] == pytest.approx(row["extend_chosen"] - row["dpo_chosen"]) and row["n"] == 4

    assert "squeezing verdicts" in printed and "the extend recipe" in printed and "from SFT epoch 1:" in printed
    tables = (out / "tables.txt").read_text()
    assert tables.count("mean summed log π(response | prompt) over 4 probe prompts") == 4
    html = (out / "report.html").read_text()
    for heading in ("Squeezing verdicts", "The extend recipe", "What SFT moves", "Seed 0: learning dynamics"):
        assert heading in html
    assert html.count("<img") == 2  # the seed's two probe figures


@pytest.mark.parametrize("bad, message", [
    ("rejected=worse", "rejected 'worse': expected one of sampled, other, slip"),
    ("dpo_from=[3]", r"dpo_from \[3\]: expected SFT epochs that are checkpointed \(\[1, 2\]\)"),
    ("dpo.method=sft", "dpo.method 'sft': the DPO runs must use method=dpo"),
    ("pairs=6", "pairs 6: need at least twice the 4 probe prompts"),
    ("probes=0", r"probes: expected an integer >= 1, got 0"),
    ("seeds=[]", "seeds: expected at least one seed"),
    ("seeds=[0,0]", r"seeds: \[0, 0\] lists a seed twice"),
    ("benchmark.n_test=0", r"benchmark.n_test: expected an integer >= 1, got 0"),
    ("model.pretrain_steps=-1", r"model.pretrain_steps: expected an integer >= 1, got -1"),
    ("sft.lr=-1", r"sft.lr: expected a value above 0, got -1.0"),
    ("dpo.beta=0", r"dpo.beta: expected a value above 0, got 0.0"),
    ("dpo_from=[1,1]", r"dpo_from \[1, 1\]: expected SFT epochs that are checkpointed"),
    ("exec.actors=0", r"exec.actors: expected an integer >= 1, got 0"),
])
def test_bad_settings_fail_before_anything_is_written(tmp_path, capsys, bad, message):
    out = tmp_path / "probes"
    assert main(["experiment", "probes", "--out", str(out), *SMALL, bad]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["other", "slip"])
def test_other_and_slip_rejections(tmp_path, kind):
    cfg = load_config(ProbesConfig, None, [*SMALL, f"rejected={kind}"])
    pairs_path, chosen_path, both_path = write_pairs(cfg, tmp_path / "no-model-needed", 0, tmp_path)
    pairs = pd.read_json(pairs_path, lines=True)
    assert len(pairs) == 16 and (pairs["chosen"] != pairs["rejected"]).all()
    if kind == "other":  # the next problem's correct trace
        assert list(pairs["rejected"]) == list(pairs["chosen"].iloc[list(range(1, 16)) + [0]])
    else:  # the same words, a wrong final answer
        grader = get_grader("gsm8k")
        for chosen, rejected in zip(pairs["chosen"], pairs["rejected"]):
            assert chosen.split()[:3] == rejected.split()[:3]
            assert grader.extract_strict(rejected) != grader.extract_strict(chosen)
    both = pd.read_json(both_path, lines=True)
    assert list(both["answer"][::2]) == list(pairs["chosen"]) and list(both["answer"][1::2]) == list(pairs["rejected"])
    assert list(pd.read_json(chosen_path, lines=True)["answer"]) == list(pairs["chosen"])
