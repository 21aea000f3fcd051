"""The Redis broker transport, with one repair for surviving a Redis restart.

kombu 5.x (seen with 5.7.0): after the broker connection drops and Celery reconnects, the old
channel is still used twice: closing it re-queues unacked messages, and a task that finishes later
acks its message on it. Both build a Redis client from a transport already torn down
(``connection.client`` is None), raise AttributeError, and the worker exits ("Unrecoverable
error"). Here the channel says what that is, a connection error, which kombu already handles on
both paths (close ignores it; ack logs it). The messages concerned stay unacked in Redis and come
back after ``visibility_timeout``; by then their fencing tokens are stale, and the sweeper will have
re-driven any job that still needed them after ``KONTEXT_LEASE_S``.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["Transport"]


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    def _connparams(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("this broker channel's connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel
