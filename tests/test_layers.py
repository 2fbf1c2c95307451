"""The import graph of tracer/: a lower layer never imports a higher one.

The layers, lowest first (docs/architecture.md says the same):

  base      tracer/__init__.py, errors.py; then terminal.py (outside text made inert) and
            output.py (files written whole or not at all)
  binary    reading a program (ELF, DWARF, Go's tables)   | targets  processes, containers
  probes    probe files, decoders, the plan of what to trace
  backends  gdb, Delve, kernel uprobes behind one protocol (backends/base.py)
  session   one tracing run: attach, arm, pair hits into spans, the trace file
  exports   a trace in other tools' formats               | remote   a trace streamed from an
                                                          |          agent to the user
  analysis  statistics and causes of recorded calls       | kube     pods, watch events, agent
                                                          |          pods, several pods at once
  plots     figures of a trace
  front     the commands (one module each), the display, the live screen
  cli       the `tracer` group, which registers the commands; __main__ runs it

A module may import its own package and any lower layer (also inside functions); layers on
one line are siblings and import each other neither (the report's analysis and the live
run's kube share what both need from a lower layer: probes/naming.py). The session and the
front know no concrete backend: only backends/base.py and backends/select.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tracer"
LAYERS = (
    ("tracer", "errors"),
    ("terminal", "output"),
    ("binary", "targets"),
    ("probes",),
    ("backends",),
    ("session",),
    ("exports", "remote"),
    ("analysis", "kube"),
    ("plots",),
    ("front",),
    ("cli",),
    ("__main__",),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
# What the session and the front may know of the backends.
BACKEND_DOORS = {"tracer.backends", "tracer.backends.base", "tracer.backends.select"}


def _modules() -> dict[str, Path]:
    """Every module of tracer/ by its dotted name."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str) -> list[tuple[int, str]]:
    """(line, module) of every import of tracer's, at any depth (functions included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package up
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from tracer.x import y` may import the module tracer.x.y
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "tracer"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tracer"


MODULES = _modules()
# What a module may import: modules, not packages (an __init__ re-exports its own modules).
LEAVES = {m for m, path in MODULES.items() if path.name != "__init__.py"}


def _cycles() -> list[list[str]]:
    """The groups of modules that import each other, directly or round a loop (Tarjan's
    strongly connected components of the graph of imports between modules)."""
    edges = {m: sorted({n for _, n in _imports(m) if n in LEAVES and n != m}) for m in LEAVES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in edges[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for m in sorted(LEAVES):
        if m not in index:
            visit(m)
    return groups




def test_no_modules_import_each_other():
    """Every arrow runs one way, also inside a layer (function-level imports included)."""
    assert _cycles() == []


def test_every_part_of_tracer_has_a_layer():
    assert {_layer(m) for m in MODULES} <= set(RANK), \
        f"give these a layer: {sorted({_layer(m) for m in MODULES} - set(RANK))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_goes_up(module):
    mine = _layer(module)
    wrong = []
    for line, name in _imports(module):
        theirs = _layer(name)
        if theirs != mine and RANK.get(theirs, -1) >= RANK[mine]:
            wrong.append(f"line {line}: {name} ({theirs} is not below {mine})")
    assert not wrong, f"{module} imports upwards: " + "; ".join(wrong)


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if _layer(m) in ("session", "front", "cli")))
def test_the_session_and_the_front_know_no_concrete_backend(module):
    backends = {name for _, name in _imports(module)
                if name.startswith("tracer.backends") and name in MODULES}
    assert backends <= BACKEND_DOORS, f"{module} imports {sorted(backends - BACKEND_DOORS)}"


def test_the_session_asks_its_backend_nothing_undeclared():
    """Every ability the session uses is in the Backend protocol: no hasattr/getattr."""
    for path in (ROOT / "session").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                    "hasattr", "getattr"):
                target = ast.unparse(node.args[0]) if node.args else ""
                assert "backend" not in target, f"{path.name}:{node.lineno}: {target}"


def test_the_front_names_no_backend():
    """The front door asks the backend's class (notices, settings), never its name."""
    names = {"gdb", "dlv", "uprobe"}
    for module in (m for m in MODULES if _layer(m) in ("front", "cli")):
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if isinstance(node, ast.Compare):
                constants = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
                assert not constants & names, f"{module}:{node.lineno}: {ast.unparse(node)}"
