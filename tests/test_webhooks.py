"""Webhook mode: rows complete from the API's deliveries, with a polling fallback; nothing forged,
late, duplicated or out of order changes a row.

The receiver against real Redis and the real emulator (its own webhook deliveries, both payload
forms, deliveries dropped by its ``webhook-lost`` fault), with the pipeline inline or in real
worker processes.
"""

from __future__ import annotations

import heapq
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from kontext_batch.coord.keys import job_ref
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.local import WorkerPool, free_port
from kontext_batch.steps.submit import submit_job
from kontext_batch.steps.webhooks import WebhookReceiver, accept_webhook
from tests.e2e_support import read_results, write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime, start_specs, text_specs
from tests.settings_support import fast_settings

KEY = "webhook-test-key"
SECRET = "the-runs-own-secret"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(0.2)}, seed=3, render="fast")) as e:
        yield e


def _submitted(redis_url: str, emu: Emulator, tmp_path: Path, n: int = 2) -> tuple[object, InlineScheduler]:
    """Rows submitted with a webhook that goes nowhere (port 9 refuses), their fallback polls pending."""
    sched = InlineScheduler()
    rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
    start_specs(rt, "w", str(tmp_path), text_specs(n))
    rt.runs.update("w", webhook_url="http://127.0.0.1:9/hook", webhook_secret=SECRET)
    while sched.queue and sched.queue[0][2] == "submit":
        _, _, _, ref, token = heapq.heappop(sched.queue)
        submit_job(rt, ref, token)
    assert all(kind == "poll" for _, _, kind, _, _ in sched.queue)
    return rt, sched


def _result_body(emu: Emulator, rt: object, ref: str) -> bytes:
    """What the API says of the job's task once it is over: get_result's body, the bfl webhook form."""
    polling_url = rt.jobs.fields(ref, "polling_url")["polling_url"]  # type: ignore[attr-defined]
    for _ in range(50):
        resp = httpx.get(polling_url, headers={"x-key": KEY})
        if resp.json()["status"] != "Pending":
            return resp.content
        time.sleep(0.05)
    raise AssertionError("the task never ended")


def test_a_delivery_completes_the_row_without_polling(redis_url: str, emu: Emulator, tmp_path: Path) -> None:
    rt, sched = _submitted(redis_url, emu, tmp_path)
    ref = job_ref("w", 1)
    body = _result_body(emu, rt, ref)
    polls_before = emu.stats()["polls"]
    assert accept_webhook(rt, ref, SECRET, body) == HTTPStatus.OK  # type: ignore[arg-type]
    sent = len(sched.sent)
    assert accept_webhook(rt, ref, SECRET, body) == HTTPStatus.OK  # type: ignore[arg-type]  # duplicate
    assert len(sched.sent) == sent  # ... sends nothing
    sched.run(rt, timeout_s=30)  # type: ignore[arg-type]
    res = {int(r["row"]): r for r in read_results((tmp_path / "results.csv").read_bytes())}
    assert res[1]["status"] == "succeeded"
    assert res[1]["polls"] == "0"  # completed by the webhook
    assert res[2]["status"] == "succeeded"  # no webhook: completed by its fallback poll
    assert int(res[2]["polls"]) >= 1
    assert emu.stats()["polls"] - polls_before == int(res[2]["polls"])  # the stale fallback poll of row 1 sent nothing


@pytest.mark.parametrize(
    ("secret", "mangle", "expected"),
    [
        ("forged-secret", None, HTTPStatus.FORBIDDEN),
        (None, None, HTTPStatus.FORBIDDEN),
        (SECRET, {"id": "an-earlier-task-of-the-row"}, HTTPStatus.OK),  # late: for another task
        (SECRET, {"status": "Pending", "result": None}, HTTPStatus.OK),  # out of order: not an end
        (SECRET, "not json", HTTPStatus.BAD_REQUEST),
    ],
    ids=["forged", "no-secret", "late", "out-of-order", "garbage"],
)
def test_deliveries_that_change_nothing(
    redis_url: str, emu: Emulator, tmp_path: Path, secret: str | None, mangle: object, expected: HTTPStatus
) -> None:
    rt, sched = _submitted(redis_url, emu, tmp_path, n=1)
    ref = job_ref("w", 1)
    good = json.loads(_result_body(emu, rt, ref))
    body = b"not json" if mangle == "not json" else json.dumps({**good, **(mangle or {})}).encode()  # type: ignore[dict-item]
    before = rt.jobs.fields(ref, "step", "state")  # type: ignore[attr-defined]
    assert accept_webhook(rt, ref, secret, body) == expected  # type: ignore[arg-type]
    assert rt.jobs.fields(ref, "step", "state", "webhook_result") == before  # type: ignore[attr-defined]
    assert [k for k, *_ in sched.sent].count("poll") == 1  # only the fallback poll


@pytest.mark.e2e
@pytest.mark.parametrize(("form", "lost"), [("bfl", 0.0), ("alt", 0.1)], ids=["bfl", "alt-10pct-lost"])
def test_a_run_in_webhook_mode_with_real_workers(redis_url: str, tmp_path: Path, form: str, lost: float) -> None:
    n = 40
    cfg = EmulatorConfig(
        latency={"*": LatencySpec.fixed(0.4)},
        seed=5,
        render="fast",
        webhook_form=form,  # type: ignore[arg-type]
        faults={"webhook-lost": lost} if lost else {},
    )
    port = free_port()
    with Emulator(cfg) as emu:
        s = fast_settings(
            api_key=KEY,
            api_base=emu.base_url,
            redis_url=redis_url,
            webhook_url=f"http://127.0.0.1:{port}/kontext-webhook",
            poll_max_s=2.0,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")} | s.to_env()
        receiver = subprocess.Popen(  # the receiver as users run it: its own process, no API key needed
            [sys.executable, "-m", "kontext_batch", "webhooks", "--port", str(port)],
            env={**env, "KONTEXT_API_KEY": ""},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with WorkerPool(s, n=2, concurrency=16):
                rows = [{"id": f"w{i}", "prompt": f"edit {i}"} for i in range(n)]
                manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
                out = tmp_path / "out"
                proc = subprocess.run(
                    [sys.executable, "-m", "kontext_batch", "run", str(manifest), "-o", str(out), "--wait"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=180,
                    check=False,
                )
                assert proc.returncode == 0, proc.stderr[-3000:]
                stats = emu.stats(tasks=False)
        finally:
            receiver.terminate()
            receiver.wait(10)
    res = read_results((out / "results.csv").read_bytes())
    assert [r["status"] for r in res] == ["succeeded"] * n
    polls = sum(int(r["polls"]) for r in res)
    lost_n = stats["faults_injected"].get("webhook-lost", 0)
    if not lost:
        assert polls == 0  # every row completed by its webhook
        assert stats["polls"] == 0
    else:
        assert lost_n > 0
        assert polls / n <= 0.3, (polls, lost_n)
    print(f"webhook mode ({form}, {lost:.0%} lost): {n} rows, {polls} polls ({polls / n:.2f} per job), {lost_n} lost")


@pytest.mark.integration
@pytest.mark.parametrize("length", ["-1", "abc"])
def test_a_body_length_that_is_not_a_size_is_refused_before_reading(length: str) -> None:
    # read(-1) would read until the sender stops: the receiver answers 400 without reading at all.
    with WebhookReceiver(None, 0) as receiver, socket.create_connection(("127.0.0.1", receiver.port), 5) as sock:  # type: ignore[arg-type]
        sock.sendall(f"POST /?job=r:1 HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.0 400")  # while the connection is still open
