"""The command line as a user meets it: real subprocesses for exit codes and stderr."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from pathlib import Path

from premem.cli import main
from tests.conftest import PAPER_STORE


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
    proc = run("predict", "--store", str(PAPER_STORE), "--tau", "-2.3", "--json", "--plot", str(plot))
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
    assert proc.returncode == 2 and "expected a number or 'auto'" in proc.stderr
    proc = run("predict", "--store", str(synthetic_store.root), "--plot", str(tmp_path / "p.txt"))
    assert_clean_error(proc, "p.txt")
    assert not (tmp_path / "p.txt").exists()


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
