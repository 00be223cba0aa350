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
