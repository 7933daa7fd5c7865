"""Imports between mmadapt modules (top-level and inside functions) form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import mmadapt

PACKAGE_ROOT = Path(mmadapt.__file__).parent

# (importer, imported) edges left out of the graph on purpose, each with the reason it must stay lazy.
# Empty: every dependency between mmadapt modules points one way.
LAZY_ON_PURPOSE: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the mmadapt modules it imports anywhere in its body (`from pkg import mod` resolves to the module)."""
    files = {module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # a relative import: resolved against this module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a function/class: its module
                    target = target.rpartition(".")[0]
                if target and target != name and (name, target) not in LAZY_ON_PURPOSE:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), listed as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [shortest_cycle(graph, set(c)) for c in components]


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest path from the component's first module back to itself (breadth first, inside the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between mmadapt modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_detector_finds_a_cycle_and_its_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_local_and_relative_imports() -> None:
    graph = import_graph()
    assert "mmadapt.errors" in graph["mmadapt.data.conversations"]
    assert all(not node.startswith("mmadapt.") or node in graph for deps in graph.values() for node in deps)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_layers_point_one_way() -> None:
    """Data knows a tokenisation spec, never the model; the model never imports training; configs import nothing
    of the rest (ARCHITECTURE.md, data path)."""
    graph = import_graph()
    for module in (m for m in graph if m.startswith("mmadapt.data")):
        assert not {"mmadapt.model", "mmadapt.factory"} & reachable(graph, module), module
    assert not {m for m in reachable(graph, "mmadapt.model") if m.startswith("mmadapt.train")}
    assert reachable(graph, "mmadapt.config") <= {"mmadapt.errors", "mmadapt.io", "mmadapt.schema"}
