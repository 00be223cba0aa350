"""Typed configs: dataclasses filled from YAML files and dotted command-line overrides.

Every config in premem is a plain dataclass whose field docstrings say what each knob does.
`load_config(DataConfig, "configs/gsm8k.yaml", ["fields.question=query"])` reads the YAML,
applies `key.sub=value` overrides (values parsed as YAML scalars), and builds the dataclass,
rejecting unknown keys with an InputError that names them. Values are converted to the
field's type where that is unambiguous: YAML 1.1 reads `1e-5` as a string (it wants `1.0e-5`),
so a float field takes "1e-5" as 1e-05, and an int field takes 3.0 as 3; anything else that
does not fit is an InputError naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from premem.errors import InputError

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (in a copy)."""
    data = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = value
    return data


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a dict, recursing into nested dataclass fields."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_in(hints[name])
        if sub and isinstance(value, dict):
            # a section given in part keeps the rest of its default: `sweep.lr=[...]` changes lr only
            default = _default(fields[name])
            if dataclasses.is_dataclass(default):
                value = _merge(dataclasses.asdict(default), value)
            kwargs[name] = from_dict(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise InputError(f"{where}: {e}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    data = read_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, list(overrides)), str(path or cls.__name__))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """value as type tp where tp is float, int, bool or a list / Optional of them; else unchanged."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        plain = [a for a in args if a is not type(None)]
        if len(plain) == 1:
            return coerce(plain[0], value, where)
        if type(value) in plain:
            return value
        # str | int and the like: leave it to the dataclass
        return value
    if origin is list and len(args) == 1 and isinstance(value, list):
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: expected a number, got {value!r}") from None
    if tp is int and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise InputError(f"{where}: expected true or false, got {value!r}")
    return value


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _merge(base: dict, given: dict) -> dict:
    out = dict(base)
    for k, v in given.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _deepcopy(d: dict) -> dict:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


# -- --help from the dataclasses ------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's field docstrings (the string literal right under each field), by field name."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def settings_help(config: Any, prefix: str = "", depth: int = 2) -> str:
    """Every setting of a config (a dataclass or an instance) as KEY (default): doc, nested configs as KEY.SUB
    with the defaults the outer config gives them: an epilog for --help."""
    import textwrap

    lines = []
    cls = config if isinstance(config, type) else type(config)
    docs = field_docs(cls)
    instance = cls() if isinstance(config, type) else config
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        value = getattr(instance, f.name)
        sub = _dataclass_in(f.type if not isinstance(f.type, str) else typing.get_type_hints(cls).get(f.name))
        if sub is not None and depth > 1 and dataclasses.is_dataclass(value):
            lines.append(textwrap.fill(f"{prefix}{f.name}.*: {docs.get(f.name, '')}", 100, subsequent_indent="    "))
            lines.append(settings_help(value, f"{prefix}{f.name}.", depth - 1))
            continue
        shown = value if not dataclasses.is_dataclass(value) else "{...}"
        lines.append(textwrap.fill(f"{prefix}{f.name} ({shown!r}): {docs.get(f.name, '')}", 100,
                                   subsequent_indent="    "))
    return "\n".join(lines)
