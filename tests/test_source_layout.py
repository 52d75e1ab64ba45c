"""The source tree keeps the shape the project asks of it: short modules, short functions, and imports that
only go down the layers.

Layers, lowest first: ``implementations`` (the backends), ``conformance`` (the suite, which calls
backends), ``benchmarks`` (which gate on the suite's checks), ``reports`` (which read all of them, and hold
the ``attnspec`` command that runs them in turn). A module may import its own layer and the ones below it,
never one above, not even inside a function: a lazy import upward is still a dependency upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("conformance", "implementations", "benchmarks", "reports", "tests")
LAYERS = ("implementations", "conformance", "benchmarks", "reports")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def python_files() -> list[Path]:
    """Every Python file of the checked packages, relative to the repository root."""
    return sorted(path.relative_to(ROOT) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in path.parts)


def parse(path: Path) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=str(path))


def long_functions(tree: ast.Module, limit: int) -> list[tuple[str, int, int]]:
    """``(name, first line, length)`` of each function longer than ``limit`` lines, decorators included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > limit:
                found.append((node.name, first, length))
    return found


def imported_modules(tree: ast.Module) -> list[tuple[str, int]]:
    """``(module, line)`` of every absolute import anywhere in the module, function bodies included, and of
    every ``importlib.import_module("...")`` call with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, node.lineno))
    return found


def upward_imports(path: Path, tree: ast.Module) -> list[str]:
    """The imports of ``path`` that reach a layer above its own."""
    layer = LAYERS.index(path.parts[0])
    above = set(LAYERS[layer + 1:])
    return [f"{path}:{line} imports {module}" for module, line in imported_modules(tree)
            if module.split(".")[0] in above]


def test_the_checked_packages_have_python_files():
    files = python_files()
    for package in PACKAGES:
        assert any(path.parts[0] == package for path in files), package


@pytest.mark.parametrize("path", python_files(), ids=str)
def test_module_is_short(path: Path):
    lines = len((ROOT / path).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines (at most {MAX_MODULE_LINES}): split it by topic"


@pytest.mark.parametrize("path", python_files(), ids=str)
def test_functions_are_short(path: Path):
    too_long = long_functions(parse(path), MAX_FUNCTION_LINES)
    assert not too_long, f"{path}: functions over {MAX_FUNCTION_LINES} lines (name, line, length): {too_long}"


@pytest.mark.parametrize("path", [p for p in python_files() if p.parts[0] in LAYERS], ids=str)
def test_imports_only_go_down_the_layers(path: Path):
    assert upward_imports(path, parse(path)) == []


def test_the_checks_find_what_they_look_for():
    """Each check fails on a module that breaks its rule: a long function, an upward import at the top, in
    a function body and through importlib."""
    source = ("import reports.build\n"
              "def late():\n    from benchmarks import bench\n    import importlib\n"
              "    return importlib.import_module('reports.site')\n"
              "def long():\n" + "    x = 1\n" * 61)
    tree = ast.parse(source)
    assert [name for name, _, _ in long_functions(tree, MAX_FUNCTION_LINES)] == ["long"]
    assert len(upward_imports(Path("conformance/example.py"), tree)) == 3
    assert len(upward_imports(Path("benchmarks/example.py"), tree)) == 2
    assert upward_imports(Path("reports/example.py"), tree) == []
