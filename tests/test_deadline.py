"""A task that never reaches a status we know as final is given up at its deadline, not polled for ever.

The API is an httpx.MockTransport here (the seam the client offers): no emulator answers a status
word it does not know, which is the case under test (a reseller answering ``succeeded``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from kontext_batch.api.client import KontextClient
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.e2e_support import read_results
from tests.pipeline_support import InlineScheduler, inline_runtime, start_specs, text_specs

BASE = "https://api.bfl.ai"


def _api(request: httpx.Request) -> httpx.Response:
    if request.method == "POST":
        n = request.url.path.rsplit("/", 1)[-1]
        task = f"task-{len(request.content)}-{n}"
        return httpx.Response(200, json={"id": task, "polling_url": f"{BASE}/v1/get_result?id={task}", "cost": 4})
    return httpx.Response(200, json={"id": request.url.params["id"], "status": "succeeded", "progress": None})


def test_an_unknown_status_ends_at_the_deadline_with_the_last_word_seen(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Settings(
        api_key=Secret("deadline-key"),
        api_base=BASE,
        redis_url=redis_url,
        task_deadline_s=1.0,
        poll_first_s=0.1,
        poll_min_s=0.05,
        poll_max_s=0.3,
    )
    sched = InlineScheduler()
    rt = inline_runtime(s, sched)
    rt.provider = KontextClient(s.api_key, BASE, transport=httpx.MockTransport(_api))
    start_specs(rt, "dl", str(tmp_path), text_specs(3))
    with caplog.at_level(logging.WARNING, logger="kontext_batch.pipeline"):
        sched.run(rt, timeout_s=30)
    results = read_results((tmp_path / "results.csv").read_bytes())
    assert [r["status"] for r in results] == ["failed"] * 3
    assert all("last status seen: succeeded" in r["error"] and "deadline" in r["error"] for r in results)
    assert all(int(r["polls"]) >= 2 for r in results)  # polled until the deadline, then given up
    assert rt.slots.active(s.api_key.fingerprint) == 0  # its slot is free again
    unknown = [r for r in caplog.records if "not a known one" in r.getMessage()]
    assert len(unknown) == 1  # once per run and word
