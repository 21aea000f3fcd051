"""The schedules on which a worker tries Redis again after losing it: the broker consumer's
(workers/reconnect.py) and the state client's (kontext_batch.runtime.connect_redis).

Both must come back soon after a short restart (~2 s) and space their tries out in a long outage.
The real restart is in tests/test_broker_reconnect.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from kombu.utils.functional import fxrange

from kontext_batch.runtime import connect_redis
from kontext_batch.workers.reconnect import RECONNECT_SCHEDULE, Connection


def _tries_after_loss(start: float, step: float, cap: float, n: int) -> list[float]:
    """When kombu's ``retry_over_time`` tries, from the loss: at once, then after each interval."""
    waits = (min(v, cap) for v in fxrange(start, cap + start, step, repeatlast=True))
    return [0.0, *itertools.accumulate(itertools.islice(waits, n - 1))]


def test_the_worker_app_connects_with_the_reconnect_schedule() -> None:
    from kontext_batch.workers.app import app  # noqa: PLC0415 - importing the app configures it

    conn = app.connection_for_read()
    try:
        assert isinstance(conn, Connection)
        for key, value in RECONNECT_SCHEDULE.items():
            assert conn.transport_options[key] == value
    finally:
        conn.release()


def test_ensure_connection_passes_the_schedule_celery_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(self: Connection, *args: Any, **kwargs: Any) -> None:
        seen.update(kwargs, args=args)

    monkeypatch.setattr(Connection, "_ensure_connection", fake)
    conn = Connection("memory://", transport_options=dict(RECONNECT_SCHEDULE))
    errback = object()
    conn.ensure_connection(errback, None, callback=None)  # as Celery's consumer calls it
    assert seen["args"] == (errback, None)
    assert {k: seen[k] for k in RECONNECT_SCHEDULE} == RECONNECT_SCHEDULE
    conn.ensure_connection(interval_start=7)  # a caller's own interval wins
    assert seen["interval_start"] == 7
    seen.clear()
    Connection("memory://").ensure_connection()  # no options: kombu's defaults, untouched
    assert not set(seen) & set(RECONNECT_SCHEDULE)


def test_the_broker_schedule_catches_a_short_restart_and_backs_off_in_a_long_one() -> None:
    s = RECONNECT_SCHEDULE
    tries = _tries_after_loss(s["interval_start"], s["interval_step"], s["interval_max"], 40)
    # A restart that is back 2.0-2.4 s after the loss is found by 2.5 s (kombu's own: 6 s).
    assert any(2.0 <= t <= 2.5 for t in tries)
    # No hot loop: never more than 4 tries a second, and at most 1 per 5 s once backed off.
    assert min(b - a for a, b in itertools.pairwise(tries)) >= 0.25
    assert tries[-1] - tries[-2] == s["interval_max"] == 5.0
    assert sum(1 for t in tries if t <= 60) <= 25


def test_the_state_client_retries_every_half_second_for_half_a_minute() -> None:
    r = connect_redis("redis://127.0.0.1:9/0")  # lazy: nothing connects
    try:
        retry = r.get_retry()
        assert retry is not None
        waits = [retry._backoff.compute(i) for i in range(1, retry._retries + 1)]
    finally:
        r.close()
    # Every thread waiting on a restart is back within 0.5 s of Redis (it was 2 s: a 2 s restart
    # held the steps and the delay pump until 3.1 s after the loss).
    assert max(waits) == 0.5
    assert min(waits) >= 0.05  # no hot loop
    assert 25 <= sum(waits) <= 45  # rides out ~30 s, as before
