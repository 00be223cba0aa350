"""The public Python API: lazy names that all resolve, subpackages that are also functions, and the README's
"Python API" example, run as it is written."""

from __future__ import annotations

import inspect
import json
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import premem
from tests.conftest import SHARED, shared

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    """stdout of `code` in a fresh interpreter, where nothing of premem has been imported yet."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_public_name_resolves_and_is_listed():
    for name in premem.__all__:
        assert getattr(premem, name) is not None, name
    assert set(premem.__all__) <= set(dir(premem))
    assert premem.__version__ == __import__("premem.version").version.__version__
    assert premem.ScoreStore is __import__("premem.store").store.ScoreStore
    with pytest.raises(AttributeError, match="has no attribute 'nosuch'"):
        premem.nosuch


def test_no_public_name_hides_a_module():
    # an exported function named like a module of premem would make `import premem.<name>` change what
    # premem.<name> is; only the callable subpackages may share a name, and they are the module itself
    modules = {p.stem if p.name != "__init__.py" else p.parent.name for p in (REPO / "premem").glob("*/__init__.py")}
    modules |= {p.stem for p in (REPO / "premem").glob("*.py")}
    assert not (set(premem._EXPORTS) & modules)
    assert set(premem._CALLABLE_PACKAGES) <= modules


def test_import_premem_loads_nothing_heavy():
    out = run_python("""
        import sys, premem
        print(sorted(m for m in sys.modules if m.startswith("premem")))
        print([m for m in ("torch", "ray", "pandas", "numpy", "transformers", "matplotlib") if m in sys.modules])
    """)
    assert out.splitlines() == ["['premem', 'premem.version']", "[]"]


@pytest.mark.parametrize("first", ["import premem.curate.strategies", "from premem import curate"])
def test_a_subpackage_is_also_its_function_however_it_was_imported(first):
    # a submodule imported first (the import system sets premem.curate) or the attribute asked for first
    out = run_python(f"""
        {first}
        import sys, premem
        from premem.curate.api import curate
        print(premem.curate is sys.modules["premem.curate"], callable(premem.curate), premem.curate.curate is curate)
    """)
    assert out.splitlines() == ["True True True"]


def test_calling_a_subpackage_runs_its_function(synthetic_store, tmp_path):
    import premem.report.html
    from premem.curate import CurateConfig

    assert premem.report.html.build_report is premem.report.build_report and callable(premem.report)

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(20)))
    cfg = CurateConfig(store=str(synthetic_store.root), data=str(data), strategy="premem_low", budget=5)
    called = premem.curate(cfg)
    direct = premem.curate.curate(cfg)
    assert called.manifest["rows"] == direct.manifest["rows"] and len(called.manifest["rows"]) == 5
    assert inspect.signature(premem.curate) == inspect.signature(premem.curate.curate)
    assert list(inspect.signature(premem.report).parameters)[:2] == ["store_dir", "out_path"]
    html = premem.report(synthetic_store.root, tmp_path / "r.html")
    assert Path(html).read_text().startswith("<!DOCTYPE html>")


def test_callable_subpackages_pickle_as_the_module():
    from ray import cloudpickle  # what Ray sends a notebook's functions with

    for package in (premem, premem.curate, premem.report, premem.train):
        assert pickle.loads(pickle.dumps(package)) is package
        assert cloudpickle.loads(cloudpickle.dumps(package)) is package


def test_predict_reads_a_store_as_its_curves(synthetic_store):
    by_curves = premem.predict(premem.TrainingCurves.from_store(synthetic_store), tau=-2.0)
    for source in (synthetic_store, synthetic_store.root, str(synthetic_store.root)):
        got = premem.predict(source, tau=-2.0)
        assert (got.r2, got.slope, got.n_points) == (by_curves.r2, by_curves.slope, by_curves.n_points)
    with pytest.raises(premem.InputError, match="score store directory does not exist"):
        premem.predict(synthetic_store.root / "nosuch")


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Python API\n"):]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the Python API section holds one example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    shared("paper_runs", "gsm8k")
    shared("gsm8k", "train.jsonl")
    code = readme_example().replace("../shared/data", str(SHARED))  # where PREMEM_SHARED_DATA puts it
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "pre-memorization train accuracy      0.939    0.917   0.027     0.032" in out  # the paper's table
    assert "R2 0.939, leave-one-run-out 0.917" in out
    assert re.search(r"^1868 examples to collect more of: curated/?train\.jsonl$", out, re.MULTILINE)
    assert len((tmp_path / "curated" / "train.jsonl").read_text().splitlines()) == 1868
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
