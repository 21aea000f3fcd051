"""Flower, as docker-compose runs it (basic auth from FLOWER_BASIC_AUTH): it sees the running
workers, and each row's outcome is readable there as the result of the row's last task."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from kontext_batch.run.local import WorkerPool, free_port
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.conftest import unavailable
from tests.e2e_support import E2E_KEY, read_results, running_system, write_csv

pytestmark = pytest.mark.e2e

KEY = "flower-test-key-4c2a"
AUTH = ("operator", "flower-test-password")


@contextmanager
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """Flower as compose starts it (the broker from KONTEXT_REDIS_URL, basic auth); yields its base URL."""
    celery = shutil.which("celery", path=str(Path(sys.executable).parent))
    try:
        import flower  # noqa: F401, PLC0415 - only to learn whether it is installed
    except ImportError:
        unavailable("flower is not installed (pip install -e '.[test]')")
    assert celery is not None
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTEXT_", "FLOWER_"))}
    env |= {"KONTEXT_REDIS_URL": redis_url, "FLOWER_BASIC_AUTH": ":".join(AUTH), "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [celery, "-A", "kontext_batch.workers.app", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def flower_get(base: str, path: str, want: int, **params: str) -> dict[str, Any]:
    """``GET path`` with the compose auth until it answers a JSON object of at least ``want`` entries."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + 90
    while len(got) < want:
        assert time.monotonic() < deadline, f"flower {path}: {len(got)} of {want}: {sorted(got)[:5]}"
        try:
            resp = httpx.get(f"{base}{path}", params=params, auth=AUTH, timeout=15)
            if resp.status_code == 200:
                got = resp.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return got


def test_flower_lists_the_running_workers_through_its_api_with_compose_auth(redis_url: str, tmp_path: Path) -> None:
    s = Settings(api_key=Secret(KEY), redis_url=redis_url, api_base="http://127.0.0.1:9")
    with WorkerPool(s, n=2, concurrency=2), flower(redis_url, tmp_path) as base:
        workers = flower_get(base, "/api/workers", 2, refresh="1")
        assert all(name.startswith("kontext-") for name in workers)
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/workers", auth=("operator", "wrong"), timeout=10).status_code == 401


def test_each_rows_outcome_is_the_result_of_its_last_task_in_flower(redis_url: str, tmp_path: Path) -> None:
    """A failed and a moderated row no longer hide among SUCCESS tasks: the task that ended each row
    returns a line saying what happened to it, with the manifest's id where the row did not succeed."""
    rows = [{"id": f"sku-{i}", "prompt": f"shoe {i} on white"} for i in range(1, 7)]
    rows[2]["prompt"] += " [emulator:error]"
    rows[4]["prompt"] += " [emulator:content-moderated]"
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
    # Task events on, as compose turns them on for its workers (KONTEXT_TASK_EVENTS=1).
    with running_system(redis_url, workers=1, task_events=True) as system, flower(redis_url, tmp_path) as base:
        flower_get(base, "/api/workers", 1, refresh="1")  # listening for events before the run starts
        done = system.cli("run", str(manifest), "--output", str(tmp_path / "out"), "--wait")
        assert done.returncode == 1, done.stderr  # one row failed
        results = read_results((tmp_path / "out" / "results.csv").read_bytes())
        run_id = results[0]["job_id"].split(":")[0]
        tasks = flower_get(base, "/api/tasks", 2 * len(rows))  # every row took at least a submit and a poll
        assert E2E_KEY not in str(tasks)
    lines = [ast.literal_eval(t["result"]) for t in tasks.values() if t.get("state") == "SUCCESS" and t.get("result")]
    for r in results:
        row = r["job_id"].split(":")[1]
        ends = [ln for ln in lines if ln.startswith(f"{run_id}:{row} ") or ln.startswith(f"{run_id}:{row}:")]
        assert any(f": {r['status']}" in ln for ln in ends), (r, ends)
    by_status = {r["status"]: r for r in results}
    assert set(by_status) == {"succeeded", "failed", "moderated"}
    for status in ("failed", "moderated"):
        r = by_status[status]
        assert any(f"(id {r['id']}): {status}: " in ln for ln in lines), (status, lines)
    assert any(": submitted as task " in ln for ln in lines)
