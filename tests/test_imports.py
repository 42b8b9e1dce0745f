"""The import graph of `ptqbench`: no cycle (module-level and function-local imports alike) and the
package layering (quantizers below models below algorithms and methods)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Optional

PACKAGE = Path(__file__).resolve().parents[1] / "ptqbench"

# (importer package, packages it must never import)
LAYERS = (
    ("ptqbench.quant", ("ptqbench.algorithms", "ptqbench.models", "ptqbench.methods")),
    ("ptqbench.models", ("ptqbench.algorithms", "ptqbench.methods")),
)


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> Optional[str]:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ptqbench modules `module` imports anywhere in its body, except under TYPE_CHECKING.
    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ptqbench":
                    found.add(_nearest_module(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, is_package)
            if target and target.split(".")[0] == "ptqbench":
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else _nearest_module(target, modules))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    if is_package and "pkgutil.iter_modules(__path__)" in path.read_text():
        # a package that imports every module in it (the method, task, family and quantizer-kind
        # registries): an edge to each of its direct submodules
        found.update(m for m in modules if m.rpartition(".")[0] == module)
    found.discard(module)
    return found


def _nearest_module(name: str, modules: dict[str, Path]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """Every ptqbench module -> the ptqbench modules it imports (parsed once per test session)."""
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One cycle of `graph` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def dfs(node: str) -> Optional[list[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_function_local_and_submodule_imports():
    """The parser itself: a function-local `from pkg import submodule` is an edge to the submodule,
    a TYPE_CHECKING import is none, and a three-module cycle is reported as its path."""
    graph = import_graph()
    assert "ptqbench.methods.repq" in graph["ptqbench.methods"]  # the package imports every module in it
    assert "ptqbench.quant.tan" in graph["ptqbench.quant"]
    assert "ptqbench.pipeline" in graph["ptqbench.run"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layering():
    graph = import_graph()
    bad = [f"{src} imports {dst}" for src, deps in sorted(graph.items()) for layer, banned in LAYERS
           if src == layer or src.startswith(layer + ".")
           for dst in sorted(deps) if any(dst == b or dst.startswith(b + ".") for b in banned)]
    assert not bad, "layering broken:\n" + "\n".join(bad)
