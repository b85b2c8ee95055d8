"""The shape of the code, as ARCHITECTURE.md asks for it and `make lint` cannot see: no import
circle among deepseekd's modules, no private name imported from another module, and no
function longer than one reader holds in mind (60 lines) without a `# long:` reason."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[2] / "deepseekd"
MAX_FUNCTION_LINES = 60


def _modules() -> list[tuple[str, ast.Module, list[str]]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        text = path.read_text()
        out.append((name, ast.parse(text), text.splitlines()))
    return out


def test_no_import_circle() -> None:
    graph = grimp.build_graph("deepseekd")
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                circles.append(" -> ".join((importer, *back)))
    assert circles == []


def test_no_private_name_crosses_modules() -> None:
    crossings = []
    for name, tree, _ in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deepseekd"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        crossings.append(f"{name}: from {node.module} import {alias.name}")
    assert crossings == []


def test_functions_fit_in_a_readers_head() -> None:
    long = []
    for name, tree, lines in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                around = " ".join(lines[max(first - 2, 0):node.body[0].lineno])
                if size > MAX_FUNCTION_LINES and "# long:" not in around:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert long == []
