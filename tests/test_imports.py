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
