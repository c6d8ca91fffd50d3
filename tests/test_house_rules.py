"""The house plan's rules that no linter checks: short functions, a small package top (docs/architecture.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffheads"
MAX_FUNCTION_LINES = 60
MAX_TOP_MODULES = 8


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every function and method, decorators included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found.append((node.name, node.lineno, node.end_lineno - first + 1))
    return found


def test_function_lengths_are_counted_from_decorator_to_last_line():
    source = "@dec\ndef f(\n    a,\n):\n    x = 1\n\n    return x\n\n\nclass C:\n    def g(self):\n        pass\n"
    assert function_lengths(source) == [("f", 2, 7), ("g", 11, 2)]


def test_no_function_in_src_is_over_60_lines():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({n} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, n in function_lengths(path.read_text())
        if n > MAX_FUNCTION_LINES
    ]
    assert not long, "split these functions (docs/architecture.md): " + ", ".join(long)


def test_package_top_keeps_only_what_everything_shares():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules at the package top: {top}"
