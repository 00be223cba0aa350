"""The command line as a user meets it: real subprocesses for exit codes and stderr."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from pathlib import Path

from premem.cli import main
from tests.conftest import shared, shared_beside_repo


ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "premem.cli", *args], capture_output=True, text=True, cwd=cwd)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("premem: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_predict_json_on_the_paper_runs(tmp_path):
    plot = tmp_path / "p.png"
    proc = run("predict", "--store", str(shared("paper_runs", "gsm8k")), "--tau", "-2.3", "--json", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_points"] == 51 and out["tau"] == -2.3
    assert out["r2"] == pytest.approx(0.939, abs=0.002)
    assert out["baselines"]["train_acc"]["r2"] == pytest.approx(0.398, abs=0.002)
    assert {"r2", "r2_loro"} <= set(out["baselines"]["train_log_ppl"])
    assert {"run", "step", "premem", "test_acc", "predicted"} <= set(out["points"][0])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_tables(capsys, synthetic_store):
    assert main(["predict", "--store", str(synthetic_store.root)]) == 0
    out = capsys.readouterr().out
    assert "4 runs, 12 checkpoints with test scores" in out
    assert "pre-memorization train accuracy" in out and "train accuracy" in out


def test_predict_store_path_that_does_not_exist(tmp_path):
    assert_clean_error(run("predict", "--store", str(tmp_path / "missing")), "missing", "does not exist")


def test_predict_store_missing_a_column_writes_nothing(tmp_path, synthetic_store):
    path = synthetic_store.path("test_scores")
    pd.read_parquet(path).drop(columns=["n_correct"]).to_parquet(path)
    plot = tmp_path / "plot.png"
    proc = run("predict", "--store", str(synthetic_store.root), "--plot", str(plot))
    assert_clean_error(proc, "test_scores.parquet", "n_correct")
    assert not plot.exists()


def test_predict_bad_tau_and_bad_plot_name(tmp_path, synthetic_store):
    proc = run("predict", "--store", str(synthetic_store.root), "--tau", "often")
    assert_clean_error(proc, "--tau", "expected a finite number or 'auto'", "premem predict --help")
    proc = run("predict", "--store", str(synthetic_store.root), "--plot", str(tmp_path / "p.txt"))
    assert_clean_error(proc, "p.txt")
    assert not (tmp_path / "p.txt").exists()


@pytest.mark.parametrize("argv, needle", [
    (["predict", "--store", "s", "--tau", "nan"], "--tau"),
    (["report", "--store", "s", "--tau", "inf"], "--tau"),
    (["score", "--samples", "three"], "--samples"),
    (["score", "--backend", "tpu"], "--backend"),
    (["predict"], "--store"),
    (["score", "--bogus"], "--bogus"),
    (["nonsense"], "nonsense"),
])
def test_argument_errors_are_one_line(argv, needle):
    """argparse's own refusals (bad type, bad choice, missing or unknown flag) read like every other error."""
    assert_clean_error(run(*argv), needle)


# -- premem data check ---------------------------------------------------------------------

GOOD = '{"question": "What is 2+3?", "answer": "2+3 = <<2+3=5>>5\\n#### 5"}'


def test_data_check_exports_canonical_examples(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(GOOD + "\n" + GOOD.replace("2+3", "4+4").replace("#### 5", "#### 8").replace(">>5", ">>8") + "\n")
    out = tmp_path / "canon" / "examples.jsonl"
    proc = run("data", "check", "--data", str(src), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n_examples"] == 2 and report["format"] == "gsm8k" and report["gold_self_agreement"] == 1.0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["example_id"], r["answer"]) for r in rows] == [(0, "5"), (1, "8")]


def test_data_check_on_math500_with_field_override(tmp_path):
    shared_beside_repo()
    proc = run("data", "check", "--config", "configs/data/math.yaml", "--limit", "20", "--json", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_examples"] == 20


def test_data_check_malformed_jsonl_line(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(GOOD + "\n" + GOOD + "\n" + '{"question": "broken", "answer": ' + "\n")
    out = tmp_path / "out.jsonl"
    assert_clean_error(run("data", "check", "--data", str(src), "--out", str(out)), "train.jsonl", "line 3")
    assert not out.exists()


def test_data_check_row_missing_its_answer(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(GOOD + "\n" + '{"question": "What is 1+1?", "answer": "It is two."}\n')
    out = tmp_path / "out.jsonl"
    assert_clean_error(run("data", "check", "--data", str(src), "--out", str(out)), "train.jsonl", "row 1", "####")
    assert not out.exists()


def test_data_check_unknown_field_mapping(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(GOOD + "\n")
    proc = run("data", "check", "--data", str(src), "fields.question=query")
    assert_clean_error(proc, "train.jsonl", "query")
    proc = run("data", "check", "--data", str(src), "fields.problem=question")
    assert_clean_error(proc, "problem")


def test_data_check_path_that_does_not_exist(tmp_path):
    assert_clean_error(run("data", "check", "--data", str(tmp_path / "nope.jsonl")), "nope.jsonl", "no such file")


def test_data_check_config_with_unknown_key(tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text("path: x.jsonl\nformt: gsm8k\n")
    assert_clean_error(run("data", "check", "--config", str(cfg)), "d.yaml", "formt")


# -- issue 12: outputs never clobber inputs; flags are never parsed; a store that is a file -------

import os  # noqa: E402
import shlex  # noqa: E402

from premem.files import sha256_file  # noqa: E402


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its sha256 (or 'dir'): equal before and after means nothing was written."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else sha256_file(p) for p in sorted(root.rglob("*"))}


@pytest.fixture
def world(tmp_path, synthetic_store, monkeypatch):
    """A working directory holding a data file, a score store, a run, a model, a probe set and a few traps."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text(GOOD + "\n")
    for d in ("run", "model", "probes", "adir.jsonl", "adir.html", "p.png", "sub"):
        (tmp_path / d).mkdir()
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "train.jsonl")
    return tmp_path


CLOBBERS = [
    ("data check --data train.jsonl --out train.jsonl", "--out train.jsonl", "is also an input"),
    ("data check --data train.jsonl --out sub/../train.jsonl", "is also an input"),
    ("data check --data train.jsonl --out link.jsonl", "is also an input"),  # a symlink to the input
    ("data check --data train.jsonl --out adir.jsonl", "is a directory"),
    ("data check --data train.jsonl --out train.jsonl/x.jsonl", "is a file"),
    ("curate --store store --data train.jsonl --out store", "--out store", "is also an input"),
    ("curate --store store --data train.jsonl --out .", "holds the input"),
    ("curate --store store --data train.jsonl --out afile", "not a directory"),
    ("report --store store --out adir.html", "is a directory"),
    ("report --store store --out afile/r.html", "is a file"),
    ("predict --store store --plot p.png", "--plot p.png", "is a directory"),
    ("score --run run --train train.jsonl --store run", "--store run", "is also an input"),
    ("score --run run --train train.jsonl --store train.jsonl", "not a directory"),
    ("score --run run --train train.jsonl --store run/store", "lies inside run"),
    ("score --run run --train train.jsonl store=run", "store run", "is also an input"),
    ("train --model model --train train.jsonl --out model", "is also an input"),
    ("train --model model --train train.jsonl --out .", "holds the input"),
    ("probe build --data train.jsonl --out train.jsonl", "not a directory"),
    ("probe build --data train.jsonl --out .", "holds the input"),
    ("probe track --run run --probes probes --store probes", "is also an input"),
    ("probe track --run run --probes probes --store run/s", "lies inside run"),
    ("quickstart --out afile", "--out afile", "not a directory"),
    ("experiment curation --out afile", "not a directory"),
    ("experiment probes --out afile", "not a directory"),
    ("curate loop --out run model=run data=train.jsonl", "is also an input"),
]


@pytest.mark.parametrize("line, needles", [(c[0], c[1:]) for c in CLOBBERS], ids=[c[0] for c in CLOBBERS])
def test_an_output_that_would_clobber_an_input_is_refused_before_any_write(world, capsys, line, needles):
    before = snapshot(world)
    assert main(shlex.split(line)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("premem: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    assert snapshot(world) == before


def test_data_check_out_over_its_input_exits_2_and_leaves_the_file(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(GOOD + "\n")
    digest = sha256_file(src)
    for out in ("train.jsonl", "./train.jsonl", str(src)):
        assert_clean_error(run("data", "check", "--data", "train.jsonl", "--out", out, cwd=tmp_path), "is also an input")
    assert sha256_file(src) == digest and sorted(os.listdir(tmp_path)) == ["train.jsonl"]


KILLED_WRITER = """
import os, sys
from premem.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    os.kill(os.getpid(), 9)
"""


def test_a_killed_writers_temporary_is_gone_after_the_next_run(tmp_path):
    src, out = tmp_path / "train.jsonl", tmp_path / "out.jsonl"
    src.write_text(GOOD + "\n")
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)])
    assert [p.name for p in tmp_path.glob(".out.jsonl.*.tmp")], "the killed writer left nothing to clean"
    assert run("data", "check", "--data", str(src), "--out", str(out)).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "train.jsonl"]


def test_flag_values_are_taken_as_given(tmp_path):
    src = tmp_path / "exp #2.jsonl"
    src.write_text(GOOD + "\n")
    proc = run("data", "check", "--data", "exp #2.jsonl", "--out", "out: #2.jsonl", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == "exp #2.jsonl"
    assert (tmp_path / "out: #2.jsonl").is_file()
    for name in ("yes", "2024", "null"):  # YAML would read a bool, an int, None: each a traceback before
        (tmp_path / name).write_text(GOOD + "\n")
        assert_clean_error(run("data", "check", "--data", name, cwd=tmp_path), f"{name}: unknown file type")


def config_of(line: str):
    """The config a command line builds, through the one path main takes (flags, --config, KEY=VALUE)."""
    from premem import cli

    argv = shlex.split(line)
    argv = ["curate-loop", *argv[2:]] if argv[:2] == ["curate", "loop"] else argv
    args, extra = cli.build_parser().parse_known_args(argv)
    args.overrides = extra
    return cli.configure(cli.VERBS[args.name], args)


def test_each_verbs_flags_reach_its_config_unparsed(tmp_path, monkeypatch):
    cfg = config_of("score --run 2024 --train yes --test no --store 'st #2' --run-name 0123 --samples 3 --allow-pickle "
                    "--backend vllm --actors 2 --gpus-per-actor 0.5 --address 10.0.0.1:6379")
    assert (cfg.run, cfg.train.path, cfg.test.path, cfg.store, cfg.run_name) == ("2024", "yes", "no", "st #2", "0123")
    assert cfg.sampling.samples == 3 and cfg.exec.options.allow_pickle is True
    assert (cfg.exec.backend, cfg.exec.actors, cfg.exec.gpus_per_actor, cfg.exec.address) == ("vllm", 2, 0.5,
                                                                                              "10.0.0.1:6379")
    cfg = config_of("train --model 'm: x' --train on --out 'exp #2' --run-name 0123")
    assert (cfg.model, cfg.train.path, cfg.out, cfg.run_name) == ("m: x", "on", "exp #2", "0123")
    cfg = config_of("probe track --run 1e3 --store 's #1' --run-name 0123 --actors 3")
    assert (cfg.run, cfg.store, cfg.run_name, cfg.exec.actors) == ("1e3", "s #1", "0123", 3)
    cfg = config_of("probe build --data null --out 'p #1' --n 4")
    assert (cfg.data, cfg.out, cfg.n) == ("null", "p #1", 4)
    cfg = config_of(f"curate --config {ROOT}/configs/curate/gsm8k_paper.yaml --data yes --store 0x10 --out 'c #2' "
                    "--run a --run b mode=upsample")
    assert (cfg.data.path, cfg.store, cfg.out, cfg.runs) == ("yes", "0x10", "c #2", ["a", "b"])
    assert cfg.params == {"threshold": 0.75, "mode": "upsample"}  # the rest of the config file stays
    cfg = config_of("data check --data '~' --limit 3")
    assert (cfg.path, cfg.limit) == ("~", 3)
    assert config_of("score --run r --store s --samples 0").sampling.samples == 0  # 0 is a value given, not unset
    # KEY=VALUE is read by the field's type: a text field keeps its text; exec settings go under exec
    cfg = config_of("score run_name=0123 store=exp#2 sampling.samples=4 exec.options.threads=2 --run r")
    assert (cfg.run_name, cfg.store, cfg.sampling.samples, cfg.exec.options.threads) == ("0123", "exp#2", 4, 2)
    cfg = config_of("quickstart --out q exec.backend=vllm exec.actors=1")
    assert (cfg.exec.backend, cfg.exec.actors) == ("vllm", 1)


def test_an_execution_setting_outside_exec_names_where_it_went(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["score", "--run", "r", "--store", "s", "actors=2"]) == 2
    assert "unknown field(s) actors (did you mean exec.actors?)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_is_fast_and_imports_no_library():
    """`premem --help` and a verb's parser import nothing heavy: the table names modules, it does not load them."""
    code = ("import sys; from premem.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'ray', 'numpy', 'yaml')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_flag_help_is_the_settings_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--samples N k: answers sampled per query" in out and "--actors N Ray sampler actors" in out
    assert "exec.options.threads (1): CPU threads" in out  # the settings, nested ones too


WRONG_TYPES = [
    ("train --model m --out o epochs=abc", "TrainConfig.epochs: expected an integer"),
    ("train --model m --out o sweep.lr=abc", "sweep.lr: expected a list"),
    ("curate loop --out o sizes=abc", "LoopConfig.sizes: expected a list"),
    ("score --run r --store s sampling=5", "ScoreConfig.sampling: expected a section"),
    ("score --run r --store s run_name=[a,b]", "ScoreConfig.run_name: expected text"),
    ("curate --store s --data d --out o runs=abc", "CurateConfig.runs: expected a list"),
    ("data check --data d.jsonl fields=abc", "fields: expected a mapping"),
    ("probe build --data d --out o n=[1]", "ProbeBuildConfig.n: expected an integer"),
    ("quickstart --out o model=5", "QuickstartConfig.model: expected a section"),
    ("data check --data a.jsonl path=b.jsonl", "--data and path=b.jsonl both set path"),
]


@pytest.mark.parametrize("line, message", WRONG_TYPES, ids=[w[0] for w in WRONG_TYPES])
def test_a_key_value_of_the_wrong_type_is_one_line_naming_the_field(tmp_path, monkeypatch, capsys, line, message):
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(line)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


STORE_FILES = [
    "score --run run --train train.jsonl --store afile",
    "probe track --run run --probes probes --store afile",
    "curate --store afile --data train.jsonl --out cur",
    "report --store afile --out r.html",
    "predict --store afile",
    "regrade --store afile",
]


@pytest.mark.parametrize("line", STORE_FILES)
def test_a_store_that_is_a_file_is_one_line(world, capsys, line):
    before = snapshot(world)
    assert main(shlex.split(line)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "afile" in err[0] and "not a directory" in err[0], err
    assert snapshot(world) == before


def test_score_into_a_store_that_is_a_file_exits_2(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "store").write_text("mine\n")
    proc = run("score", "--run", "run", "--train", "t.jsonl", "--store", "store", cwd=tmp_path)
    assert_clean_error(proc, "--store store", "not a directory")
    assert (tmp_path / "store").read_text() == "mine\n"


def test_every_module_the_table_names_exists():
    """The table names its library by dotted path (imported when a verb runs): a module moved without the table
    following would fail only when that verb is used, so check them all here."""
    from premem.cli import VERBS
    from premem.commands import lib

    specs = [s for v in VERBS.values() for s in (v.run, v.show, v.config) if isinstance(s, str)]
    assert len(specs) > 20 and all(callable(lib(s)) for s in specs)
