"""Rules of the code layout (``docs/architecture.md``), checked on the source tree: imports point one
way, no generated classes, short orchestration functions, one IGNORE_INDEX, documented public API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pipa"

# lower numbers are lower layers; a module may import its own package or a strictly lower layer
LAYERS = {"core": 0, "config": 1, "models": 2, "data": 2, "uda": 3, "contrast": 3, "methods": 4, "evaluation": 4,
          "viz": 4, "engine": 5, "demo": 6, "api": 6, "predict": 7, "cli": 8, "__main__": 9, "__init__": 0}
# the package's public face re-exports the Python API lazily (``pipa.load``), inside a function
ALLOWED = {("__init__", "api")}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _pipa_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level pipa package) of every relative or absolute pipa import, nested ones included."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(SRC).parent.parts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if not parts:  # "from . import x" at the package root: a module, or an attribute of __init__
                    name = node.names[0].name
                    parts = [name if (SRC / f"{name}.py").exists() or (SRC / name).is_dir() else "__init__"]
            elif node.module and node.module.split(".")[0] == "pipa":
                parts = node.module.split(".")[1:] or [a.name for a in node.names][:1]
            else:
                continue
            out.append((node.lineno, parts[0]))
    return out


def test_layer_table_covers_every_package():
    assert {_package(p) for p in _modules()} <= set(LAYERS)


def test_imports_point_one_way():
    bad = []
    for path in _modules():
        pkg = _package(path)
        for line, target in _pipa_imports(path):
            if target == pkg or target == "__init__" or (pkg, target) in ALLOWED:
                continue
            if LAYERS.get(target, 99) >= LAYERS[pkg]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({pkg}) imports {target}")
    assert not bad, "\n".join(bad)


def test_ignore_index_is_defined_once():
    hits = [p for p in _modules() if "IGNORE_INDEX = " in p.read_text()]
    assert [p.relative_to(SRC).as_posix() for p in hits] == ["core/constants.py"]


def test_no_generated_classes_and_no_type_ignores_in_methods():
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type":
                assert len(node.args) != 3, f"{path}: class generated with type()"
    for path in (SRC / "methods").rglob("*.py"):
        assert "type: ignore" not in path.read_text(), path


@pytest.mark.parametrize("package", ["engine", "methods"])
def test_orchestration_functions_are_short(package):
    long = []
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.name}:{node.name} {n} lines")
    assert not long, long


def test_training_loop_fits_on_a_screen():
    tree = ast.parse((SRC / "engine" / "trainer.py").read_text())
    (loop,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    assert loop.end_lineno - loop.lineno + 1 <= 60


@pytest.mark.parametrize("package", ["models", "methods", "contrast", "uda", "engine"])
def test_public_api_has_docstrings(package):
    missing = []
    for path in (SRC / package).rglob("*.py"):
        for node in _public_defs(ast.parse(path.read_text())):
            if ast.get_docstring(node) is None and not _is_override(node):
                missing.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not missing, "\n".join(missing)


def _public_defs(tree: ast.Module) -> list[ast.FunctionDef | ast.ClassDef]:
    """Module-level functions and classes, and the methods of those classes (not closures)."""
    out: list = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            out.append(node)
            if isinstance(node, ast.ClassDef):
                out += [m for m in node.body if isinstance(m, ast.FunctionDef) and not m.name.startswith("_")]
    return out


def _is_override(node: ast.AST) -> bool:
    """Methods that implement a documented interface (forward/train/__call__ of nn.Module subclasses,
    term hooks) inherit their contract from the base class's docstring."""
    return isinstance(node, ast.FunctionDef) and node.name in {
        "forward", "train", "extra_repr", "applies", "trainable_modules", "wrap", "idle_loss", "after_step",
        "after_terms", "state", "holds"}
