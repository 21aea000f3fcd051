"""Injected faults look like a flaky real API, and each kind fires at rate 1.0.

Given an emulator with one fault kind at rate 1.0, when a client submits or polls, then it sees
exactly that fault (status, body, stall or dropped connection), no task is created by a faulted
submit, and the stats count the injection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from tests.emulator_fixtures import KEY, fast_config, http, submit, wait_terminal

__all__ = ["http"]  # fixtures used by name


@pytest.fixture(scope="module")
def faulty() -> Iterator[Emulator]:
    """One emulator per module; each test sets its own fault rates and starts from a reset."""
    with Emulator(fast_config()) as emulator:
        yield emulator


@pytest.fixture
def emu(faulty: Emulator) -> Iterator[Emulator]:
    faulty.reset()
    yield faulty
    faulty.set_faults({})


def _poll(client: httpx.Client, emu: Emulator) -> httpx.Response:
    return client.get(f"http://localhost:{emu.port}/v1/get_result", params={"id": "any"}, headers={"x-key": KEY})


@pytest.mark.parametrize("code", [500, 503])
def test_5xx_faults_hit_submit_and_poll_and_create_nothing(emu: Emulator, http: httpx.Client, code: int) -> None:
    emu.set_faults({str(code): 1.0})
    answers = [
        submit(http, emu.base_url, {"prompt": "x"}),
        submit(http, emu.base_url, {"prompt": "x"}),
        _poll(http, emu),
    ]
    assert [r.status_code for r in answers] == [code] * 3
    kinds = {r.headers["content-type"].split(";")[0] for r in answers}
    if code == 500:
        assert kinds == {"application/json"}
        assert all(isinstance(r.json()["detail"], str) for r in answers)
    else:
        # Like a real proxy in front of the API: sometimes JSON, sometimes an HTML page.
        assert kinds == {"application/json", "text/html"}
    stats = emu.stats()
    assert stats["submits"] == 0
    assert stats["faults_injected"] == {str(code): 3}


def test_a_spurious_429_hits_submit_only(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults({"429": 1.0})
    resp = submit(http, emu.base_url, {"prompt": "x"})
    assert resp.status_code == 429
    assert isinstance(resp.json()["detail"], str)
    assert resp.headers["retry-after"] == "1"
    assert _poll(http, emu).status_code == 200
    stats = emu.stats()
    assert stats["faults_injected"] == {"429": 1}
    assert stats["rejected_429"] == 0, "a fault is not a cap rejection"
    assert stats["submits"] == 0


def test_a_timeout_fault_stalls_past_the_client_timeout_and_creates_no_task(emu: Emulator, http: httpx.Client) -> None:
    assert emu.config.stall_s >= 2.0, "the floor holds whatever the time_scale"
    emu.set_faults({"timeout": 1.0})
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"{emu.base_url}/v1/flux-kontext-pro", headers={"x-key": KEY}, json={"prompt": "x"}, timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"http://localhost:{emu.port}/v1/get_result", params={"id": "x"}, timeout=0.5)
    stats = emu.stats()
    assert stats["submits"] == 0
    assert stats["tasks"] == {}
    assert stats["faults_injected"] == {"timeout": 2}


def test_a_stalled_request_ends_with_504(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults({"timeout": 1.0})
    resp = submit(http, emu.base_url, {"prompt": "x"})  # the client waits out the 2 s stall
    assert resp.status_code == 504
    assert emu.stats()["submits"] == 0


def test_a_disconnect_fault_drops_the_connection_mid_response(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults({"disconnect": 1.0})
    with pytest.raises(httpx.RemoteProtocolError):
        submit(http, emu.base_url, {"prompt": "x"})
    with pytest.raises(httpx.RemoteProtocolError):
        _poll(http, emu)
    emu.set_faults({})
    # The server is none the worse for it.
    body = submit(http, emu.base_url, {"prompt": "x"}).json()
    assert wait_terminal(http, body["polling_url"])["status"] == "Ready"
    stats = emu.stats()
    assert stats["faults_injected"] == {"disconnect": 2}
    assert stats["submits"] == 1


def test_request_moderation_is_immediate_and_takes_no_slot(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults({"request-moderated": 1.0})
    body = submit(http, emu.base_url, {"prompt": "x"}).json()
    poll = http.get(body["polling_url"]).json()
    assert poll["status"] == "Request Moderated"
    assert poll["result"] is None
    assert isinstance(poll["details"]["Moderation Reasons"], list)
    assert poll["details"]["Moderation Reasons"]
    stats = emu.stats()
    assert stats["final_status"] == {"Request Moderated": 1}
    assert stats["faults_injected"] == {"request-moderated": 1}
    assert all(counts["total"] == 0 for counts in stats["active"].values())


@pytest.mark.parametrize(
    ("kind", "status", "detail_key"),
    [("content-moderated", "Content Moderated", "Moderation Reasons"), ("error", "Error", "message")],
)
def test_outcome_faults_turn_terminal_at_ready_time(
    http: httpx.Client, kind: str, status: str, detail_key: str
) -> None:
    with Emulator(fast_config(faults={kind: 1.0}, time_scale=0.5)) as emu:  # tasks take 1 s
        body = submit(http, emu.base_url, {"prompt": "x"}).json()
        assert http.get(body["polling_url"]).json()["status"] == "Pending"
        final = wait_terminal(http, body["polling_url"])
        stats = emu.stats()
    assert final["status"] == status
    assert final["result"] is None
    assert final["details"][detail_key]
    assert stats["final_status"] == {status: 1}
    assert stats["faults_injected"] == {kind: 1}


def test_fault_rates_are_rates(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults({"500": 0.5})
    codes = [_poll(http, emu).status_code for _ in range(200)]
    assert 60 < codes.count(500) < 140
    assert set(codes) == {200, 500}
    assert emu.stats()["faults_injected"]["500"] == codes.count(500)


@pytest.mark.parametrize("faults", [{"teapot": 0.5}, {"500": 1.5}, {"500": -0.1}])
def test_bad_fault_settings_are_refused(emu: Emulator, faults: dict[str, float]) -> None:
    with pytest.raises(httpx.HTTPStatusError) as info:
        emu.set_faults(faults)
    assert info.value.response.status_code in (400, 422)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("marker", "status"),
    [
        ("request-moderated", "Request Moderated"),
        ("content-moderated", "Content Moderated"),
        ("error", "Error"),
    ],
)
def test_prompt_markers_pin_a_rows_outcome(marker: str, status: str) -> None:
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(0.05)})) as emu, httpx.Client() as c:
        sub = c.post(
            f"{emu.base_url}/v1/flux-kontext-pro",
            headers={"x-key": "k"},
            json={"prompt": f"[emulator:{marker}] a red shoe"},
        ).json()
        plain = c.post(f"{emu.base_url}/v1/flux-kontext-pro", headers={"x-key": "k"}, json={"prompt": "a red shoe"})
        time.sleep(0.2)
        assert c.get(sub["polling_url"]).json()["status"] == status
        assert c.get(plain.json()["polling_url"]).json()["status"] == "Ready"
