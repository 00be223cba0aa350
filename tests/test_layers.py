"""premem's modules match its stages: data flows one way, and no module is too long to read in one sitting.

The import graph is built from the source, function-local imports included (deferring an import does not
make a circle go away), and checked against the stage order below: a module may import from its own stage
or an earlier one, never a later one, and never in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "premem"

# earliest first; a module's stage is the first entry naming it or a package above it
STAGES = [
    ("base", ["premem.errors", "premem.version", "premem.logs", "premem.files", "premem.config", "premem.tables",
              "premem.store", "premem.execution"]),
    ("data", ["premem.data"]),
    ("runs/models", ["premem.runs", "premem.models"]),
    ("train", ["premem.train"]),
    ("sampling", ["premem.sampling"]),
    ("metrics", ["premem.metrics"]),
    ("curate", ["premem.curate"]),
    ("report", ["premem.report"]),
    ("watch", ["premem.watch"]),
    ("recipes", ["premem.recipes"]),
    ("cli", ["premem.cli", "premem.commands", "premem.__main__", "premem.callbacks", "premem"]),  # "premem": the public API
]
MAX_LINES = 400
MAX_CLI_LINES = 300


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def stage_of(name: str) -> int:
    for i, (_, prefixes) in enumerate(STAGES):
        if any(name == p or name.startswith(p + ".") for p in prefixes if p != "premem") or name == "premem" \
                and "premem" in prefixes:
            return i
    raise AssertionError(f"{name} is in no stage: add it to STAGES in {__file__}")


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """premem modules `name` imports anywhere in its source (module level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            # `from premem.x import y` names module premem.x.y when y is a module, else premem.x
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_stage():
    for name in modules():
        stage_of(name)


def test_no_import_from_a_later_stage():
    wrong = [f"{a} ({STAGES[stage_of(a)][0]}) imports {b} ({STAGES[stage_of(b)][0]})"
             for a, targets in sorted(graph().items()) for b in sorted(targets) if stage_of(b) > stage_of(a)]
    assert not wrong, "imports against the stage order:\n" + "\n".join(wrong)


def test_no_import_circles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_short(name):
    lines = len(modules()[name].read_text().splitlines())
    limit = MAX_CLI_LINES if name == "premem.cli" else MAX_LINES
    assert lines <= limit, f"{name} has {lines} lines (at most {limit})"
