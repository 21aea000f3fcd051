"""Per-process state of a worker: the runtime (created once) and the sweeper thread.

The sweeper runs in every worker: each second it re-drives jobs whose worker went quiet and fills
free slots. It is idempotent (Lua scripts), so several workers sweeping at once is harmless.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from kontext_batch.errors import RedisUnavailable
from kontext_batch.pipeline import sweep
from kontext_batch.redisconn import check_redis, explain
from kontext_batch.runtime import Runtime
from kontext_batch.settings import Settings
from workers.app import CelerySchedule, app

__all__ = ["get_runtime", "init_runtime"]

log = logging.getLogger("kontext_batch.worker")
_lock = threading.Lock()
_runtime: Runtime | None = None
_stop = threading.Event()
SWEEP_INTERVAL_S = 1.0


def init_runtime(settings: Settings) -> Runtime:
    # httpx logs every URL at INFO; sample URLs carry signatures, so keep them out of worker logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    global _runtime  # noqa: PLW0603 - one runtime per process is the point
    with _lock:
        if _runtime is None:
            _runtime = Runtime.create(settings, CelerySchedule(app))
        return _runtime


def get_runtime() -> Runtime:
    if _runtime is None:
        # A worker started by `celery -A workers.app worker` rather than `kontext-batch worker`.
        return init_runtime(Settings.from_env())
    return _runtime


def _sweeper() -> None:
    down = False
    while not _stop.wait(SWEEP_INTERVAL_S):
        rt = get_runtime()
        try:
            sweep(rt)
        except (RedisError, KombuOperationalError, OSError) as exc:
            # Redis down or restarting: one line when it starts, one when it ends, not a traceback a second.
            if not down:
                log.error("%s; the sweeper keeps trying", explain(exc, rt.settings))  # noqa: TRY400 - no traceback
                down = True
            continue
        except Exception:  # any other failure must not end the thread either
            log.warning("sweep failed; trying again in %.0f s", SWEEP_INTERVAL_S, exc_info=True)
            continue
        if down:
            log.warning("Redis at %s answers again; sweeping resumed", rt.settings.redis_display)
            down = False


@signals.celeryd_after_setup.connect
def _check_redis(**_: Any) -> None:
    """Say once, in words, why a worker that cannot use its Redis waits (Celery retries meanwhile)."""
    rt = get_runtime()
    try:
        check_redis(rt.settings)
    except RedisUnavailable as exc:
        log.error("%s; the worker keeps trying to connect", exc)  # noqa: TRY400 - one line, no traceback


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    get_runtime()
    threading.Thread(target=_sweeper, name="kontext-sweeper", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _stop.set()
