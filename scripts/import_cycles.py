"""Print every import cycle among the modules of kontext_batch; exit 1 if any.

    python scripts/import_cycles.py [PACKAGE_DIR ...]

Every import counts, function-level and ``TYPE_CHECKING`` ones included: a lazy import hides a cycle
from the interpreter, not from a reader. ``from a import b`` is an edge to ``a.b`` when that is a
module, else to ``a``. A string constant that names a project module (``"kontext_batch.tasks.submit"``,
``"kontext_batch.workers.broker:Transport"``: Celery's ``include=`` and transport strings) is an import
too, since Celery imports it.

The package is read as the wheel ships it: ``kontext_batch/workers`` and ``kontext_batch/tasks`` are
symlinks to the repository's top-level ``workers/`` and ``tasks/`` (see pyproject.toml), and the walk
follows them, so their modules count under the names they are imported by.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kontext_batch",)
_MODULE_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?$")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, following the symlinked subpackages as the wheel does."""
    out: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root / package, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                path = Path(folder) / name
                out[module_name(path, root)] = path
    return out


def _targets(node: ast.AST, mod: str, is_pkg: bool, files: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
        name = node.value.partition(":")[0]
        return [name] if name.split(".")[0] in {m.split(".")[0] for m in files} else []
    return []


def _is_get_logger(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "getLogger") or (isinstance(f, ast.Name) and f.id == "getLogger")


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = {m: p for pkg in packages for m, p in package_files(root, pkg).items()}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        loggers = {id(a) for n in ast.walk(tree) if _is_get_logger(n) for a in n.args}  # type: ignore[attr-defined]
        for node in ast.walk(tree):
            if id(node) in loggers:  # logging.getLogger("kontext_batch.api") names a logger, not a module
                continue
            for target in _targets(node, mod, is_pkg, files):
                t = target
                while t and t not in files:  # `import a.b.c` of a non-module attribute: its module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    found = cycles(import_graph(ROOT, argv or PACKAGES))
    for comp in found:
        print("cycle:", " <-> ".join(comp))
    print(f"{len(found)} import cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
