"""Layers point down: no package of the gateway imports one that imports it back.

Read from the source with `ast`, so an import inside a function counts as much as
one at the top: both tie the two packages together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

ROOT = Path(gateway.__file__).parent


def node_of(module: str) -> str | None:
    """The graph node a module belongs to: its package, or itself when top-level."""
    parts = module.split(".")
    if parts[0] != "gateway" or len(parts) < 2:
        return None
    # A package's modules are one node; a top-level module is a node of its own.
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    names: set[str] = set()
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Import):
            names.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                anchor = module.split(".")
                drop = statement.level - 1 if is_package else statement.level
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from gateway import app` names a module, not an attribute.
            names.update(f"{base}.{alias.name}" for alias in statement.names)
    return names


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        source = node_of(module)
        if source is None:
            continue
        tree = ast.parse(path.read_text(), str(path))
        edges = graph.setdefault(source, set())
        for name in imported(tree, module, path.name == "__init__.py"):
            target = node_of(name)
            if target is not None and target != source and _exists(target):
                edges.add(target)
    return graph


def _exists(node: str) -> bool:
    relative = Path(*node.split(".")[1:])
    return (ROOT / relative).is_dir() or (ROOT / relative).with_suffix(".py").is_file()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the path that closes it, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle is not None:
            return cycle
    return None


def test_no_package_imports_one_that_imports_it_back() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_the_graph_sees_the_imports_it_judges() -> None:
    # A walk that found no edges would pass the test above for the wrong reason.
    graph = import_graph()
    assert "gateway.settings" in graph["gateway.app"]
    assert "gateway.proxy" in graph["gateway.app"]


def test_a_cycle_is_found_and_shown() -> None:
    graph = {"gateway.a": {"gateway.b"}, "gateway.b": {"gateway.c"}, "gateway.c": {"gateway.a"}}
    assert find_cycle(graph) == ["gateway.a", "gateway.b", "gateway.c", "gateway.a"]
    assert find_cycle({"gateway.a": {"gateway.b"}, "gateway.b": set()}) is None
