"""The package's shape, checked on its source: sizes, import cycles and layers.

No module over 500 lines, no function over 90; no import cycle between tlbench's modules, counting
imports inside functions (those under `if TYPE_CHECKING:` do not run, so they do not count); and the
lower layers (config, data, models, report, the run directory's schema) never import training.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tlbench"
LOWER = (
    "tlbench.config",
    "tlbench.data",
    "tlbench.models",
    "tlbench.report",
    "tlbench.rundir",
    "tlbench.options",
)
UPPER = ("tlbench.train", "tlbench.sweep", "tlbench.cli", "tlbench.bench", "tlbench.eval")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(sub) for sub in ast.walk(node)}
    return skip


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The tlbench modules `name` imports anywhere in its source (TYPE_CHECKING blocks aside)."""

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.startswith("tlbench")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("tlbench"):
                found |= {resolve(f"{base}.{a.name}") for a in node.names}
    return {m for m in found if m and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_module_over_500_lines_and_no_function_over_90() -> None:
    big, long_ = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if source.count("\n") > 500:
            big.append(f"{path.name} ({source.count(chr(10))})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 90:
                    long_.append(f"{path.name}:{node.name} ({length})")
    assert big == [] and long_ == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """Tarjan's strongly connected components: every one is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_lower_layers_never_import_training_or_the_commands(graph: dict[str, set[str]]) -> None:
    upward = {
        name: sorted(t for t in targets if t.startswith(UPPER))
        for name, targets in graph.items()
        if name.startswith(LOWER)
    }
    assert {name: up for name, up in upward.items() if up} == {}


def test_the_config_layer_depends_on_options_and_errors_only(graph: dict[str, set[str]]) -> None:
    allowed = ("tlbench.config", "tlbench.options", "tlbench.errors", "tlbench._util")
    outside = {n: sorted(t for t in ts if not t.startswith(allowed)) for n, ts in graph.items()}
    assert {n: ts for n, ts in outside.items() if n.startswith("tlbench.config") and ts} == {}
