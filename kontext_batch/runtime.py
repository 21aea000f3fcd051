"""What a worker process holds for its whole life: settings, one Redis pool, one API client, stores.

Created once per process (the worker's start, or the CLI's) and passed down; nothing below reads the
environment again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from kontext_batch.api.provider import KontextProvider, make_provider
from kontext_batch.gate import Gate, SlotGate
from kontext_batch.keys import Keys
from kontext_batch.manifest.staging import PayloadCache
from kontext_batch.polling import PollPlanner
from kontext_batch.ratelimit import SubmitRateLimiter
from kontext_batch.redisconn import tls_options
from kontext_batch.runs import RunStore
from kontext_batch.settings import Settings
from kontext_batch.storage import ObjectStore, open_store

__all__ = ["Runtime", "Scheduler", "connect_redis"]


class Scheduler(Protocol):
    """Sends the next step of a job. Celery implements it; tests may record calls."""

    def submit(self, ref: str, token: int, *, countdown_s: float = 0.0) -> None: ...

    def poll(self, ref: str, token: int, *, countdown_s: float = 0.0) -> None: ...


def connect_redis(url: str, *, tls: Mapping[str, Any] | None = None) -> redis.Redis:
    """A pooled client that rides out a Redis restart: reconnects with backoff for ~30 s.

    ``tls`` holds the ``rediss://`` options (:func:`kontext_batch.redisconn.tls_options`). redis-py
    retries a wrong password too (it is a ConnectionError), so callers that must fail fast check
    first with :func:`kontext_batch.redisconn.check_redis`.
    """
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_connect_timeout=5,
        socket_timeout=30,
        **(tls or {}),
    )


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    scheduler: Scheduler
    provider: KontextProvider
    keys: Keys = field(default_factory=Keys)
    planner: PollPlanner = field(default_factory=PollPlanner)
    payloads: PayloadCache = field(default_factory=PayloadCache)
    _stores: dict[str, ObjectStore] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.gate = SlotGate(self.redis, self.keys, lease_s=self.settings.lease_s)
        self.runs = RunStore(self.redis, self.keys)
        self.submit_rate = SubmitRateLimiter(self.redis, self.keys.submit_rate, self.settings.submits_per_s)

    @classmethod
    def create(cls, settings: Settings, scheduler: Scheduler, *, provider: KontextProvider | None = None) -> Runtime:
        s = settings
        return cls(
            settings=s,
            redis=connect_redis(s.effective_redis_url, tls=tls_options(s)),
            scheduler=scheduler,
            provider=provider or make_provider(s),
            planner=PollPlanner.from_settings(s),
        )

    def gate_for(self, endpoint: str) -> Gate:
        return Gate(
            fp=self.settings.api_key.fingerprint,
            endpoint=endpoint,
            cap=self.settings.cap_for(endpoint),
            cap_total=self.settings.max_active,
        )

    def gate_by_id(self, gate_id: str) -> Gate:
        fp, _, endpoint = gate_id.partition("|")
        return Gate(fp=fp, endpoint=endpoint, cap=self.settings.cap_for(endpoint), cap_total=self.settings.max_active)

    def store(self, url: str) -> ObjectStore:
        with self._lock:
            if url not in self._stores:
                self._stores[url] = open_store(url)
            return self._stores[url]

    def close(self) -> None:
        self.provider.close()
        self.redis.close()
