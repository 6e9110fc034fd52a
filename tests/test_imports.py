"""The package's import graph has no cycle, counting every import (also those deferred into a function body,
which only hide a cycle until someone moves them to the top)."""

from __future__ import annotations

import ast
import os

from tests.helpers import REPO

PACKAGE = "ncsn_jax"


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for root, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module of the package: line of the first such import}}``.

    ``from a import b`` counts as an import of ``a.b`` where that is a module, else of ``a``; ``import a.b``
    as one of ``a.b``. Relative imports are resolved against the importing module's package.
    """
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else owner(base)
                    for alias in node.names
                ]
            for target in targets:
                if target is not None and target != module:
                    graph[module].setdefault(target, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every cycle a depth-first search closes (each back edge gives one), as ``[a, b, …, a]``."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node], _ = "open", stack.append(node)
        for successor in graph[node]:
            if state.get(successor) == "open":
                cycles.append([*stack[stack.index(successor) :], successor])
            elif successor not in state:
                visit(successor)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_deferred_import_cycle():
    graph = {"p.a": {"p.b": 3}, "p.b": {"p.c": 9}, "p.c": {"p.a": 40}, "p.d": {"p.a": 1}}
    assert find_cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]
    assert find_cycles({"p.a": {"p.b": 1}, "p.b": {}}) == []


def test_the_graph_sees_the_package_imports():
    graph = import_graph()
    assert "ncsn_jax.train_state" in graph["ncsn_jax.generate"]  # module level
    assert "ncsn_jax.sde_sampling" in graph["ncsn_jax.config_lib"]  # inside a function
    assert "ncsn_jax.models.layers" in graph["ncsn_jax.models.ncsn"]  # from package import module
    assert "ncsn_jax.models" in graph["ncsn_jax.generate"]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    cycles = [
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
        for cycle in find_cycles(graph)
    ]
    assert not cycles, "\n".join(cycles)
    # The cycle issue 8 named: sampling takes the train state from its own module, not from training.
    assert "ncsn_jax.train" not in graph["ncsn_jax.generate"]
