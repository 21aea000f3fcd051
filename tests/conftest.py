"""Shared fixtures: real Redis (db 15, flushed), real emulator, real S3 (moto server), real workers.

A test that needs a service it cannot reach is skipped locally and fails when ``CI`` is set.

Every test gets one tier marker here (unit, integration, e2e or faults; see tests/tier_support.py),
so ``pytest -m unit`` selects the tests that need no service, and a test that uses more than its
tier allows fails, saying which tier to give it.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest
import redis

from tests.s3_server import http_server, s3_server, s3_url  # noqa: F401 - fixtures
from tests.tier_support import Watch, assign, tier_of

TEST_REDIS_URL = os.environ.get("KONTEXT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

_WATCH = pytest.StashKey[Watch]()
_REPORTED = pytest.StashKey[int]()


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where every service must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"required service unavailable in CI: {reason}")
    pytest.skip(reason)


# -- tiers ----------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the markers it selects on are added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    assign(items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None]:
    watch = Watch(tier_of(item))
    item.stash[_WATCH] = watch
    item.stash[_REPORTED] = 0
    with watch.installed():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport]:
    """Fail the phase (setup, call, teardown) in which the test went beyond its tier."""
    outcome = yield
    report = outcome.get_result()
    watch = item.stash.get(_WATCH, None)
    if watch is None or len(watch.seen) == item.stash[_REPORTED]:
        return
    new = watch.seen[item.stash[_REPORTED] :]
    item.stash[_REPORTED] = len(watch.seen)
    if not report.failed:  # a skip too: a test that skips after starting a server is still in the wrong tier
        report.outcome = "failed"
        report.longrepr = watch.report(new)


# -- services -------------------------------------------------------------------------------------


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
