"""Whether a Redis is one to trust with runs: the eviction policy and persistence, checked once at
a worker's start, every minute by its sweeper, and by each CLI command that queues rows.

Its own module so that the CLI checks it without loading the worker's modules (the sweeper, the
metrics, the health server; ~60 ms of ``run``'s start).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from kontext_batch.coord.connection import check_redis
from kontext_batch.coord.policy import check_policy, read_memory
from kontext_batch.errors import RedisUnavailable
from kontext_batch.runtime import Runtime

__all__ = ["trust_redis"]

log = logging.getLogger("kontext_batch.worker")


def trust_redis(rt: Runtime, say: Callable[[str], None] | None = None) -> None:
    """Refuse an evicting Redis (ConfigError: ``worker``, ``run`` and ``retry`` exit 2); say each
    warning once, to the log or with ``say`` (the CLI's stderr)."""
    s = rt.settings
    try:
        check_redis(s)  # one quick PING: the runtime's client would retry for half a minute
        mem = read_memory(rt.redis)
    except (RedisUnavailable, RedisError, OSError):  # a worker that starts before its Redis: the sweeper looks later
        log.debug("Redis policy: Redis unavailable", exc_info=True)
        return
    for warning in check_policy(mem, s.redis_display, allow_eviction=s.redis_allow_eviction, embedded=s.redis_embedded):
        if warning not in _warned:
            _warned.add(warning)
            if say is not None:
                say(f"warning: {warning}")
            else:
                log.warning("%s", warning)


_warned: set[str] = set()
