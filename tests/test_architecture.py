"""ARCHITECTURE.md's map of the modules is the code's: every module it names exists, and
every module of the package is in it. No module or function outgrows what a reader takes
in at once."""

from __future__ import annotations

import ast
import re

from helpers import REPO, package_modules

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def mapped_modules() -> set[str]:
    """The dotted name of each module the map's first code block names."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("## Modules", 1)[1].split("```", 2)[1]
    named, package = set(), None
    for line in block.splitlines():
        if re.match(r"\S+/\s", line):  # a folder's line: `data/  orchestrator.data ...`
            package = line.split()[1]
        elif line.startswith("  ") and not line.startswith("   ") and package:
            for word in line.split("  ", 2)[1].split():  # names up to the description
                stem = word.removesuffix(".py")
                named.add(package if stem == "__init__" else f"{package}.{stem}")
    return named


def test_the_module_map_names_every_module_and_only_modules() -> None:
    named, on_disk = mapped_modules(), set(package_modules())
    assert not named - on_disk, f"named in ARCHITECTURE.md, not on disk: {named - on_disk}"
    assert not on_disk - named, f"on disk, not in ARCHITECTURE.md: {on_disk - named}"


def oversized(path_text: str, name: str) -> list[str]:
    """`name: N lines` for the module, if over MAX_MODULE_LINES, and each function over
    MAX_FUNCTION_LINES (its whole definition, decorators and docstring included)."""
    lines = path_text.count("\n")
    found = [f"{name}: {lines} lines"] if lines > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(path_text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_or_function_outgrows_its_limit() -> None:
    found = [
        hit
        for name, path in package_modules().items()
        for hit in oversized(path.read_text(encoding="utf-8"), name)
    ]
    assert not found, (
        f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function:\n"
        + "\n".join(found)
    )
    too_long = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert oversized(too_long, "m") == [f"m:1 f: {MAX_FUNCTION_LINES + 1} lines"]  # can fail
