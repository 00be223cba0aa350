from dataclasses import dataclass, field

import pytest

from premem.config import load_config
from premem.errors import InputError


@dataclass
class Inner:
    lrs: list[float] = field(default_factory=list)
    """a list of floats"""


@dataclass
class Outer:
    lr: float = 0.1
    """a float"""
    epochs: int = 1
    """an int"""
    warm: float | None = None
    """an optional float"""
    every: str | int = "epoch"
    """str or int, left as given"""
    flag: bool = False
    """a bool"""
    inner: Inner = field(default_factory=Inner)
    """a section"""


def test_yaml_1_1_exponents_become_floats(tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3"; a float field must still get a float
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nepochs: 3.0\nwarm: 5e-2\ninner:\n  lrs: [1e-4, 3e-4, 0.001]\n")
    cfg = load_config(Outer, path, ["every=10"])
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.warm == 0.05 and cfg.inner.lrs == [1e-4, 3e-4, 1e-3]
    assert cfg.every == 10
    assert load_config(Outer, None, ["lr=2e-5"]).lr == 2e-5


@pytest.mark.parametrize(
    "override, field_name",
    [("lr=fast", "Outer.lr"), ("epochs=2.5", "Outer.epochs"), ("flag=maybe", "Outer.flag"), ("inner.lrs=[1, x]", "lrs[1]")],
)
def test_values_that_do_not_fit_name_the_field(override, field_name):
    with pytest.raises(InputError, match=field_name.replace("[", r"\[").replace("]", r"\]")):
        load_config(Outer, None, [override])


@dataclass
class Grid:
    a: list[int] | None = None
    """a"""
    b: list[int] | None = None
    """b"""


@dataclass
class WithDefaults:
    grid: Grid = field(default_factory=lambda: Grid(a=[1, 2], b=[3]))
    """a section whose default is not all-None"""
    maybe: Grid | None = None
    """a section with no default"""


def test_a_section_given_in_part_keeps_its_other_defaults(tmp_path):
    cfg = load_config(WithDefaults, None, ["grid.b=[7,8]", "maybe.a=[5]"])
    assert cfg.grid == Grid(a=[1, 2], b=[7, 8])
    assert cfg.maybe == Grid(a=[5], b=None)
    path = tmp_path / "c.yaml"
    path.write_text("grid:\n  a: [9]\n")
    assert load_config(WithDefaults, path).grid == Grid(a=[9], b=[3])


def test_help_lists_every_setting_with_its_docstring_and_the_outer_default():
    from premem.config import field_docs, settings_help
    from premem.curate.loop import LoopConfig

    assert field_docs(LoopConfig)["sizes"].startswith("Training-set size after each round")
    text = settings_help(LoopConfig)
    # a nested config shows the default the outer config gives it, not its own class default
    assert "train.save_every ('doubling')" in text and "generator.kind ('arith')" in text
    assert "sampling.samples (4)" in text


def test_verbs_help_ends_with_the_settings(capsys):
    import pytest as _pytest

    from premem.cli import main

    with _pytest.raises(SystemExit):
        main(["curate", "loop", "--help"])
    out = capsys.readouterr().out
    assert "usage: premem curate loop" in out and "settings (KEY=VALUE" in out and "template_fraction (0.25)" in out


# -- values read by their field's type (issue 12: flags and overrides parsed as YAML) -----------


@dataclass
class Data:
    path: str = ""
    """a path"""
    fields: dict[str, str] = field(default_factory=dict)
    """a mapping of names"""


@dataclass
class Job:
    out: str = "default-out"
    """text"""
    run_name: str | None = None
    """optional text"""
    sizes: list[int] = field(default_factory=list)
    """a list"""
    params: dict = field(default_factory=dict)
    """a mapping of anything"""
    data: Data = field(default_factory=Data)
    """a section with a path"""
    inner: Inner = field(default_factory=Inner)
    """a section without one"""
    epochs: int = 1
    """an int"""
    tau: float | str = -2.3
    """a number or a word"""


@pytest.mark.parametrize("override, value", [
    ("out=exp #2", "exp #2"),            # YAML would cut a comment
    ("out=0123", "0123"),                # YAML 1.1 would read octal 83
    ("out=yes", "yes"),                  # ... a bool
    ("out=2024", "2024"),                # ... an int
    ("out=a: b", "a: b"),                # ... a mapping
    ("out='quoted #1'", "quoted #1"),    # a quoted value is unquoted
    ('out="x: y"', "x: y"),
    ("out=", ""),
    ("run_name=0123", "0123"),
    ("data.fields.question=0123", "0123"),
])
def test_text_fields_keep_the_text_as_written(override, value):
    cfg = load_config(Job, None, [override])
    key = override.partition("=")[0]
    got = cfg.data.fields["question"] if key.startswith("data.") else getattr(cfg, key)
    assert got == value and type(got) is str


def test_text_fields_in_a_config_file_keep_the_text_as_written(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: exp #2\nrun_name: 0123\ndata:\n  path: yes\n  fields: {question: 1e3}\nsizes: [0123, 8]\n")
    cfg = load_config(Job, path)
    assert (cfg.out, cfg.run_name, cfg.data.path, cfg.data.fields) == ("exp", "0123", "yes", {"question": "1e3"})
    assert cfg.sizes == [123, 8]  # an int field reads decimal digits as decimal


def test_numbers_and_words_where_either_fits():
    assert load_config(Job, None, ["tau=1e-3"]).tau == 1e-3
    assert load_config(Job, None, ["tau=auto"]).tau == "auto"
    assert load_config(Job, None, ["epochs=0123"]).epochs == 123
    assert load_config(Job, None, ["params={mode: upsample, k: 3}"]).params == {"mode": "upsample", "k": 3}
    assert load_config(Job, None, ["params.k=0x10"]).params == {"k": 16}  # Any: read as YAML


def test_values_are_taken_as_given_and_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: from-file\ndata: from-file.jsonl\n")
    cfg = load_config(Job, path, ["epochs=2"], {"out": "exp #2", "run_name": "0123", "data.path": "yes"})
    assert (cfg.out, cfg.run_name, cfg.data.path, cfg.epochs) == ("exp #2", "0123", "yes", 2)


def test_null_is_none_where_allowed_else_the_default():
    cfg = load_config(Job, None, ["run_name=null", "epochs=", "tau=~"])
    assert (cfg.run_name, cfg.epochs, cfg.tau) == (None, 1, -2.3)
    assert load_config(Job, None, ["out=~"]).out == "~"  # a text field that cannot be None keeps what it was given


def test_a_data_section_takes_a_bare_path():
    assert load_config(Job, None, ["data=train.jsonl"]).data == Data(path="train.jsonl")
    assert load_config(Job, None, ["data=train.jsonl", "data.fields.question=q"]).data.fields == {"question": "q"}


@pytest.mark.parametrize("override, message", [
    ("sizes=abc", "Job.sizes: expected a list"),
    ("sizes=5", "Job.sizes: expected a list"),
    ("sizes=[1, x]", "Job.sizes[1]: expected an integer"),
    ("params=abc", "Job.params: expected a mapping"),
    ("data.fields=abc", "Job.data.fields: expected a mapping"),
    ("inner=5", "Job.inner: expected a section"),
    ("inner=[1]", "Job.inner: expected a section"),
    ("data=[a, b]", "Job.data: expected a section"),
    ("out=[a, b]", "Job.out: expected text"),
    ("out={a: 1}", "Job.out: expected text"),
    ("run_name=[a]", "Job.run_name: expected text"),
    ("epochs=1:30", "Job.epochs: expected an integer"),  # not YAML 1.1's sexagesimal 90
    ("tau=[1]", "Job.tau: expected float or str"),
    ("out=[a", "not a valid YAML list"),
])
def test_a_value_of_the_wrong_type_is_one_error_naming_the_field(override, message):
    with pytest.raises(InputError) as e:
        load_config(Job, None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


# -- --help where no source is installed (issue 13) -------------------------------------------------


def test_the_docstring_index_is_current():
    """settings_docs.json is what `python -m premem.config` builds from today's source: rebuild it after
    changing a setting's docstring."""
    import json

    from premem.config import DOCS_INDEX, docs_index

    assert json.loads(DOCS_INDEX.read_text()) == docs_index(), "stale: run `python -m premem.config`"


@pytest.mark.slow
def test_help_from_docstrings_without_the_source(tmp_path):
    """A compiled-only copy of the package (no .py files: the field docstrings are gone from the bytecode)
    still shows every setting's docstring in --help, from the index."""
    import compileall
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import premem

    copy = tmp_path / "premem"
    shutil.copytree(Path(premem.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(copy, legacy=True, quiet=1)
    for source in copy.rglob("*.py"):
        source.unlink()
    code = ("import inspect; from premem.config import field_docs; from premem.execution import ExecConfig\n"
            "try:\n    inspect.getsource(ExecConfig); print('source found')\nexcept OSError:\n    pass\n"
            "print(field_docs(ExecConfig)['actors']); from premem.cli import main; main(['curate', 'loop', '--help'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "source found" not in out and out.startswith("Ray sampler actors")
    assert "usage: premem curate loop" in out and "template_fraction (0.25): " in out
    assert "sizes ([]): Training-set size after each round" in out or "Training-set size after each round" in out
