"""The package's shape: no import cycles between modules, no module too long to read.

Imports are read from the source (ast), including those inside functions: an import
moved into a function to hide a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "facekd"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``name`` (a module or a name inside one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """facekd module -> the facekd modules it imports (anywhere in its source)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str | None] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(_owner(a.name, modules) for a in node.names if a.name.startswith("facekd"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.startswith("facekd"):
                    deps.update(_owner(f"{base}.{a.name}", modules) for a in node.names)
        deps.discard(None)
        deps.discard(name)
        graph[name] = deps  # type: ignore[assignment]
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # The CLI imports the hub inside a command function.
    cli = "facekd.cli.main" if "facekd.cli.main" in graph else "facekd.cli"
    assert "facekd.hub" in graph[cli]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def package_graph() -> dict[str, set[str]]:
    """facekd package (``facekd.x``; a top-level module is its own) -> the packages it imports."""
    top = lambda name: ".".join(name.split(".")[:2])  # noqa: E731
    graph: dict[str, set[str]] = {}
    for mod, deps in import_graph().items():
        graph.setdefault(top(mod), set()).update(top(d) for d in deps if top(d) != top(mod))
    return graph


def test_no_package_cycles():
    """Packages form layers: no package imports one that imports it back (issue 28)."""
    cycles = [sorted(c) for c in find_cycles(package_graph())]
    assert not cycles, "package import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_onnx_runtime_sessions_are_created_in_one_module():
    """STYLE.md rule 19: threads, providers and options are chosen in facekd.runtime.onnx."""
    home = ROOT / "runtime" / "onnx.py"
    places = sorted(
        str(path.relative_to(ROOT.parent))
        for folder in (ROOT, ROOT.parent / "eval")
        for path in folder.rglob("*.py")
        if "InferenceSession(" in path.read_text() and path != home
    )
    assert "InferenceSession(" in home.read_text()
    assert not places, f"create ONNX Runtime sessions with facekd.runtime.onnx.ort_session, not in {places}"


@pytest.mark.parametrize("name, path", sorted(_modules().items()))
def test_module_length(name, path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it by concern"
