"""Per-process state of a worker: the runtime (created once), its logging, HTTP endpoints, its four
threads, and how it shuts down.

Four threads run in every worker besides Celery's. The heartbeat says, about every second, that
this process is alive and which API keys it holds (only then do its keys take rows, and its jobs
keep their slots). The sweeper, each second, re-drives jobs whose holder died or whose message is
overdue, fills free slots, and finalizes complete runs. It is idempotent (Lua scripts), so several
workers sweeping at once is harmless. The delay pump sends delayed steps as they fall due
(:class:`~kontext_batch.workers.schedule.CelerySchedule`). The nudge listener fills free slots the
moment a run's rows wait (:mod:`kontext_batch.coord.nudges`), so a new run's first wave goes out
with no sweep to wait for and no Celery to load in the CLI. Each loop's rounds but the listener's
(a hint: the sweeper covers what it misses) feed the liveness probe, and each heartbeat that
reaches Redis the readiness probe (:mod:`kontext_batch.workers.health`).

On SIGTERM (a rolling update, a scale-down) the worker shuts down warm: readiness turns 503 at once,
Celery stops taking messages, a step message that still arrives is handed back to its queue
untouched (``Reject(requeue=True)``: its job was never claimed), and the steps in hand finish. If
some are still running after ``KONTEXT_SHUTDOWN_GRACE_S``, the process leaves the holders' sets
(its heartbeat goes, so the other workers' sweepers re-drive those jobs within a second, fenced by
their tokens) and exits 0. A clean stop leaves the holders' sets too, so nothing waits for a TTL.

In a rolling update across a protocol change (:mod:`kontext_batch.coord.protocol`), a worker that
sees a newer protocol among its keys' holders steps aside the same way, but stays alive: readiness
503, no more steps, its consumers cancelled, its keys let go; its heartbeat keeps the jobs in hand.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from celery import Celery, current_app, signals
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from kontext_batch.api.models import MODEL_ENDPOINTS
from kontext_batch.coord.connection import check_redis, explain
from kontext_batch.coord.holders import BEAT_S
from kontext_batch.coord.nudges import NudgeWatch
from kontext_batch.coord.protocol import PROTOCOL, VERSION, describe, newer
from kontext_batch.errors import ConfigError, KontextBatchError, RedisUnavailable
from kontext_batch.logs import configure_logging
from kontext_batch.metrics import MeteredTransport
from kontext_batch.runtime import Runtime
from kontext_batch.settings import Settings
from kontext_batch.steps.dispatch import dispatch
from kontext_batch.steps.sweep import sweep
from kontext_batch.workers.health import Health, serve
from kontext_batch.workers.schedule import CelerySchedule, celery_runtime
from kontext_batch.workers.trust import trust_redis

__all__ = [
    "bind_app",
    "dispatch_on_nudges",
    "get_runtime",
    "health",
    "init_runtime",
    "setup_logging",
    "taking_steps",
    "trust_redis",
]

log = logging.getLogger("kontext_batch.worker")
#: What a Redis (or the broker on it) that is down or restarting raises in a worker's threads.
REDIS_DOWN = (RedisError, KombuOperationalError, OSError)
_lock = threading.Lock()
_runtime: Runtime | None = None
_app: Celery | None = None
_stop = threading.Event()
#: What /healthz and /readyz read.
health = Health()
_in_hand = 0  # steps running in this process (Celery's task_prerun/task_postrun)
_in_hand_lock = threading.Lock()
SWEEP_INTERVAL_S = 1.0
#: The GIL's switch interval in a worker (Python's default is 5 ms). A worker is dozens of threads
#: that mostly wait on sockets; with the default, a thread whose reply has arrived waits up to 5 ms
#: for the GIL per Redis or HTTP call while another thread computes, and a poll -> release -> next
#: submit chain makes a dozen such calls. Measured with the benchmark's `pro` run (C=24, L=1 s):
#: 0.967 of the ideal at 5 ms, 0.980 at 0.5 ms, with no more worker CPU per job.
SWITCH_INTERVAL_S = 0.0005


def bind_app(app: Celery) -> None:
    """The app whose queues this process's steps go to (:mod:`kontext_batch.workers.app` calls it)."""
    global _app  # noqa: PLW0603 - one app per process
    _app = app


def init_runtime(settings: Settings, *, metrics_port: int | None = None) -> Runtime:
    """The process's runtime (created on the first call); with ``metrics_port``, serve its metrics too."""
    # httpx logs every URL at INFO; sample URLs carry signatures, so keep them out of worker logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    global _runtime  # noqa: PLW0603 - one runtime per process is the point
    with _lock:
        if _runtime is None:
            _runtime = celery_runtime(_app if _app is not None else current_app, settings)
            # Each key's client transports are wrapped to time API calls and count 429s for the metrics.
            _runtime.transport_wrapper = MeteredTransport
        rt = _runtime
    if metrics_port is not None:
        serve(rt, health, metrics_port, settings.metrics_host)
    return rt


#: How often the sweeper looks at the Redis's policy again (someone may change it under a running fleet).
POLICY_EVERY_S = 60.0


def _look_at_policy(rt: Runtime, last: float) -> float:
    global _refused  # noqa: PLW0603 - per-process state: what the last look refused
    if time.monotonic() - last < POLICY_EVERY_S:
        return last
    try:
        trust_redis(rt)
        _refused = ""
    except ConfigError as exc:
        if str(exc) != _refused:  # once per change, not a line a minute
            _refused = str(exc)
            log.error("%s", exc)  # noqa: TRY400 - one line; the workers go on, but every run is at risk
    return time.monotonic()


_refused = ""


def taking_steps() -> bool:
    """False once the worker is shutting down: a task then hands its message back untouched."""
    return not health.draining


def get_runtime() -> Runtime:
    if _runtime is None:
        # A worker started by `celery -A kontext_batch.workers.app worker` rather than `kontext-batch worker`.
        return init_runtime(Settings.from_env())
    return _runtime


def _heartbeat() -> None:
    # Its own thread: a slow sweep must never make this process look dead and lose its slots.
    beats = 0
    while not _stop.wait(BEAT_S):
        health.round("heartbeat")
        beats += 1
        try:
            rt = get_runtime()
            if _aside:  # alive for the jobs in hand, holding no key
                rt.holders.beat(rt.proc_id, {})
            else:
                rt.beat()
                if beats % PROTOCOL_EVERY_BEATS == 0:
                    _step_aside_if_outdated(rt)
            health.beat_ok()
        except REDIS_DOWN:  # the sweeper says so, once per outage; the next beat tries again
            log.debug("heartbeat: Redis unavailable", exc_info=True)
        except Exception:
            log.warning("heartbeat failed; trying again in %.0f s", BEAT_S, exc_info=True)


#: How often (in beats) a worker looks at the protocols its keys' other holders speak.
PROTOCOL_EVERY_BEATS = 5
_aside = False
_consumer: Any = None  # Celery's consumer, from worker_ready: its host name and queues


def _step_aside_if_outdated(rt: Runtime) -> None:
    """A rolling update has started newer workers on our keys: stop taking steps (those in hand
    finish), stop consuming, and let go of the keys, so the newer workers take the queue over."""
    global _aside  # noqa: PLW0603 - per-process state, set once
    ahead = newer(rt.holders.speakers(rt.held))
    if not ahead or _aside:
        return
    _aside = True
    reason = f"stepped aside: live workers speak protocol {max(s.protocol for s in ahead)}, this one {PROTOCOL}"
    health.drain(reason)
    log.error(
        "this worker runs kontext-batch %s (protocol %d); %s speak a newer protocol: it takes no more steps, "
        "finishes the %d in hand and waits to be replaced (README: Upgrading)",
        VERSION,
        PROTOCOL,
        describe(ahead),
        steps_in_hand(),
    )
    rt.holders.release(rt.proc_id, rt.held)
    if _consumer is not None:
        queues = [q.name for q in _consumer.task_consumer.queues]
        control = (_app or current_app).control
        for q in queues:  # through the broker: the consumer is not ours to touch from this thread
            control.cancel_consumer(q, destination=[_consumer.hostname], reply=False)


def _pump() -> None:
    # Delayed messages are sent from here when due (see kontext_batch.coord.delays).
    scheduler = get_runtime().scheduler
    if not isinstance(scheduler, CelerySchedule):
        return
    while not _stop.is_set():
        try:
            scheduler.pump(_stop, on_round=lambda: health.round("delays"))
        except REDIS_DOWN:  # the sweeper says so, once per outage
            log.debug("delay pump: Redis unavailable", exc_info=True)
            _stop.wait(1.0)
        except Exception:
            log.warning("sending due messages failed; trying again in 1 s", exc_info=True)
            _stop.wait(1.0)


def _sweeper() -> None:
    down = False
    policy_at = -POLICY_EVERY_S  # the first sweep looks too (the start could not if Redis was down)
    while not _stop.wait(SWEEP_INTERVAL_S):
        health.round("sweeper")
        rt = get_runtime()
        try:
            policy_at = _look_at_policy(rt, policy_at)
            sweep(rt)
        except REDIS_DOWN as exc:
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


def dispatch_on_nudges(rt: Runtime, stop: threading.Event) -> None:
    """Dispatch the rows each nudge announces, the moment it comes (the sweeper would, within a
    second), until ``stop`` is set: the body of the worker's nudge listener."""
    watch = NudgeWatch(rt.redis, rt.keys)
    try:
        while not stop.is_set():
            for pool_id, endpoint in sorted(watch.wait(SWEEP_INTERVAL_S)):
                try:
                    dispatch(rt, pool_id, endpoint)
                except REDIS_DOWN:  # the sweeper says so, once per outage
                    log.debug("nudge for %s/%s: Redis unavailable", pool_id, endpoint, exc_info=True)
                except KontextBatchError as exc:  # an unknown pool: nothing of ours waits there
                    log.debug("nudge for %s/%s ignored: %s", pool_id, endpoint, exc)
                except Exception:  # the thread must not end: without it, rows wait for the sweeper
                    log.warning("dispatch on a nudge failed; the sweeper tries again", exc_info=True)
    finally:
        watch.close()


@signals.celeryd_after_setup.connect
def _check_redis(**_: Any) -> None:
    """Say once, in words, why a worker that cannot use its Redis waits (Celery retries meanwhile)."""
    rt = get_runtime()
    try:
        check_redis(rt.settings)
    except RedisUnavailable as exc:
        log.error("%s; the worker keeps trying to connect", exc)  # noqa: TRY400 - one line, no traceback


def setup_logging(settings: Settings, loglevel: int | str | None = None) -> None:
    """The worker's logs as ``KONTEXT_LOG_FORMAT`` says. Called before Celery starts, so its start-up
    warnings are records too, and again by Celery (see below)."""
    configure_logging(loglevel or settings.log_level, settings.log_format)
    if settings.log_format == "json":
        _json_shutdown_lines()


@signals.setup_logging.connect
def _celery_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connecting this signal tells Celery to leave logging to us.
    setup_logging(_runtime.settings if _runtime is not None else Settings.from_env(), loglevel)


def _json_shutdown_lines() -> None:
    """Celery prints "worker: Warm shutdown" straight to stdout; as a log record it stays JSON."""
    import celery.apps.worker  # noqa: PLC0415 - only the worker process needs it

    say = logging.getLogger("celery.apps.worker")
    celery.apps.worker.safe_say = lambda msg, *_a, **_k: say.info("%s", msg)


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    global _consumer  # noqa: PLW0603 - per-process state, set once
    _consumer = sender
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    rt = get_runtime()
    for loop in ("heartbeat", "sweeper", "delays"):
        health.round(loop)
    # Each held key's API client made now, before this process takes rows: made by the first wave's
    # submits, one at a time under the runtime's lock, they cost 60-95 ms each inside a timed POST.
    for fp in rt.held:
        rt.provider_for(fp)
    try:  # before the first beat, which lets this process take rows: its first polls are timed warm
        rt.planner.warm(rt.latencies.load(MODEL_ENDPOINTS.values()))
    except REDIS_DOWN:  # cold, then: the first shares read the windows
        log.debug("latency windows: Redis unavailable", exc_info=True)
    try:
        rt.beat()
        health.beat_ok()
    except REDIS_DOWN:  # not ready until a beat gets through; the heartbeat thread keeps trying
        log.debug("first heartbeat: Redis unavailable", exc_info=True)
    threading.Thread(target=_heartbeat, name="kontext-heartbeat", daemon=True).start()
    threading.Thread(target=_sweeper, name="kontext-sweeper", daemon=True).start()
    threading.Thread(target=_pump, name="kontext-delays", daemon=True).start()
    threading.Thread(target=dispatch_on_nudges, args=(rt, _stop), name="kontext-nudges", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _stop.set()
    _leave()


@signals.task_prerun.connect
def _step_started(**_: Any) -> None:
    global _in_hand  # noqa: PLW0603 - a per-process count
    with _in_hand_lock:
        _in_hand += 1


@signals.task_postrun.connect
def _step_ended(**_: Any) -> None:
    global _in_hand  # noqa: PLW0603 - a per-process count
    with _in_hand_lock:
        _in_hand -= 1


def steps_in_hand() -> int:
    with _in_hand_lock:
        return _in_hand


@signals.worker_shutting_down.connect
def _shutting_down(how: str = "", **_: Any) -> None:
    """Celery began its shutdown (SIGTERM, SIGINT): not ready any more, and a deadline for the steps."""
    health.drain()
    grace = _runtime.settings.shutdown_grace_s if _runtime is not None else 25.0
    log.info("%s shutdown: finishing %d step(s) in hand within %.0f s", how or "warm", steps_in_hand(), grace)
    threading.Thread(target=_grace_deadline, args=(grace,), name="kontext-shutdown", daemon=True).start()


def _grace_deadline(grace_s: float) -> None:
    if _stop.wait(grace_s):  # Celery finished its shutdown: worker_shutdown left the holders' sets
        return
    left = steps_in_hand()
    log.warning(
        "%d step(s) still running %.0f s after the shutdown began (KONTEXT_SHUTDOWN_GRACE_S): handing their "
        "jobs back and exiting",
        left,
        grace_s,
    )
    _leave()
    logging.shutdown()
    os._exit(0)


def _leave() -> None:
    """Take this process out of the holders' sets: its slots and in-hand jobs are re-driven at once."""
    if _runtime is not None:
        try:
            _runtime.holders.leave(_runtime.proc_id, _runtime.held)
        except Exception:
            log.debug("could not leave the holders' sets", exc_info=True)
