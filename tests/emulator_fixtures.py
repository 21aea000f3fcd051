"""Shared helpers and fixtures for the emulator's tests: configs, images, polling, a webhook receiver.

Import the fixtures by name in a test module (``from tests.emulator_fixtures import emu, ...``) or from
``conftest.py``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec

__all__ = [
    "KEY",
    "OTHER_KEY",
    "WebhookReceiver",
    "emu",
    "fast_config",
    "http",
    "image_b64",
    "image_bytes",
    "slow_config",
    "submit",
    "wait_terminal",
    "webhook_receiver",
]

KEY = "emu-test-KEY-9f3a1c-do-not-log"
OTHER_KEY = "emu-test-KEY-wrong"
#: Guards against a hang; never asserted as a timing.
HANG_GUARD_S = 30.0


def fast_config(**overrides: Any) -> EmulatorConfig:
    """Tasks take 0.1 s (2 s * 0.05); a sample URL lives 30 s."""
    base: dict[str, Any] = {
        "api_keys": (KEY,),
        "latency": {"*": LatencySpec.fixed(2.0)},
        "time_scale": 0.05,
        "seed": 7,
    }
    return EmulatorConfig(**{**base, **overrides})


def slow_config(**overrides: Any) -> EmulatorConfig:
    """Tasks stay active for an hour: caps fill without completions racing the test."""
    return fast_config(latency={"*": LatencySpec.fixed(3600.0)}, time_scale=1.0, **overrides)


def image_bytes(
    size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG"
) -> bytes:
    img = Image.new("RGB", size, colour)
    # A little structure so crops and resizes are visible in the output.
    img.paste((20, 20, 220), (0, 0, size[0] // 2, size[1] // 2))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def image_b64(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> str:
    return base64.b64encode(image_bytes(size, colour)).decode()


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    """One fast emulator per module; tests that need other settings start their own."""
    with Emulator(fast_config()) as emulator:
        yield emulator


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def submit(
    client: httpx.Client, base_url: str, body: dict[str, Any], endpoint: str = "flux-kontext-pro", key: str = KEY
) -> httpx.Response:
    return client.post(f"{base_url}/v1/{endpoint}", headers={"x-key": key}, json=body)


def wait_terminal(client: httpx.Client, polling_url: str, key: str = KEY) -> dict[str, Any]:
    """Poll ``polling_url`` until the status is not Pending; fails the test after HANG_GUARD_S."""
    give_up = time.monotonic() + HANG_GUARD_S
    while True:
        resp = client.get(polling_url, headers={"x-key": key})
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["status"] != "Pending":
            return body
        if time.monotonic() > give_up:
            pytest.fail(f"task still Pending after {HANG_GUARD_S} s")
        time.sleep(0.02)


@dataclass
class WebhookReceiver:
    """A tiny HTTP server on 127.0.0.1 that records every POST (headers and JSON body)."""

    url: str
    received: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout_s: float = HANG_GUARD_S) -> list[tuple[dict[str, str], Any]]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout_s):
                pytest.fail(f"only {len(self.received)} of {count} webhooks arrived")
            return list(self.received)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"null")
            with receiver.arrived:
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                receiver.arrived.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
