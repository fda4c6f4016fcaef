"""The package's layers: lower never imports higher, and no import cycles.

Ranks, low to high (each folder's ``__init__`` says the same): the core modules at the
top level (errors, rng, config, files, validation, data), ``nets``, ``fitness``,
``search``, ``study``, and ``api`` (with the package's ``__init__``) above all. Imports
inside functions count as much as those at the top of a module.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "ecomp_deap"
RANKS = {"nets": 1, "fitness": 2, "search": 3, "study": 4}
TOP = {"ecomp_deap", "ecomp_deap.api"}  # the entry points: may import anything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    if module in TOP:
        return 5
    parts = module.split(".")
    return RANKS.get(parts[1], 0) if len(parts) > 1 else 0


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from X import name`` counts as X.name
    when that is a module)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for mod, path in paths.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in paths else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[mod] = {d for d in deps if d in paths and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = sorted(f"{m} ({rank(m)}) imports {d} ({rank(d)})" for m, deps in graph.items() for d in deps
                    if rank(d) > rank(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    assert not cycles(import_graph())


def test_every_folder_says_what_lives_there_and_what_it_may_import():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80 and "import" in doc.lower(), f"{init}: its docstring should say what lives there and what it may import"


def test_the_checks_see_an_upward_import_and_a_cycle():
    """The checker itself: a made-up graph with both faults."""
    graph = {"ecomp_deap.nets.a": {"ecomp_deap.study.b"}, "ecomp_deap.study.b": {"ecomp_deap.nets.a"}}
    assert cycles(graph) == [["ecomp_deap.nets.a", "ecomp_deap.study.b"]]
    assert rank("ecomp_deap.study.b") > rank("ecomp_deap.nets.a") > rank("ecomp_deap.config")
