"""Typed configs: dataclasses filled from YAML files, dotted command-line overrides and flags.

Every config in premem is a plain dataclass whose field docstrings say what each knob does.
`load_config(DataConfig, "configs/gsm8k.yaml", ["fields.question=query"], {"path": args.data})`
reads the YAML, applies `key.sub=value` overrides, then the typed `values` (a command's flags:
a path or a name given there is taken as it is, never parsed), and builds the dataclass,
rejecting unknown keys with an InputError that names them.

How a value is read depends on the field it goes to, so that nothing is lost on the way:
- a text field (str) keeps the text as written: `run_name: 0123` is "0123" (YAML would read 83),
  `out=exp #2` is "exp #2" (YAML would cut a comment); a quoted value is unquoted.
- a number, bool, list or mapping field reads the text as YAML: `lr=2e-5`, `sizes=[128,256]`,
  `params={mode: upsample}`. YAML 1.1 reads `1e-5` as a string (it wants `1.0e-5`), so a float
  field takes "1e-5" as 1e-05, and an int field takes 3.0 as 3.
- a section (a nested config) takes a mapping or `section.key=value`; a section with a `path`
  field also takes a bare path (`data=train.jsonl`).
- null (`null`, `~` or nothing) is None where a field may be None; a text field that may not
  keeps it as written (`out=` is ""); any other field keeps its default.
Anything that does not fit its field (a list field given `abc`, a section given a number, a text
field given a list) is an InputError naming the field.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from premem.errors import InputError

T = TypeVar("T")


class Text(str):
    """A scalar as written, not yet read as YAML: an unquoted scalar of a config file, or the text after
    `=` of an override. The field it goes to decides: a str field keeps it, any other reads it as YAML."""


class _TextLoader(yaml.SafeLoader):
    """YAML's safe loader, except that unquoted scalars stay Text (merge keys `<<` still work)."""


_TextLoader.yaml_implicit_resolvers = {
    first: kept for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    if (kept := [r for r in resolvers if r[0] == "tag:yaml.org,2002:merge"])
}
_TextLoader.add_constructor(
    "tag:yaml.org,2002:str",
    lambda loader, node: Text(loader.construct_scalar(node)) if node.style is None else loader.construct_scalar(node),
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a dict whose unquoted scalars are Text (from_dict reads them by field type)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_TextLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping of keys to values")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`key.sub=value` as (key, value): a [list] or {mapping} is read as YAML, a quoted value unquoted,
    anything else kept as Text for its field to read."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise InputError(f"override {item!r}: expected key=value")
    text = raw.strip()
    if text[:1] in ("[", "{"):
        try:
            return key, yaml.load(raw, Loader=_TextLoader)
        except yaml.YAMLError as e:
            raise InputError(f"override {item!r}: not a valid YAML list or mapping ({getattr(e, 'problem', e)}); "
                             "quote it to mean text") from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None
        if isinstance(value, str):
            return key, value
    return key, Text(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str], values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply `a.b.c=value` strings, then `{"a.b.c": value}` values taken as given, to a nested dict (in a copy)."""
    data = _deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)
        _set(data, key, value, f"override {item!r}")
    for key, value in (values or {}).items():
        _set(data, key, os.fspath(value) if isinstance(value, os.PathLike) else value, key)
    return data


def _set(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = data
    *parents, leaf = key.split(".")
    for p in parents:
        if isinstance(node.get(p), str):  # a data section given as a bare path, then one of its keys
            node[p] = {"path": node[p]}
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"{where}: {p!r} is not a section")
    node[leaf] = value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a dict, recursing into nested dataclass fields."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        moved = [f"{sec}.{u}" for u in unknown for sec in fields if (sub := _dataclass_in(hints[sec]))
                 and u in {f.name for f in dataclasses.fields(sub)}]
        hint = f" (did you mean {', '.join(moved)}?)" if moved else ""  # actors=2 is now exec.actors=2
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}{hint}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        name, at = str(name), f"{where}.{name}"
        if _is_null(value) and hints[name] is not str:  # a text field keeps even "" and "null" as written
            if _optional(hints[name]):
                kwargs[name] = None
            continue  # null where None does not fit: the field's default
        sub = _dataclass_in(hints[name])
        if sub is None:
            kwargs[name] = coerce(hints[name], value, at)
            continue
        if isinstance(value, str) and "path" in {f.name for f in dataclasses.fields(sub)}:
            value = {"path": value}  # a bare path for a data section: data=train.jsonl
        if not isinstance(value, dict):
            raise InputError(f"{at}: expected a section (a mapping, or {name}.KEY=VALUE), got {_show(value)}")
        # a section given in part keeps the rest of its default: `sweep.lr=[...]` changes lr only
        default = _default(fields[name])
        if dataclasses.is_dataclass(default):
            value = _merge(dataclasses.asdict(default), value)
        kwargs[name] = from_dict(sub, value, at)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise InputError(f"{where}: {e}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (),
                values: Mapping[str, Any] | None = None) -> T:
    """cls from the YAML at path, then the KEY=VALUE overrides, then values (dotted key -> value, as given)."""
    data = read_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, list(overrides), values), str(path or cls.__name__))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """value as type tp: a str field keeps Text as written; numbers, bools, lists and mappings are read
    (as YAML where given as Text) and checked; anything else is read as YAML and left as it is."""
    if _is_null(value) and not (tp is str and isinstance(value, Text)):
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        plain = [a for a in args if a is not type(None)]
        return coerce(plain[0], value, where) if len(plain) == 1 else _coerce_union(plain, value, where)
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a number given from Python
        raise InputError(f"{where}: expected text, got {_show(value)}")
    if tp in (int, float) and isinstance(value, Text):
        value = value.strip()  # read as Python reads a number: 0123 is 123, not YAML 1.1's octal 83; 1:30 is no 90
    value = _read(value)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list such as [a, b], got {_show(value)}")
        item = args[0] if args else Any
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping such as {{key: value}}, got {_show(value)}")
        kt, vt = args or (Any, Any)
        return {coerce(kt, k, f"{where}"): coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: expected a number, got {_show(value)}") from None
    if tp is int and not isinstance(value, bool):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)  # 3.0 or 1e3
                except ValueError:
                    pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {_show(value)}")
    if tp is bool and not isinstance(value, bool):
        raise InputError(f"{where}: expected true or false, got {_show(value)}")
    return _read_deep(value)


def _coerce_union(types_: list, value: Any, where: str) -> Any:
    """A field of several scalar types (str | int, float | str, ...): text that is a number where a number
    fits, else the text as written where text fits, else the YAML reading if it is one of the types."""
    if isinstance(value, Text):
        for number in (int, float):
            if number in types_:
                try:
                    return number(value.strip())
                except ValueError:
                    pass
        if str in types_:
            return str(value)
    read = _read(value)
    if type(read) in types_:
        return read
    if float in types_ and isinstance(read, int) and not isinstance(read, bool):
        return float(read)
    names = " or ".join(getattr(t, "__name__", str(t)) for t in types_)
    raise InputError(f"{where}: expected {names}, got {_show(value)}")


def _read(value: Any) -> Any:
    """Text read as YAML (a value YAML cannot read stays text); anything else as it is."""
    if not isinstance(value, Text):
        return value
    try:
        return yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        return str(value)


def _read_deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {_read_deep(k): _read_deep(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_read_deep(v) for v in value]
    return _read(value)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, Text) and _read(value) is None)


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _show(value: Any) -> str:
    """A value for a message: Text as the user wrote it, anything else as a Python literal."""
    return repr(str(value)) if isinstance(value, Text) else repr(_read_deep(value))


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

# The field docstrings (a string literal under each field) are gone from compiled code: the compiler drops
# them. So they are also kept in settings_docs.json beside this file, built from the source by `python -m
# premem.config` (tests/test_config.py fails when it is stale), for installs that ship no .py files.
DOCS_INDEX = Path(__file__).with_name("settings_docs.json")


def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's field docstrings by field name: from its source where there is one, else from the index."""
    import inspect
    import json
    import textwrap

    index = None
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            docs.update(_class_docs(ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]))
        except (OSError, TypeError, SyntaxError):
            if index is None:
                index = json.loads(DOCS_INDEX.read_text()) if DOCS_INDEX.is_file() else {}
            docs.update(index.get(f"{klass.__module__}.{klass.__qualname__}", {}))
    return docs


def _class_docs(node: ast.ClassDef) -> dict[str, str]:
    """{field: docstring} of one class statement."""
    body = node.body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}


def docs_index(package: Path = Path(__file__).parent) -> dict[str, dict[str, str]]:
    """{module.Class: {field: docstring}} of every class in the package's source that documents its fields."""
    index = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

        def visit(body: list, prefix: str) -> None:
            for node in body:
                if isinstance(node, ast.ClassDef):
                    if docs := _class_docs(node):
                        index[f"{module}.{prefix}{node.name}"] = docs
                    visit(node.body, f"{prefix}{node.name}.")

        visit(ast.parse(path.read_text(), str(path)).body, "")
    return index


def settings_help(config: Any, prefix: str = "", depth: int = 3) -> str:
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


def key_doc(cls: type, key: str) -> str:
    """The docstring of a dotted setting of config class cls ("sampling.samples"), or "" where there is none."""
    *sections, name = key.split(".")
    for section in sections:
        cls = _dataclass_in(typing.get_type_hints(cls).get(section))
        if cls is None:
            return ""
    return field_docs(cls).get(name, "")


if __name__ == "__main__":  # python -m premem.config: rebuild the docstring index from the source
    import json

    DOCS_INDEX.write_text(json.dumps(docs_index(), indent=1, sort_keys=True) + "\n")
    print(f"{DOCS_INDEX}: {sum(map(len, docs_index().values()))} field docstrings")
