"""The curation experiment: one curation loop per (seed, strategy), its artifacts and printed summary,
its settings (exec: included) checked before anything is written, and one tiny end-to-end pass."""

import dataclasses

import pandas as pd
import pytest

from premem.config import load_config
from premem.curate.loop import LoopConfig
from premem.data.arith import structure
from premem.errors import InputError
from premem.metrics.curves import curves, efficiency
from premem.recipes.curation import CurationConfig, CurationResult, experiment, seed_loops, summary
from premem.store import ScoreStore

TINY = ["seeds=[0]", "strategies=[random,premem_low]", "start=12", "budgets=[24]", "iid_budgets=[36]",
        "benchmark.n_test=12", "model.pretrain_steps=20", "model.pretrain_problems=60", "model.vocab_size=512",
        "train.epochs=2", "sampling.samples=2", "sampling.max_new_tokens=32", "exec.actors=1", "exec.progress=false"]


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
    cfg = load_config(CurationConfig, None, [f"out={tmp_path / 'cur'}", *TINY])
    result = experiment(cfg)
    rounds = result.rounds
    assert sorted(map(tuple, rounds[["strategy", "examples"]].to_numpy())) == [
        ("premem_low", 12), ("premem_low", 24), ("random", 12), ("random", 24), ("random", 36)]
    out = tmp_path / "cur"
    assert result.report == out / "report.html" and result.report.read_text().startswith("<!DOCTYPE html>")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(pd.read_csv(out / "curves.csv"), result.curves, check_dtype=False)
    assert "report: " + str(out / "report.html") in summary(result)
    # the record is each loop's store: premem_low's round 1 made 12 new problems like its lowest-premem quarter
    # (3 examples), none seen before; every loop of the seed shares one round 0 (one run trained)
    made = ScoreStore(out / "seed0" / "premem_low" / "store").read("curation_examples").query("round == 1")
    start = pd.read_json(out / "seed0" / "start" / "data.jsonl", lines=True)
    assert len(made) == 12 and not set(made["question"]) & set(start["question"])
    assert made["template_id"].nunique() == 3 and made["template_id"].value_counts().tolist() == [4, 4, 4]
    runs = ScoreStore(out / "seed0" / "random" / "store").read("curation_rounds")["run_dir"].tolist()
    assert runs[0] == str(out / "seed0" / "start" / "run") and not (out / "seed0" / "random" / "round0").exists()
    again = experiment(cfg)  # everything reused: same table
    pd.testing.assert_frame_equal(again.rounds, rounds)
    # per skill (arith: the operations in order): what each round added, and test accuracy at its end
    mix, acc = result.skills
    assert set(mix["strategy"]) == {"random", "premem_low"} and set(mix["round"]) == {1, -1}
    assert mix.groupby(["strategy", "round"])["share"].sum().round(9).eq(1).all()
    low = mix[mix["strategy"] == "premem_low"].set_index("skill")["share"]
    added = pd.read_json(out / "seed0" / "premem_low" / "round1" / "data.jsonl", lines=True).iloc[12:]
    assert low.to_dict() == pytest.approx(added["answer"].map(structure).value_counts(normalize=True).to_dict())
    test = pd.read_json(out / "data" / "test.jsonl", lines=True)
    end = acc[(acc["strategy"] == "random") & (acc["examples"] == 36)]
    n = test["answer"].map(structure).value_counts()
    assert (end.set_index("skill")["test_acc"] * n).sum() / n.sum() == pytest.approx(
        rounds.query("strategy == 'random' and examples == 36")["test_acc"].item())
    assert (out / "skill_mix.csv").is_file() and "share of each skill" in summary(result)

    # half of each round's new problems i.i.d.: a strategy of its own, added to the table beside the others
    mixed = experiment(dataclasses.replace(cfg, strategies=["premem_low"], iid_budgets=[], iid_mix=0.5))
    assert set(mixed.rounds["strategy"]) == {"random", "premem_low", "premem_low-mix0.5"}
    made = ScoreStore(out / "seed0" / "premem_low-mix0.5" / "store").read("curation_examples").query("round == 1")
    assert (made["template_id"] == -1).sum() == 6 and len(made) == 12


def test_one_loop_per_seed_and_strategy_from_one_start(tmp_path):
    cfg = load_config(CurationConfig, None, [f"out={tmp_path}", "strategies=[premem_low,random,loss]", "near=2",
                                             "iid_mix=0.25", "exec.backend=vllm"])
    loops = seed_loops(cfg, 1, tmp_path / "base", tmp_path / "test.jsonl")
    assert [c.name for c in loops] == ["random", "premem_low-near2-mix0.25", "loss-near2-mix0.25", "iid"]
    assert all(isinstance(c, LoopConfig) and c.round0 == str(tmp_path / "seed1" / "start") and c.seed == 1
               and c.exec.backend == "vllm" and not c.score_train for c in loops)
    random, low, _, iid = loops
    assert (random.generator.iid_mix, low.generator.iid_mix, iid.generator.iid_mix) == (1.0, 0.25, 1.0)
    assert (low.generator.near, random.generator.near) == (2, None)
    assert (random.sizes, iid.sizes) == ([256, 512], [1024])


def test_upsample_and_the_skills_task_make_their_own_loops(tmp_path):
    cfg = load_config(CurationConfig, "configs/experiment/curation_skills.yaml", [f"out={tmp_path}"])
    loops = seed_loops(cfg, 0, tmp_path / "base", tmp_path / "test.jsonl")
    assert [c.name for c in loops] == ["random", "premem_low", "loss", "difficulty", "cartography", "s2l",
                                       "premem_low-upsample", "iid"]
    kinds = {c.name: c.generator.kind for c in loops}
    assert kinds.pop("premem_low-upsample") == "copy" and set(kinds.values()) == {"skills"}
    up = loops[6]
    assert up.strategy == "premem_low" and up.generator.iid_mix == 0 and up.tau == cfg.tau == -1.0
    assert all(c.generator.skills == cfg.skills for c in loops) and len(cfg.seeds) == 5


def test_exec_from_yaml_with_the_recipe_defaults_kept(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("exec: {backend: vllm}\n")
    ex = load_config(CurationConfig, str(path), []).exec
    assert (ex.backend, ex.actors, ex.options.threads, ex.options.batch_size) == ("vllm", 2, 1, 64)
    ex = CurationConfig().exec
    assert (ex.backend, ex.actors, ex.options.threads, ex.options.batch_size) == ("hf", 2, 1, 64)


def test_summary_is_what_the_command_prints(tmp_path):
    table = pd.DataFrame([(s, name, r, n, a) for s in (0, 1) for name, k in (("random", 0), ("loss", 0.1))
                          for r, n, a in ((0, 64, 0.1), (1, 128, 0.2 + k))],
                         columns=["seed", "strategy", "round", "examples", "test_acc"])
    c = curves(table)
    text = summary(CurationResult(tmp_path, table, c, efficiency(c), tmp_path / "report.html"))
    lines = text.split("\n")
    assert lines[:3] == ["", "test accuracy (mean ± standard error over seeds) by training-set size", ""]
    assert "0.300 ± 0.000" in text and lines[-1] == f"report: {tmp_path / 'report.html'}"
    assert "data efficiency: i.i.d. examples needed for the same test accuracy / examples used" in text


@pytest.mark.parametrize("override, message", [
    ("start=0", "start: expected an integer >= 1, got 0"),
    ("budgets=[]", "budgets: expected a non-empty list of training-set sizes, got []"),
    ("budgets=[256,128]", "budgets: expected sizes growing from start (128), got [256, 128]"),
    ("budgets=[-5]", "budgets[0]: expected an integer >= 1, got -5"),
    ("iid_budgets=[400]", "iid_budgets: expected sizes growing from the last budget (512), got [400]"),
    ("strategies=[]", "strategies: expected a non-empty list of strategy names"),
    ("strategies=[nosuch]", "unknown strategy"),
    ("seeds=[]", "seeds: expected a non-empty list of seeds"),
    ("seeds=[0,0]", "seeds: [0, 0] lists a seed twice"),
    ("template_fraction=0", "template_fraction: expected a fraction in (0, 1], got 0.0"),
    ("near=-1", "near: expected an integer >= 0, got -1"),
    ("iid_mix=1.5", "iid_mix: expected a share in [0, 1], got 1.5"),
    ("benchmark.n_test=0", "benchmark.n_test: expected an integer >= 1, got 0"),
    ("task=maths", "task: unknown task 'maths'; known: arith, skills"),
    ("task=skills skills.families=[add,mul]", "skills.families[1]: unknown family 'mul'"),
    ("task=skills near=1", "near: keeps an arith problem's numbers; the skills task has no such option"),
    ("upsample=[random]", "upsample[0]: random has no ranking to upsample by"),
    ("upsample=[nosuch]", "upsample[0]: strategy 'nosuch': unknown strategy"),
    ("model.layers=0", "model.layers: expected an integer >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size: expected a value at least 1, got 0"),
    ("sampling.top_p=0", "sampling.top_p: expected a number in (0, 1]"),
    ("exec.actors=-1", "exec.actors: expected an integer >= 1, got -1"),
    ("exec.backend=nosuch", "exec.backend: unknown backend 'nosuch'"),
    ("exec.options.batch_size=0", "exec.options.batch_size: expected an integer >= 1, got 0"),
])
def test_every_setting_is_checked_before_anything_is_written(tmp_path, override, message):
    cfg = load_config(CurationConfig, None, [f"out={tmp_path / 'cur'}", *override.split()])
    with pytest.raises(InputError) as e:
        experiment(cfg)  # validate() runs first: an error here has written nothing
    assert message in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tau", [float("inf"), float("nan")])
def test_a_non_finite_tau_from_python_is_refused(tmp_path, tau):
    with pytest.raises(InputError, match="tau: expected a finite number"):
        experiment(CurationConfig(out=str(tmp_path / "cur"), tau=tau))
    assert list(tmp_path.iterdir()) == []
