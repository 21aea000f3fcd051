"""The import graph of kontext_batch, workers and tasks has no cycle (scripts/import_cycles.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_cycles"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycle_in_the_project() -> None:
    checker = _checker()
    graph = checker.import_graph()
    assert "kontext_batch.run.enqueue" in graph["kontext_batch.cli.commands"]  # the graph is really read
    assert checker.cycles(graph) == []


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (pkg / "c.py").write_text("from . import a\n")
    checker = _checker()
    assert checker.cycles(checker.import_graph(tmp_path, ["pkg"])) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_emulator_does_not_borrow_the_clients_reading_of_the_api() -> None:
    graph = _checker().import_graph()
    borrowed = {(mod, dep) for mod, deps in graph.items() if mod.startswith("kontext_batch.emulator") for dep in deps}
    assert not {(m, d) for m, d in borrowed if d.startswith("kontext_batch.api")}


def test_the_cli_is_on_top_nothing_imports_it() -> None:
    graph = _checker().import_graph()
    assert "kontext_batch.cli.commands" in graph["kontext_batch.cli"]  # the console script's main
    outside = {m: deps for m, deps in graph.items() if m != "kontext_batch.__main__" and not _in_cli(m)}
    assert {m: sorted(d for d in deps if _in_cli(d)) for m, deps in outside.items() if any(map(_in_cli, deps))} == {}


def _in_cli(module: str) -> bool:
    return module == "kontext_batch.cli" or module.startswith("kontext_batch.cli.")


#: What a job's steps run on, in the workers: none of it may need the manifest package (the reader,
#: the validator, enqueue-time staging), directly or through another module.
WORKER_SIDE = (
    "kontext_batch.steps",
    "kontext_batch.coord",
    "kontext_batch.io",
    "kontext_batch.api",
    "kontext_batch.runtime",
    "kontext_batch.jobspec",
    "kontext_batch.workers",
    "kontext_batch.tasks",
)


def _reaches(graph: dict[str, set[str]], start: str, target: str) -> list[str]:
    """The import chain from ``start`` to the first module under ``target`` it reaches, or []."""
    seen = {start}
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for mod in sorted(frontier):
            for dep in sorted(graph[mod]):
                if dep in seen:
                    continue
                seen.add(dep)
                paths[dep] = [*paths[mod], dep]
                if dep == target or dep.startswith(target + "."):
                    return paths[dep]
                nxt.append(dep)
        frontier = nxt
    return []


def test_the_steps_a_job_takes_never_import_the_manifest_package() -> None:
    graph = _checker().import_graph()
    worker_side = [m for m in graph if any(m == p or m.startswith(p + ".") for p in WORKER_SIDE)]
    assert "kontext_batch.steps.submit" in worker_side  # the graph is really read
    assert "kontext_batch.tasks.submit" in worker_side  # the symlinked packages too
    chains = {m: chain for m in worker_side if (chain := _reaches(graph, m, "kontext_batch.manifest"))}
    assert chains == {}
