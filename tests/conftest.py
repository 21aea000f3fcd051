"""Shared fixtures: real Redis (db 15, flushed), real emulator, real S3 (moto server), real workers.

A test that needs a service it cannot reach is skipped locally and fails when ``CI`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tests.s3_server import http_server, s3_server, s3_url  # noqa: F401 - fixtures

TEST_REDIS_URL = os.environ.get("KONTEXT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where every service must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"required service unavailable in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        unavailable(f"Redis at {TEST_REDIS_URL}: {exc}")
    client.flushdb()
    try:
        yield TEST_REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
