"""The public API and the module graph: __all__, the lazy exports, the TYPE_CHECKING imports and
the README stay in step; no module imports another's private name; no import cycles."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import jacverify

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jacverify"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "strategies").rglob("*.py")])
TESTS = sorted((ROOT / "tests").rglob("*.py"))


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "strategies"):
        parts = ("jacverify", "strategies", *path.relative_to(ROOT / "strategies").with_suffix("").parts)
    else:
        parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def test_all_is_the_exports_and_every_export_resolves():
    assert jacverify.__all__ == sorted(jacverify._EXPORTS)
    for name in jacverify.__all__:
        assert getattr(jacverify, name) is getattr(importlib.import_module(jacverify._EXPORTS[name]),
                                                   name)


def test_type_checking_imports_match_the_exports():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", None) == "TYPE_CHECKING")
    imported = {(node.module, alias.name) for node in block.body
                for alias in node.names if isinstance(node, ast.ImportFrom)}
    assert imported == {(module, name) for name, module in jacverify._EXPORTS.items()}


def test_every_public_name_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in jacverify.__all__ if not re.search(rf"\b{re.escape(n)}\b", readme)]
    assert not missing, f"public names the README never mentions: {missing}"


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jacverify"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jacverify"):
                    yield a.name, []


@pytest.mark.parametrize("path", SOURCES + TESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_private_name_of_another(path):
    private = [f"{module}.{name}" for module, names in _imports(path) for name in names
               if name.startswith("_") and not name.startswith("__")]
    assert not private


def test_no_import_cycles_at_module_level():
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level only: imports inside functions are deferred on purpose
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jacverify"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("jacverify"))
        graph[_module_name(path)] = deps
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    # a package's __init__ importing its own submodules is how registration works: not a cycle
    graph = {m: {d for d in deps if not (d.startswith(m + ".") or m.startswith(d + "."))}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_package_ships_py_typed():
    assert (PACKAGE / "py.typed").exists()
    assert "py.typed" in (ROOT / "pyproject.toml").read_text()


def test_every_public_function_documents_args_returns_raises_and_an_example():
    import inspect

    lacking = {}
    for name in jacverify.__all__:
        obj = getattr(jacverify, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj) or ""
            missing = [k for k in ("Args:", "Returns:", "Raises:", ">>>") if k not in doc]
            if missing:
                lacking[name] = missing
    assert not lacking
