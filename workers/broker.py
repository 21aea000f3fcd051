"""The Redis broker transport, with one repair for surviving a Redis restart.

kombu 5.x (seen with 5.7.0): after the broker connection drops and Celery reconnects, the old
channel is still used twice: closing it re-queues unacked messages, and a task that finishes later
acks its message on it. Both build a Redis client from a transport already torn down
(``connection.client`` is None), raise AttributeError, and the worker exits ("Unrecoverable
error"). Here the channel says what that is, a connection error, which kombu already handles on
both paths (close ignores it; ack logs it). The messages concerned are not handed back (there is no
ack emulation in Redis: workers/config.py); the sweeper re-drives any job that still needed them,
with a new fencing token.

It also reuses one Redis client per channel for publishes and acks, where kombu builds a new one
each time (see :meth:`Channel.conn_or_acquire`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["SentinelTransport", "Transport"]


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    def _connparams(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("this broker channel's connection is closed")
        return super()._connparams(asynchronous=asynchronous)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new redis.Redis (filling its ~300-entry callback table) for every publish,
        # ack and event: about 2 ms of CPU per job. One client over the same pool does the same work.
        if client:
            yield client
            return
        with self._sync_lock:
            if self._sync_client is None:
                self._sync_client = self._create_client()
            shared = self._sync_client
        yield shared

    _sync_client: Any = None
    _sync_lock = threading.Lock()


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """The same repairs over kombu's Sentinel channel (``redis+sentinel://``: coord/address.py)."""


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel
