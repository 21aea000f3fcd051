"""The webhook receiver: the API announces a task's end here, and the row completes without polling.

    POST {KONTEXT_WEBHOOK_URL}?job=RUN:ROW    X-Webhook-Secret: <the run's secret>

A run started with ``KONTEXT_WEBHOOK_URL`` gets a secret of its own; each submit carries the URL
(naming its job) and the secret, and the API sends the secret back. The receiver checks it against
the run's (constant time), checks that the body announces the end of the job's *current* task,
keeps the outcome on the job and sends the job's next step, which stores the sample as a poll would.
A delivery that never comes is covered by a fallback poll timed from the latencies seen.

What changes nothing (and is answered 200, so the API does not retry it): a duplicate, a delivery
for an earlier task of the row, one for a row already final, one that is not terminal. Refused with
403: a wrong or missing secret. 400: a body that is not a webhook. The receiver never reads more
than ``MAX_BODY_BYTES`` and holds no API key.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from kontext_batch.api.webhook import parse_webhook
from kontext_batch.coord.keys import split_job_ref
from kontext_batch.errors import KontextBatchError
from kontext_batch.runtime import Runtime

__all__ = ["MAX_BODY_BYTES", "WebhookReceiver", "accept_webhook"]

log = logging.getLogger("kontext_batch.webhooks")
MAX_BODY_BYTES: Final = 1_000_000


def accept_webhook(rt: Runtime, ref: str, secret: str | None, body: bytes) -> HTTPStatus:
    """Handle one delivery for job ``ref``; the HTTP status to answer."""
    try:
        run_id, _ = split_job_ref(ref)
    except ValueError:
        return HTTPStatus.BAD_REQUEST
    expected = rt.runs.recent_meta(run_id).get("webhook_secret", "")  # set once, when the run starts
    if not expected or not secret or not hmac.compare_digest(expected.encode(), secret.encode()):
        return HTTPStatus.FORBIDDEN
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            return HTTPStatus.BAD_REQUEST
        result = parse_webhook(doc)  # a body without a task id is refused here
    except (ValueError, KontextBatchError):
        return HTTPStatus.BAD_REQUEST
    if not result.status.terminal:
        return HTTPStatus.OK  # a progress note: nothing we act on
    grant = rt.jobs.webhook_arrived(ref, result.id, json.dumps(doc, separators=(",", ":")))
    if grant is not None:
        rt.scheduler.poll(grant.ref, grant.token, grant.fp)
    return HTTPStatus.OK


class WebhookReceiver:
    """A small threaded HTTP server for :func:`accept_webhook`. ``with WebhookReceiver(rt, port):``."""

    def __init__(self, rt: Runtime, port: int, host: str = "127.0.0.1") -> None:
        self.server = ThreadingHTTPServer((host, port), _handler(rt))
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="kontext-webhooks", daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _handler(rt: Runtime) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:  # read(-1) would read until the sender stops: no limit at all
                self._answer(HTTPStatus.BAD_REQUEST)
                return
            if length > MAX_BODY_BYTES:
                self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                return
            body = self.rfile.read(length)
            ref = (parse_qs(urlsplit(self.path).query).get("job") or [""])[0]
            try:
                status = accept_webhook(rt, ref, self.headers.get("X-Webhook-Secret"), body)
            except Exception:  # a Redis hiccup: 503 makes the API deliver again
                log.warning("webhook for %s could not be handled", ref, exc_info=True)
                status = HTTPStatus.SERVICE_UNAVAILABLE
            self._answer(status)

        def _answer(self, status: HTTPStatus) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt: str, *args: Any) -> None:  # the query names jobs only; keep it at DEBUG
            log.debug("webhook %s", fmt % args)

    return Handler
