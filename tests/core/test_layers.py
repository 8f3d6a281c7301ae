"""The folders are layers (DESIGN.md): core <- export, kernels <- runtime <- bench and the CLI.

Read from the import statements of the source files, so a violation fails here rather than as an
import cycle at run time. ``python tests/core/test_layers.py`` prints the folder graph.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"core": "varrt.core", "export": "varrt.export", "kernels": "varrt.kernels", "bench": "varrt.bench",
            "runtime": "varrt"}
# Who may import whom; runtime reaches bench only through the CLI's `varrt bench` subcommand.
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
    "export": {"core", "kernels"},
    "runtime": {"core", "export", "kernels", "bench"},
    "bench": {"core", "export", "kernels", "runtime"},
}
# The runtime's modules export/ and kernels/ must never need (nor bench, checked by ALLOWED).
RUNTIME_ONLY = ("varrt.explainer", "varrt.backends", "varrt.cli", "varrt.cache", "varrt.images", "varrt.files")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported varrt module (or name inside it)
    path: Path
    line: int
    in_function: bool


def folder_of(module: str) -> str | None:
    if module != "varrt" and not module.startswith("varrt."):
        return None
    for folder, package in PACKAGES.items():
        if folder != "runtime" and (module == package or module.startswith(package + ".")):
            return folder
    return "runtime"


def _module_name(folder: str, path: Path) -> str:
    parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
    return ".".join([PACKAGES[folder], *parts])


def _function_import_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines |= {sub.lineno for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))}
    return lines


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Imports under ``if TYPE_CHECKING:`` (never executed)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {sub.lineno for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))}
    return lines


def _sources() -> list[tuple[str, Path]]:
    return [(_module_name(folder, path), path) for folder in PACKAGES for path in sorted((ROOT / folder).rglob("*.py"))]


def varrt_imports() -> list[Import]:
    found = []
    for source, path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function, skipped = _function_import_lines(tree), _type_checking_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from varrt import data` imports the module varrt.data
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            if node.lineno not in skipped:
                found += [Import(source, t, path, node.lineno, node.lineno in in_function)
                          for t in targets if folder_of(t) is not None]
    return found


def folder_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for item in imports:
        source, target = folder_of(item.source), folder_of(item.target)
        assert source is not None and target is not None
        if source != target:
            graph[source].add(target)
    return graph


def test_folders_import_only_the_layers_below():
    imports = varrt_imports()
    wrong = [f"{i.path.relative_to(ROOT)}:{i.line}: {i.source} imports {i.target}" for i in imports
             if folder_of(i.target) != folder_of(i.source) and folder_of(i.target) not in ALLOWED[folder_of(i.source)]]
    assert wrong == []


def test_core_has_no_varrt_imports_of_its_own():
    outside = {i.target for i in varrt_imports() if folder_of(i.source) == "core" and folder_of(i.target) != "core"}
    assert outside == set()


def test_export_and_kernels_need_nothing_of_the_runtime():
    wrong = [f"{i.path.relative_to(ROOT)}:{i.line}: {i.target}" for i in varrt_imports()
             if folder_of(i.source) in ("export", "kernels") and i.target.startswith(RUNTIME_ONLY)]
    assert wrong == []


def test_the_runtime_reaches_bench_only_through_the_cli():
    sources = {i.source for i in varrt_imports() if folder_of(i.source) == "runtime" and folder_of(i.target) == "bench"}
    assert sources == {"varrt.cli"}


def test_no_varrt_import_inside_a_function():
    """An import inside a function to dodge a cycle means the layers are wrong. (Lazy imports of
    heavy optional modules - cupy, tensorrt, torch, matplotlib - are third-party, not counted.)"""
    local = [f"{i.path.relative_to(ROOT)}:{i.line}: {i.target}" for i in varrt_imports() if i.in_function]
    assert local == []


def test_no_import_cycles_between_modules():
    modules = {name for name, _ in _sources()}
    graph: dict[str, set[str]] = defaultdict(set)
    for item in varrt_imports():
        # `from varrt.bench import cli` names a module; `from varrt.core.errors import UsageError` a name in one
        target = item.target if item.target in modules else item.target.rpartition(".")[0]
        if target in modules and target != item.source:
            graph[item.source].add(target)
    cycles = [cycle for cycle in _cycles(graph) if len(cycle) > 1]
    assert cycles == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


if __name__ == "__main__":
    graph = folder_graph(varrt_imports())
    for folder in PACKAGES:
        print(f"{folder:8} -> {', '.join(sorted(graph.get(folder, ()))) or '(nothing)'}")
    sys.exit(0)
