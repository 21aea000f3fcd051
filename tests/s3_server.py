"""Real servers on loopback for storage tests: moto's S3 in its own process, and a tiny HTTP server.

Fixtures (import them into conftest.py: ``from tests.s3_server import s3_server, s3_url, http_server``):

``s3_server``    session: starts ``python -m moto.server`` on a free port, yields its endpoint URL.
``s3_url``       function: a fresh empty bucket; sets AWS_* (test credentials, region, endpoint,
                 AWS_ALLOW_HTTP) through monkeypatch for this test only; yields ``s3://<bucket>``.
``http_server``  function: a threaded HTTP server; yields (base URL, routes) where ``routes`` maps a
                 path to (status, body).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import httpx
import pytest

__all__ = [
    "TEST_CREDENTIALS",
    "closed_port_url",
    "create_bucket",
    "http_server",
    "s3_server",
    "s3_url",
    "start_moto",
]

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's S3 server process; return it and its endpoint once it answers HTTP."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1.0)
            return proc, endpoint
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.05)


def create_bucket(endpoint: str, bucket: str | None = None) -> str:
    """Create a bucket (a fresh random name by default) and return its name."""
    name = bucket or f"test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=TEST_CREDENTIALS["AWS_REGION"],
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server over real HTTP; yields the endpoint (``http://127.0.0.1:PORT``)."""
    proc, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_url(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on ``s3_server`` with the AWS_* environment pointing at it; ``s3://bucket``."""
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    return f"s3://{create_bucket(s3_server)}"


class _Routes(dict[str, tuple[int, bytes]]):
    """path -> (status, body) for :func:`http_server`; unknown paths answer 404."""


@pytest.fixture
def http_server() -> Iterator[tuple[str, _Routes]]:
    """A plain HTTP server on 127.0.0.1 in a thread; yields (base URL, routes to fill in)."""
    routes = _Routes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = routes.get(self.path.split("?")[0], (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url(path: str = "/x.png") -> str:
    """An http URL on a loopback port nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{_free_port()}{path}"
