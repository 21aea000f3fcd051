"""The emulator's import graph, read from the source with ``ast`` (imports inside functions and
``if TYPE_CHECKING:`` blocks included, since they are dependencies too).

Given every module under kontext_batch/emulator,
Then none imports kontext_batch.api, directly or through another kontext_batch module: a stand-in API
that shares the client's reading of the spec cannot catch the client's mistakes;
And the imports between the emulator's own modules form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "kontext_batch"
EMULATOR = "kontext_batch.emulator"
API = "kontext_batch.api"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, absolute: ``from pkg import sub`` counts as ``pkg.sub`` when
    ``sub`` is a module (one of ``known``), else as ``pkg``."""
    known = all_modules()
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in known else base)
    return out


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def kontext_graph() -> dict[str, set[str]]:
    """Module -> the kontext_batch modules it imports (a name that is no file maps to its package)."""
    known = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges = set()
        for imported in imported_names(path, name):
            target = imported
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of nodes (first == last), or None when the graph is acyclic."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, black) == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour.get(nxt) == white and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white and (found := visit(node)) is not None:
            return found
    return None


def emulator_modules() -> list[str]:
    names = [n for n in all_modules() if is_under(n, EMULATOR)]
    assert len(names) > 5, names  # the walk found the package
    return names


@pytest.mark.parametrize("module", emulator_modules())
def test_no_emulator_module_imports_the_api_client(module: str) -> None:
    direct = {n for n in imported_names(all_modules()[module], module) if is_under(n, API)}
    assert not direct, f"{module} imports {sorted(direct)}"


def test_no_emulator_module_reaches_the_api_client_through_other_modules() -> None:
    graph = kontext_graph()
    seen: set[str] = set()
    frontier = [(m, [m]) for m in emulator_modules()]
    while frontier:
        node, path = frontier.pop()
        assert not is_under(node, API), " -> ".join(path)
        for nxt in graph[node]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append((nxt, [*path, nxt]))


def test_the_emulator_package_has_no_import_cycle() -> None:
    graph = kontext_graph()
    # Only explicit imports are edges: ``from kontext_batch.emulator import Emulator`` in a submodule
    # is one (to the package's __init__, which imports the submodules back); the implicit run of
    # __init__ before any submodule is not, or every package would be a cycle.
    inside = {n: {t for t in graph[n] if is_under(t, EMULATOR)} for n in emulator_modules()}
    cycle = find_cycle(inside)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_and_the_walk_sees_function_level_imports(tmp_path: Path) -> None:
    """Guards the two checks above against passing because they cannot see anything."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from kontext_batch.emulator.runtime import Runtime\n"
        "def f():\n    from kontext_batch.api.models import parse_aspect_ratio\n"
        "    import kontext_batch.api.client\n"
    )
    found = imported_names(source, "kontext_batch.emulator.m")
    assert {"kontext_batch.emulator.runtime", "kontext_batch.api.models", "kontext_batch.api.client"} <= found
