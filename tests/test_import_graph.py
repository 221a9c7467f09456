"""The shape of the package: imports run one way, the top level stays short, stages register no routes.

The import graph is read from the source with ``ast`` (nothing is imported). Module-level and
function-level imports both count; imports under ``if TYPE_CHECKING:`` do not (they never run).
``from gateway.x import y`` is an edge to ``gateway.x.y`` when ``y`` is a submodule, else to
``gateway.x``; importing ``gateway.a.b`` also depends on package ``gateway.a``'s ``__init__``, except
for the importer's own ancestor packages (Python has already started those before the importer runs).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"
MAX_TOP_LEVEL_MODULES = 12
ROUTE_CALLS = frozenset({"add_get", "add_post", "add_route"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_targets(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> set[str]:
    """The ``gateway`` modules ``module`` depends on at run time."""
    targets: set[str] = set()
    for node in runtime_imports(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.add(sub if sub in known else base)
    own = set(_parents(module)) | {module}
    found: set[str] = set()
    for target in targets:
        if target not in known:
            continue  # stdlib, third party
        found.add(target)
        found.update(p for p in _parents(target) if p in known and p not in own)
    found.discard(module)
    return found


def build_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    known = set(files)
    return {
        name: import_targets(name, path.name == "__init__.py", ast.parse(path.read_text(), str(path)), known)
        for name, path in files.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (``a -> b -> ... -> a``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph is a few hundred nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) > 1 or start in graph.get(start, ()):
            cycles.append(_path_back(graph, start, members))
    return cycles


def _path_back(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself inside one component (breadth first)."""
    came: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in came:
                    came[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle but no path back was found")


def test_the_graph_is_read_from_the_source() -> None:
    """Sanity: known edges are present, TYPE_CHECKING-only ones are absent, function-level ones count."""
    graph = build_graph()
    assert "gateway.pipeline" in graph["gateway.stages.auth"]
    assert "gateway.stages.budget" not in graph["gateway.context"]  # only under TYPE_CHECKING
    assert "gateway.http.server" in graph["gateway.http.runner"]  # imported inside a function
    assert "gateway.http" in graph["gateway.providers.openai"]  # a package's __init__ comes with its module


def test_cycle_finder_reports_the_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_and_relative_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .c import thing\n"
        "if TYPE_CHECKING:\n"
        "    import gateway.d\n"
        "else:\n"
        "    import gateway.e\n"
        "def f():\n"
        "    from gateway.f import g\n"
    )
    known = {"gateway", "gateway.pkg", "gateway.pkg.a", "gateway.pkg.b", "gateway.pkg.c", "gateway.d",
             "gateway.e", "gateway.f", "gateway.f.g"}
    found = import_targets("gateway.pkg.a", False, ast.parse(source), known)
    assert found == {"gateway.pkg.b", "gateway.pkg.c", "gateway.e", "gateway.f", "gateway.f.g"}


def test_imports_have_no_cycles() -> None:
    cycles = find_cycles(build_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_top_level_is_a_short_table_of_contents() -> None:
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_stages_register_no_routes() -> None:
    offenders = []
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ROUTE_CALLS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.attr}")
    assert not offenders, offenders
