"""The reseller dialect under /reseller/v1: Bearer auth, task objects, the same engine and limits.

Given an emulator, when a client creates a task with ``model: flux_kontext_max`` and polls
``/reseller/v1/tasks/{id}``, then it sees pending/processing, then completed with an image URL and
a USD cost, or failed with an error code; the same key's BFL and reseller tasks share one cap.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from kontext_batch.emulator import Emulator
from kontext_batch.secret import Secret
from tests.emulator_fixtures import KEY, emu, fast_config, http, image_b64, slow_config, submit

__all__ = ["emu", "http"]  # fixtures used by name

HANG_GUARD_S = 30.0


def create(client: httpx.Client, base_url: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return client.post(f"{base_url}/reseller/v1/tasks", headers=headers, json=body)


def get(client: httpx.Client, base_url: str, task_id: str) -> httpx.Response:
    return client.get(f"{base_url}/reseller/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {KEY}"})


def wait_done(client: httpx.Client, base_url: str, task_id: str) -> tuple[dict[str, Any], set[str]]:
    seen: set[str] = set()
    give_up = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < give_up:
        body: dict[str, Any] = get(client, base_url, task_id).json()
        seen.add(body["status"])
        if body["status"] in ("completed", "failed"):
            return body, seen
        time.sleep(0.01)
    pytest.fail("reseller task never finished")


@pytest.mark.parametrize(
    ("model", "cost", "fmt", "pil"),
    [("flux_kontext_max", "0.08", None, "JPEG"), ("flux_kontext_pro", "0.04", "png", "PNG")],
)
def test_a_task_runs_to_completed_with_an_image_and_a_usd_cost(
    emu: Emulator, http: httpx.Client, model: str, cost: str, fmt: str | None, pil: str
) -> None:
    body: dict[str, Any] = {
        "model": model,
        "prompt": "a lighthouse at dusk",
        "input_image": image_b64(),
        "seed": 4,
        "aspect_ratio": "3:2",
        "steps": 28,
        "guidance_scale": 3.5,
        "negative_prompt": "blurry",
    }
    if fmt:
        body["output_format"] = fmt
    resp = create(http, emu.base_url, body)
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert created["status"] == "pending"
    assert created["model"] == model

    done, seen = wait_done(http, emu.base_url, created["id"])
    assert seen <= {"pending", "processing", "completed"}
    assert done["status"] == "completed"
    assert done["model"] == model
    assert done["usage"] == {"cost": cost, "discount": 0}
    assert done["metadata"] == {}
    assert "error" not in done
    [content] = done["output"][0]["content"]
    assert content["type"] == "image"
    img = Image.open(io.BytesIO(http.get(content["url"]).content))
    assert img.format == pil
    assert img.size == (1248, 832)


def test_a_pending_task_carries_no_output_or_usage(http: httpx.Client) -> None:
    with Emulator(slow_config()) as emu:
        created = create(http, emu.base_url, {"model": "flux_kontext_pro", "prompt": "x"}).json()
        body = get(http, emu.base_url, created["id"]).json()
    assert body["status"] == "pending"
    assert set(body) == {"id", "model", "status", "metadata"}


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("request-moderated", "request_moderated"),
        ("content-moderated", "content_moderated"),
        ("error", "generation_failed"),
    ],
)
def test_failures_carry_an_error_code(http: httpx.Client, kind: str, code: str) -> None:
    with Emulator(fast_config(faults={kind: 1.0})) as emu:
        created = create(http, emu.base_url, {"model": "flux_kontext_max", "prompt": "x"}).json()
        done, _ = wait_done(http, emu.base_url, created["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == code
    assert isinstance(done["error"]["message"], str)
    assert "output" not in done
    assert "usage" not in done


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}, {"x-key": KEY}],
    ids=["none", "wrong", "not-bearer", "x-key-only"],
)
def test_a_missing_or_wrong_bearer_key_is_401(emu: Emulator, http: httpx.Client, headers: dict[str, str]) -> None:
    body = {"model": "flux_kontext_max", "prompt": "x"}
    resp = http.post(f"{emu.base_url}/reseller/v1/tasks", headers=headers, json=body)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"
    assert isinstance(resp.json()["error"]["message"], str)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "flux_kontext_ultra"),
        ("steps", 0),
        ("steps", 51),
        ("guidance_scale", 0.5),
        ("guidance_scale", 10.5),
        ("output_format", "webp"),
        ("safety_tolerance", 7),
        ("aspect_ratio", "3:1"),
        ("prompt", None),
    ],
)
def test_invalid_bodies_are_422_like_fastapi(emu: Emulator, http: httpx.Client, field: str, value: Any) -> None:
    body = {"model": "flux_kontext_max", "prompt": "x", field: value}
    resp = create(http, emu.base_url, body)
    assert resp.status_code == 422
    assert ["body", field] in [e["loc"] for e in resp.json()["detail"]]


def test_an_unknown_task_is_404_with_an_error_object(emu: Emulator, http: httpx.Client) -> None:
    resp = get(http, emu.base_url, "no-such-task")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_bfl_and_reseller_tasks_of_one_key_share_the_caps(http: httpx.Client) -> None:
    with Emulator(slow_config()) as emu:
        for _ in range(4):
            assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").status_code == 200
        for _ in range(2):
            assert create(http, emu.base_url, {"model": "flux_kontext_max", "prompt": "x"}).status_code == 200
        over = create(http, emu.base_url, {"model": "flux_kontext_max", "prompt": "x"})
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "rate_limited"
        assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").status_code == 429
        stats = emu.stats()
    assert stats["peak_active"][Secret(KEY).fingerprint]["flux-kontext-max"] == 6
    assert stats["rejected_429"] == 2


def test_reseller_credits_run_out_with_402(http: httpx.Client) -> None:
    with Emulator(fast_config(credits=8.0)) as emu:
        assert create(http, emu.base_url, {"model": "flux_kontext_max", "prompt": "x"}).status_code == 200
        short = create(http, emu.base_url, {"model": "flux_kontext_pro", "prompt": "x"})
        assert short.status_code == 402
        assert short.json()["error"]["code"] == "insufficient_credits"


def test_reseller_tasks_are_not_visible_on_get_result(emu: Emulator, http: httpx.Client) -> None:
    created = create(http, emu.base_url, {"model": "flux_kontext_pro", "prompt": "x"}).json()
    for host in ("127.0.0.1", "localhost"):
        poll = http.get(f"http://{host}:{emu.port}/v1/get_result", params={"id": created["id"]})
        assert poll.json()["status"] == "Task not found"
