"""What a worker process holds for its whole life: settings, one Redis pool, an API client per key, stores.

Created once per process (the worker's start, or the CLI's) and passed down. Settings are read from
the environment once, before; only the object-store library reads its own credential variables
(``AWS_*``, ``GOOGLE_*``, ``AZURE_*``) when a store is first opened.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import redis
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from kontext_batch.coord.address import make_client
from kontext_batch.coord.budget import Budget
from kontext_batch.coord.connection import tls_options
from kontext_batch.coord.holders import Holders, KeyCaps, new_process_id
from kontext_batch.coord.jobs import Jobs
from kontext_batch.coord.keys import Keys
from kontext_batch.coord.latencies import LatencyLog
from kontext_batch.coord.pools import Pools
from kontext_batch.coord.ratelimit import SubmitRateLimiter
from kontext_batch.coord.replicas import ReplicaGuard
from kontext_batch.coord.runs import RunStore
from kontext_batch.coord.slots import Slots
from kontext_batch.errors import KeyNotHeld
from kontext_batch.io.payload import PayloadCache
from kontext_batch.io.stores import ObjectStore, open_store
from kontext_batch.settings import Settings
from kontext_batch.steps.timing import PollPlanner

if TYPE_CHECKING:
    # The API clients (httpx, tenacity) load on a key's first use: the
    # CLI's ``run`` never calls the API, and they were ~155 ms of its ~375 ms of imports.
    from kontext_batch.api._http import TransportWrapper
    from kontext_batch.api.provider import KontextProvider

__all__ = ["Runtime", "Scheduler", "connect_redis"]


class Scheduler(Protocol):
    """Sends the next step of a job to a worker holding key ``fp``. Celery implements it; tests may
    record calls."""

    def submit(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None: ...

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None: ...


#: How the state client rides out a Redis restart: a command that fails is tried again 0.1, 0.3 and
#: 0.7 s later, then every 0.5 s, ~34 s in all. The cap is short because every step thread, the
#: sweeper and the delay pump wait in this loop: with the 2 s cap it had, a 2 s restart held them
#: until 3.1 s after the loss (tries at 1.5 s, Redis not yet back, then 3.1 s). A try is one connect
#: that fails at once (refused) or after ``socket_connect_timeout``: no hot loop, and no log line.
RETRY_BACKOFF_CAP_S = 0.5
RETRIES = 70


def connect_redis(url: str, *, tls: Mapping[str, Any] | None = None) -> redis.Redis:
    """A pooled client that rides out a Redis restart: reconnects with backoff for ~30 s.

    ``tls`` holds the ``rediss://`` options (:func:`kontext_batch.coord.connection.tls_options`). redis-py
    retries a wrong password too (it is a ConnectionError), so callers that must fail fast check
    first with :func:`kontext_batch.coord.connection.check_redis`.
    """
    return make_client(
        url,
        retry=Retry(ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=0.05), retries=RETRIES),
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
    keys: Keys = field(default_factory=Keys)
    planner: PollPlanner = field(default_factory=PollPlanner)
    payloads: PayloadCache = field(default_factory=PayloadCache)
    #: A fixed provider for every key (tests inject one); None: one per held key, made on first use.
    provider: KontextProvider | None = None
    proc_id: str = field(default_factory=new_process_id)
    #: Wraps each key's client transports (the workers' metrics); the URL and address checks stay.
    transport_wrapper: TransportWrapper | None = field(default=None, repr=False)
    _providers: dict[str, KontextProvider] = field(default_factory=dict, repr=False)
    _stores: dict[str, ObjectStore] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.pools = Pools(self.redis, self.keys)
        self.slots = Slots(self.redis, self.keys, lease_s=s.lease_s, grace_s=s.step_grace_s)
        self.jobs = Jobs(
            self.redis, self.keys, lease_s=s.lease_s, grace_s=s.step_grace_s, step_deadline_s=s.step_deadline_s
        )
        self.runs = RunStore(self.redis, self.keys)
        self.holders = Holders(self.redis, self.keys)
        self.budget = Budget(self.redis, self.keys)
        self.submit_rate = SubmitRateLimiter(self.redis, self.keys.submit_rate, s.submits_per_s)
        self.held = {k.fingerprint: k for k in s.held_keys}
        self.replicas = ReplicaGuard(self.redis, self.keys.replica_probe(self.proc_id))
        self.latencies = LatencyLog(self.redis, self.keys, window=self.planner.window)

    @classmethod
    def create(
        cls,
        settings: Settings,
        scheduler: Scheduler,
        *,
        provider: KontextProvider | None = None,
        redis_client: Redis | None = None,
    ) -> Runtime:
        s = settings
        return cls(
            settings=s,
            redis=redis_client or connect_redis(s.effective_redis_url, tls=tls_options(s)),
            scheduler=scheduler,
            provider=provider,
            planner=PollPlanner.from_settings(s),
        )

    def provider_for(self, fp: str) -> KontextProvider:
        """The API client of one held key; raises KeyNotHeld for a key this process does not hold."""
        if self.provider is not None:
            return self.provider
        with self._lock:
            found = self._providers.get(fp)
            if found is None:
                key = self.held.get(fp)
                if key is None:
                    raise KeyNotHeld(f"this process holds no API key with fingerprint {fp}")
                # One attempt per call: the pipeline reschedules retryable failures itself, so a step
                # never stacks the client's retries on top of its own (and never sleeps in them).
                from kontext_batch.api.provider import make_provider  # noqa: PLC0415 - see TYPE_CHECKING above

                found = self._providers[fp] = make_provider(
                    self.settings, key.secret, retry=None, wrap_transport=self.transport_wrapper
                )
            return found

    @property
    def output_formats(self) -> tuple[str, ...]:
        """What ``output_format`` may ask the configured provider for."""
        from kontext_batch.api.provider import output_formats_of  # noqa: PLC0415 - see TYPE_CHECKING above

        return output_formats_of(self.settings.provider)

    def key_caps(self) -> dict[str, KeyCaps]:
        """The caps of every held key, as this process announces them in its heartbeat."""
        s = self.settings
        return {fp: KeyCaps(s.cap_total(k), {**s.max_active_models, **k.caps}) for fp, k in self.held.items()}

    def beat(self) -> None:
        """Say this process is alive and holds its keys (a worker calls it about every second)."""
        self.holders.beat(self.proc_id, self.key_caps())

    def store(self, url: str) -> ObjectStore:
        with self._lock:
            if url not in self._stores:
                self._stores[url] = open_store(url)
            return self._stores[url]

    def close(self) -> None:
        for p in [*self._providers.values(), *([self.provider] if self.provider else [])]:
            p.close()
        self.redis.close()
