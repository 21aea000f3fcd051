"""The import graph of kontext_batch, workers and tasks has no cycle (scripts/import_cycles.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

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


#: What ``run`` does not need before its first submit: the API clients (it never calls the API),
#: Celery and its broker (the workers send the first wave on a nudge), Pillow (no image in a
#: text-only manifest), the worker's own modules (the sweeper, the metrics, the health server), the
#: end of a run (results.csv, the gallery), rich's live display when the output is no terminal, and
#: pydantic (only the emulator's FastAPI app uses it; its import was ~70 ms of the start).
NOT_ON_THE_RUN_START = (
    "pydantic",
    "celery",
    "kombu",
    "amqp",
    "PIL",
    "kontext_batch.workers.schedule",
    "kontext_batch.workers.config",
    "httpx",
    "tenacity",
    "rich",
    "prometheus_client",
    "kontext_batch.api.client",
    "kontext_batch.workers.app",
    "kontext_batch.workers.process",
    "kontext_batch.steps.complete",
    "kontext_batch.steps.sweep",
)


@pytest.mark.integration  # a fresh interpreter: a subprocess
def test_the_start_of_run_loads_neither_the_api_clients_nor_the_worker() -> None:
    """Given the modules `run` imports up to its first submit (the CLI, the sender's runtime, the
    Redis check, the manifest check and the enqueue), when they are imported in a fresh interpreter
    whose output is a pipe, then none of the modules above is loaded."""
    code = (
        "import sys, io\n"
        "import kontext_batch.cli.commands, kontext_batch.run.enqueue, kontext_batch.manifest.validate\n"
        "import kontext_batch.workers.sender, kontext_batch.workers.trust\n"
        "from kontext_batch.cli.progress import reporter_for\n"
        "reporter_for(as_json=False, every_s=30.0, stream=io.StringIO(), out=io.StringIO())\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'tenacity', 'rich',"
        " 'prometheus_client', 'pydantic', 'celery', 'kombu', 'amqp', 'PIL')"
        " or m.startswith(('kontext_batch.api.client',"
        " 'kontext_batch.workers.',"
        " 'kontext_batch.steps.')))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    loaded = set(out.split())
    assert {m for m in loaded if m.startswith(NOT_ON_THE_RUN_START)} == set()
    assert "kontext_batch.workers.sender" in loaded  # the check really ran the imports
