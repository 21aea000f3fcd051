"""Webhooks: when a task with webhook_url turns terminal, its outcome is POSTed there.

Given a tiny local receiver, when a task is submitted with webhook_url and webhook_secret, then the
receiver gets one POST with the secret in X-Webhook-Secret and the payload in the configured form,
and the submit answer still carries a polling_url for clients that fall back to polling.
"""

from __future__ import annotations

import io
import time
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from kontext_batch.emulator import Emulator
from tests.emulator_fixtures import WebhookReceiver, fast_config, http, submit, wait_terminal, webhook_receiver

__all__ = ["http", "webhook_receiver"]  # fixtures used by name


def test_bfl_form_with_secret_header(http: httpx.Client, webhook_receiver: WebhookReceiver) -> None:
    with Emulator(fast_config()) as emu:
        body = {"prompt": "a cat", "seed": 11, "webhook_url": webhook_receiver.url, "webhook_secret": "s3cret"}
        resp = submit(http, emu.base_url, body)
        assert resp.status_code == 200
        answer = resp.json()
        assert answer["status"] == "Pending"
        assert answer["webhook_url"] == webhook_receiver.url
        assert {"id", "polling_url", "cost"} <= set(answer)

        [(headers, payload)] = webhook_receiver.wait_for(1)
        assert headers["x-webhook-secret"] == "s3cret"
        assert headers["content-type"] == "application/json"
        assert set(payload) == {"id", "status", "result", "details", "timestamp"}
        assert payload["id"] == answer["id"]
        assert payload["status"] == "Ready"
        assert payload["result"]["seed"] == 11
        assert payload["result"]["prompt"] == "a cat"
        assert isinstance(payload["timestamp"], int)
        # The sample URL in the webhook downloads, and polling agrees with the webhook.
        sample = http.get(payload["result"]["sample"])
        assert sample.status_code == 200
        assert Image.open(io.BytesIO(sample.content)).size == (1024, 1024)
        assert wait_terminal(http, answer["polling_url"])["status"] == "Ready"
        assert emu.stats()["webhooks_sent"] == 1


def test_alt_form_reports_success_and_failure(http: httpx.Client, webhook_receiver: WebhookReceiver) -> None:
    with Emulator(fast_config(webhook_form="alt")) as emu:
        ok = submit(http, emu.base_url, {"prompt": "x", "webhook_url": webhook_receiver.url}).json()
        webhook_receiver.wait_for(1)
        emu.set_faults({"content-moderated": 1.0})
        bad = submit(http, emu.base_url, {"prompt": "y", "webhook_url": webhook_receiver.url}).json()
        received = webhook_receiver.wait_for(2)
    by_id = {payload["task_id"]: (headers, payload) for headers, payload in received}
    headers, success = by_id[ok["id"]]
    assert "x-webhook-secret" not in headers, "no secret given, none sent"
    assert set(success) == {"task_id", "status", "result", "error", "progress"}
    assert success["status"] == "SUCCESS"
    assert success["error"] is None
    assert urlsplit(success["result"]["sample"]).path.endswith("/sample.png")
    _, failure = by_id[bad["id"]]
    assert failure["status"] == "FAILED"
    assert failure["result"] is None
    assert "Content Moderated" in failure["error"]


def test_request_moderation_is_announced_at_once(http: httpx.Client, webhook_receiver: WebhookReceiver) -> None:
    with Emulator(fast_config(faults={"request-moderated": 1.0})) as emu:
        submit(http, emu.base_url, {"prompt": "x", "webhook_url": webhook_receiver.url})
        [(_, payload)] = webhook_receiver.wait_for(1)
    assert payload["status"] == "Request Moderated"
    assert payload["result"] is None
    assert payload["details"]["Moderation Reasons"]


@pytest.mark.parametrize("form", ["bfl", "alt"])
def test_an_unreachable_webhook_is_counted_as_failed(http: httpx.Client, form: str) -> None:
    with Emulator(fast_config(webhook_form=form)) as emu:
        body = submit(http, emu.base_url, {"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"}).json()
        assert wait_terminal(http, body["polling_url"])["status"] == "Ready"
        for _ in range(200):
            if emu.stats(tasks=False)["webhooks_failed"]:
                break
            time.sleep(0.02)
        assert emu.stats(tasks=False)["webhooks_failed"] == 1
