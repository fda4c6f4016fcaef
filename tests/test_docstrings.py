"""Every public module, class, function and method of the package has a docstring, and
no docstring cites an issue tracker.

Public: a name without a leading underscore, in a module whose path has none
(``_version.py`` is private) and inside no private class; functions and classes defined
inside functions are not the package's interface (their docstrings are still read for
issue references). Exempt: dunder methods, a property's
setter or deleter (the getter documents the property), and a method overriding one of
the same name that a base class in the package documents, directly or further up
(``inspect.getdoc`` gives it that docstring). Read with :mod:`ast`: nothing is imported.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "ecomp_deap"
ISSUE_REFERENCE = re.compile(r"\b(?:issues?|PR|pull request)\s*#\s*\d+|\(#\d+\)", re.IGNORECASE)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass
class ClassInfo:
    """One class read from source: its module's dotted name, its base expressions and
    which of its methods have a docstring (name -> documented)."""

    module: str
    bases: list[ast.expr]
    methods: dict[str, bool] = field(default_factory=dict)


def module_name(path: str) -> tuple[str, bool]:
    """(dotted name, is a package) of a relative ``path`` such as ``pkg/sub/__init__.py``."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_table(tree: ast.Module, module: str, is_pkg: bool) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from the module's top-level imports."""
    table = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                table[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:  # ``import a.b`` binds ``a``; ``import a.b as c`` binds ``a.b``
                if alias.asname:
                    table[alias.asname] = alias.name
                else:
                    table[alias.name.split(".")[0]] = alias.name.split(".")[0]
    return table


def dotted(expr: ast.expr) -> str | None:
    """``a.b.C`` of a Name or Attribute expression, None for anything else."""
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        head = dotted(expr.value)
        return None if head is None else f"{head}.{expr.attr}"
    return None


def is_public(name: str) -> bool:
    return not name.startswith("_")


def is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def is_accessor(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``@<name>.setter`` or ``@<name>.deleter`` of a property."""
    return any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in fn.decorator_list)


def problems(sources: dict[str, str]) -> list[str]:
    """The missing docstrings and issue references of the modules in ``sources``
    (relative path, e.g. ``ecomp_deap/nets/chain.py`` -> source text), one line each."""
    trees, tables, names = {}, {}, {}
    for path, text in sources.items():
        mod, is_pkg = module_name(path)
        trees[path] = tree = ast.parse(text, filename=path)
        tables[mod] = import_table(tree, mod, is_pkg)
        names[path] = mod

    classes: dict[str, ClassInfo] = {}  # "module.Class" -> its methods and bases

    def collect(body, module, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                info = ClassInfo(module, list(node.bases))
                for item in node.body:
                    if isinstance(item, FUNCTIONS) and not is_accessor(item):
                        info.methods[item.name] = info.methods.get(item.name, False) or bool(ast.get_docstring(item))
                classes[f"{prefix}.{node.name}"] = info
                collect(node.body, module, f"{prefix}.{node.name}")

    for path, tree in trees.items():
        collect(tree.body, names[path], names[path])

    def resolve(name: str, module: str, depth: int = 0) -> str | None:
        """The key in ``classes`` of the class ``name`` names in ``module``, following
        imports and re-exports; None for a class outside ``sources``."""
        if depth > 10:
            return None
        if f"{module}.{name}" in classes:
            return f"{module}.{name}"
        head, _, rest = name.partition(".")
        target = tables.get(module, {}).get(head)
        if target is None:
            return None
        full = f"{target}.{rest}" if rest else target
        if full in classes:
            return full
        owner, attr = full, ""  # a name another module imports: look it up there
        while owner and owner not in tables:
            owner, _, last = owner.rpartition(".")
            attr = f"{last}.{attr}" if attr else last
        if not owner or not attr or (owner, attr) == (module, name):
            return None
        return resolve(attr, owner, depth + 1)

    def documented_above(cls: str, method: str, seen: set) -> bool:
        """Whether a base class of ``cls`` in ``sources`` documents ``method`` (or inherits it so)."""
        info = classes[cls]
        for base in info.bases:
            name = dotted(base)
            key = name and resolve(name, info.module)
            if key is None or key in seen:
                continue
            seen.add(key)
            if classes[key].methods.get(method) or documented_above(key, method, seen):
                return True
        return False

    found = []

    def check(node, where: str):
        doc = ast.get_docstring(node, clean=False)
        if doc and ISSUE_REFERENCE.search(doc):
            found.append(f"{where}: issue reference {ISSUE_REFERENCE.search(doc).group(0)!r} in its docstring")
        return doc

    def walk(body, module, prefix, public, cls=None):
        for node in body:
            if isinstance(node, ast.ClassDef):
                qual = f"{prefix}.{node.name}"
                visible = public and is_public(node.name)
                if not check(node, qual) and visible:
                    found.append(f"{qual}: class without a docstring")
                walk(node.body, module, qual, visible, cls=qual)
            elif isinstance(node, FUNCTIONS):
                qual = f"{prefix}.{node.name}"
                doc = check(node, qual)
                for inner in ast.walk(node):  # nested definitions: their docstrings only
                    if inner is not node and isinstance(inner, (*FUNCTIONS, ast.ClassDef)):
                        check(inner, f"{qual}.<locals>.{inner.name}")
                if doc or not public or not is_public(node.name) or is_dunder(node.name) or is_accessor(node):
                    continue
                if cls is not None and documented_above(cls, node.name, {cls}):
                    continue
                found.append(f"{qual}: {'method' if cls else 'function'} without a docstring")

    for path, tree in trees.items():
        mod = names[path]
        public = all(is_public(p) or is_dunder(p) for p in Path(path).with_suffix("").parts)
        if not check(tree, mod) and public:
            found.append(f"{mod}: module without a docstring")
        walk(tree.body, mod, mod, public)
    return found


def package_sources() -> dict[str, str]:
    return {p.relative_to(REPO).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_package_docstrings():
    found = problems(package_sources())
    assert not found, "docstrings to write or fix:\n" + "\n".join(found)


def test_checker_on_a_made_up_package():
    base = '''"""A base."""


class Base:
    """A base class."""

    def run(self):
        """Run it."""

    def stop(self):
        pass
'''
    module = '''
import argparse

from .base import Base as Renamed
from . import base


def documented():
    """Does something (see issue #12)."""


def plain():
    return 1


def _private():
    pass


class Thing(Renamed):
    def __init__(self):
        pass

    def run(self):
        pass

    def stop(self):
        pass

    @property
    def size(self):
        return 0

    def _hidden(self):
        pass


class Other(base.Base):
    """Fixed in (#7)."""

    def run(self):
        pass


class Parser(argparse.ArgumentParser):
    """A parser."""

    def error(self, message):
        pass


class _Private:
    def method(self):
        pass
'''
    found = problems({"pkg/__init__.py": '"""The package."""\n', "pkg/base.py": base, "pkg/mod.py": module,
                      "pkg/_version.py": "VERSION = 1\n"})
    assert sorted(found) == sorted([
        "pkg.base.Base.stop: method without a docstring",
        "pkg.mod: module without a docstring",
        "pkg.mod.documented: issue reference 'issue #12' in its docstring",
        "pkg.mod.plain: function without a docstring",
        "pkg.mod.Thing: class without a docstring",
        "pkg.mod.Thing.stop: method without a docstring",  # the base's stop has no docstring
        "pkg.mod.Thing.size: method without a docstring",
        "pkg.mod.Other: issue reference '(#7)' in its docstring",
        "pkg.mod.Parser.error: method without a docstring",  # its base is outside the package
    ]), found
    assert problems({"pkg/__init__.py": '"""The package."""\n', "pkg/base.py": base.replace("pass", '"""Stop."""')}) == []
