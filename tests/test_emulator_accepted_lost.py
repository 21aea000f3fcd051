"""The ``accepted-lost`` fault: the task is created, then the answer to the submit is lost.

Given ``faults={"accepted-lost": rate}``, when a submit fires it, then the client gets no answer at
all (the connection is aborted before a byte is sent: a transport error), yet the task exists: it is
counted in ``tasks_created`` overall and per key, charged, holds an active slot, and runs to Ready.
A client that retries such a submit creates a second task: ``tasks_created`` minus rows submitted
is the number of duplicates.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kontext_batch.api.client import KontextClient
from kontext_batch.api.models import KontextRequest
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.emulator import Emulator, emulator_command, parse_fault
from kontext_batch.errors import RateLimited, TransportError
from kontext_batch.secret import Secret
from tests.emulator_fixtures import HANG_GUARD_S, KEY, fast_config, http, slow_config, wait_terminal

__all__ = ["http"]  # fixtures used by name

FP = Secret(KEY).fingerprint
LOST = {"accepted-lost": 1.0}


def raw_submit(emu: Emulator, body: dict[str, Any]) -> bytes:
    """POST a submit over a bare socket; everything the server sent before closing."""
    payload = json.dumps(body).encode()
    request = (
        f"POST /v1/flux-kontext-pro HTTP/1.1\r\nHost: 127.0.0.1:{emu.port}\r\nx-key: {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    received = b""
    with socket.create_connection(("127.0.0.1", emu.port), timeout=HANG_GUARD_S) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # an abort may arrive as a reset: no bytes either way
    return received


@pytest.mark.integration
def test_the_task_is_created_and_billed_but_no_byte_of_the_answer_arrives() -> None:
    with Emulator(slow_config(faults=LOST, credits=100)) as emu:
        assert raw_submit(emu, {"prompt": "a cat"}) == b""
        stats = emu.stats()
    assert stats["tasks_created"] == 1
    assert stats["faults_injected"] == {"accepted-lost": 1}
    key = stats["keys"][FP]
    assert key["tasks_created"] == 1
    assert key["active"]["total"] == 1
    assert key["credits"] == 96
    assert key["credits_spent"] == 4
    assert [t["key"] for t in stats["tasks"].values()] == [FP]


def test_the_real_client_sees_a_transport_error_and_the_task_runs_to_ready(http: httpx.Client) -> None:
    with Emulator(fast_config(faults=LOST)) as emu, KontextClient(KEY, emu.base_url) as client:
        with pytest.raises(TransportError):
            client.submit("flux-kontext-pro", KontextRequest(prompt="a cat"))
        (task_id,) = emu.stats()["tasks"]
        emu.set_faults({})
        # The lost task is real: its poll URL (which the client never got) reaches Ready.
        polling_url = f"{emu.base_url.replace('127.0.0.1', 'localhost')}/v1/get_result?id={task_id}"
        assert wait_terminal(http, polling_url)["status"] == "Ready"
        assert emu.stats(tasks=False)["final_status"] == {"Ready": 1}


@pytest.mark.integration
def test_lost_answers_hold_active_slots() -> None:
    with Emulator(slow_config(faults=LOST, max_active_total=2)) as emu, KontextClient(KEY, emu.base_url) as client:
        for _ in range(2):
            with pytest.raises(TransportError):
                client.submit("flux-kontext-pro", KontextRequest(prompt="a cat"))
        emu.set_faults({})
        with pytest.raises(RateLimited):
            client.submit("flux-kontext-pro", KontextRequest(prompt="a cat"))
        key = emu.stats(tasks=False)["keys"][FP]
    assert key["tasks_created"] == 2
    assert key["active"]["total"] == 2
    assert key["rejected_429"] == 1


@pytest.mark.integration
def test_a_retrying_client_creates_one_extra_task_per_lost_answer() -> None:
    rows = 12
    policy = RetryPolicy(attempts=20, base_s=0.001, max_s=0.002, sleep=lambda _: None)
    config = fast_config(faults={"accepted-lost": 0.4}, max_active_total=100)
    with Emulator(config) as emu, KontextClient(KEY, emu.base_url, retry=policy) as client:
        tasks = [client.submit("flux-kontext-pro", KontextRequest(prompt=f"row {n}")) for n in range(rows)]
        stats = emu.stats(tasks=False)
    lost = stats["faults_injected"]["accepted-lost"]
    assert lost > 0
    assert len({t.id for t in tasks}) == rows
    assert stats["tasks_created"] == rows + lost
    assert stats["keys"][FP]["tasks_created"] == rows + lost


def test_the_reseller_dialect_loses_answers_too(http: httpx.Client) -> None:
    with Emulator(slow_config(faults=LOST)) as emu:
        with pytest.raises(httpx.TransportError):
            http.post(
                f"{emu.base_url}/reseller/v1/tasks",
                headers={"authorization": f"Bearer {KEY}"},
                json={"model": "flux_kontext_max", "prompt": "a cat"},
            )
        stats = emu.stats(tasks=False)
    assert stats["keys"][FP]["tasks_created"] == 1
    assert stats["keys"][FP]["active"] == {"flux-kontext-max": 1, "total": 1}


def test_refused_submits_and_polls_are_never_lost(http: httpx.Client) -> None:
    with Emulator(fast_config(faults=LOST)) as emu:
        # A 422 creates no task, so there is no accepted answer to lose.
        bad = http.post(f"{emu.base_url}/v1/flux-kontext-pro", headers={"x-key": KEY}, json={"seed": 1})
        assert bad.status_code == 422
        lost = raw_submit(emu, {"prompt": "a cat"})
        assert lost == b""
        (task_id,) = emu.stats()["tasks"]
        poll = http.get(
            f"{emu.base_url.replace('127.0.0.1', 'localhost')}/v1/get_result",
            params={"id": task_id},
            headers={"x-key": KEY},
        )
        assert poll.status_code == 200
        assert emu.stats(tasks=False)["faults_injected"] == {"accepted-lost": 1}


def test_the_fault_is_spelled_like_the_others() -> None:
    assert parse_fault("accepted-lost=0.02") == ("accepted-lost", 0.02)
    help_text = CliRunner().invoke(emulator_command, ["--help"]).output
    assert "accepted-lost" in help_text
    result = CliRunner().invoke(emulator_command, ["--fault", "accepted-lost=2"])
    assert result.exit_code == 2
