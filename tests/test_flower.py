"""Flower, as docker-compose runs it (basic auth from FLOWER_BASIC_AUTH), sees the running workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kontext_batch.run.local import WorkerPool, free_port
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.conftest import unavailable

KEY = "flower-test-key-4c2a"
AUTH = ("operator", "flower-test-password")


@pytest.mark.e2e
def test_flower_lists_the_running_workers_through_its_api_with_compose_auth(redis_url: str, tmp_path: Path) -> None:
    celery = shutil.which("celery", path=str(Path(sys.executable).parent))
    try:
        import flower  # noqa: F401, PLC0415 - only to learn whether it is installed
    except ImportError:
        unavailable("flower is not installed (pip install -e '.[test]')")
    assert celery is not None
    s = Settings(api_key=Secret(KEY), redis_url=redis_url, api_base="http://127.0.0.1:9")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTEXT_", "FLOWER_"))}
    # What docker-compose.yml gives the flower service: the broker URL and the basic auth.
    env |= {"KONTEXT_REDIS_URL": redis_url, "FLOWER_BASIC_AUTH": ":".join(AUTH), "HOME": str(tmp_path)}
    with WorkerPool(s, n=2, concurrency=2):
        flower_proc = subprocess.Popen(
            [celery, "-A", "kontext_batch.workers.app", "flower", f"--port={port}", "--address=127.0.0.1"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            workers: dict[str, object] = {}
            deadline = time.monotonic() + 90
            while len(workers) < 2:
                assert flower_proc.poll() is None, "flower exited"
                assert time.monotonic() < deadline, f"flower saw {sorted(workers)}"
                try:
                    resp = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=15)
                    if resp.status_code == 200:
                        workers = resp.json()
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            assert all(name.startswith("kontext-") for name in workers)
            assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
            assert httpx.get(f"{base}/api/workers", auth=("operator", "wrong"), timeout=10).status_code == 401
        finally:
            os.killpg(flower_proc.pid, signal.SIGTERM)
            flower_proc.wait(20)
