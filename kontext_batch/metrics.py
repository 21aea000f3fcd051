"""Prometheus metrics of a worker process, served by ``kontext-batch worker --metrics-port N``.

===================================  =========  =====================  ==============================
metric                               type       labels                 source
===================================  =========  =====================  ==============================
kontext_rows_finished_total          counter    status, endpoint       a row's result recorded here
kontext_credits_spent_total          counter    endpoint               the cost of each finished row
kontext_polls_total                  counter    endpoint               poll answers (results' polls)
kontext_api_rate_limited_total       counter    kind                   429 answers, retried ones too
kontext_api_request_seconds          histogram  kind                   each HTTP answer (body read)
kontext_row_duration_seconds         histogram  endpoint               a row's submit to its final result
kontext_runs_finished_total          counter    outcome                a run's end recorded here
kontext_run_last_finished_timestamp  gauge      outcome                when (``_seconds``; max over workers)
kontext_results_write_failures_total counter                           results.csv writes that failed
kontext_active_tasks                 gauge      key, endpoint          Redis at scrape time
kontext_active_cap                   gauge      key, endpoint          the held key's caps (``*``: all)
kontext_waiting_rows                 gauge      pool, endpoint         rows waiting for a slot
kontext_waiting_rows_unheld          gauge      pool, endpoint         of those, rows no live worker's key serves
kontext_run_rows_left                gauge      run                    open runs' rows not final
kontext_run_budget_credits           gauge      run                    an open run's budget (runs with one)
kontext_run_spent_credits            gauge      run                    what it has spent
kontext_run_last_progress_timestamp  gauge      run                    its last final row (``_seconds``)
kontext_rows_waiting                 gauge                             rows waiting, all pools
kontext_rows_in_flight               gauge                             tasks holding a slot, all keys
kontext_redis_used_memory_bytes      gauge                             Redis's used_memory
kontext_redis_maxmemory_bytes        gauge                             Redis's maxmemory (0: none)
kontext_workers_alive                gauge                             live worker heartbeats
===================================  =========  =====================  ==============================

``kind`` is ``submit``, ``poll``, ``download`` or ``credits``; ``key`` is an API key's fingerprint
(the keys this worker holds), ``pool`` the id of a run's key pool (a single key's pool is its fingerprint).
Counters are per process (sum them over workers). The gauges read shared Redis state, and one
worker exports them (it holds ``kb:metrics-exporter``, renewed at each scrape; another takes over
within 45 s when it goes), so ``sum()`` over workers is the cluster's figure, as is ``max()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import httpx
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kontext_batch.api.prices import ENDPOINT_COST_CREDITS
from kontext_batch.coord.keys import split_slot_id
from kontext_batch.coord.redisio import decode

if TYPE_CHECKING:
    from kontext_batch.runtime import Runtime

__all__ = ["MeteredTransport", "RedisCollector", "poll_answered", "row_finished"]

log = logging.getLogger("kontext_batch.metrics")

ROWS_FINISHED: Final = Counter(
    "kontext_rows_finished", "Rows whose final result this process recorded.", ["status", "endpoint"]
)
CREDITS_SPENT: Final = Counter("kontext_credits_spent", "Credits the API charged for finished rows.", ["endpoint"])
POLLS: Final = Counter("kontext_polls", "Poll answers received (the results' polls column).", ["endpoint"])
RATE_LIMITED: Final = Counter("kontext_api_rate_limited", "HTTP 429 answers from the API.", ["kind"])
API_SECONDS: Final = Histogram(
    "kontext_api_request_seconds",
    "Time from sending an API request to having its whole answer.",
    ["kind"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


RUNS_FINISHED: Final = Counter(
    "kontext_runs_finished", "Runs whose end this process recorded, by outcome.", ["outcome"]
)
RUN_LAST_FINISHED: Final = Gauge(
    "kontext_run_last_finished_timestamp_seconds",
    "When this process last recorded a run's end with this outcome (Unix time; take max over workers).",
    ["outcome"],
)
ROW_SECONDS: Final = Histogram(
    "kontext_row_duration_seconds",
    "A row's time from its submit to its final result.",
    ["endpoint"],
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
RESULTS_WRITE_FAILURES: Final = Counter(
    "kontext_results_write_failures", "results.csv writes that failed (retried later, or the run failed)."
)
#: A run's outcome: ``stopped`` (budget, credits or keys ran out), ``cancelled``, ``failed`` (a row
#: failed, was moderated or invalid, or results.csv could not be written), else ``succeeded``.
OUTCOMES: Final = ("succeeded", "failed", "stopped", "cancelled")
_STATUSES: Final = ("succeeded", "failed", "moderated", "invalid", "skipped", "cancelled", "budget")
_KINDS: Final = ("submit", "poll", "download", "credits")


def _zero_series() -> None:
    """Every counter's known label sets exist at 0 from the start: a quiet night reads 0, not "No data",
    and ``increase()`` sees the first event of each."""
    for outcome in OUTCOMES:
        RUNS_FINISHED.labels(outcome=outcome)
    for kind in _KINDS:
        RATE_LIMITED.labels(kind=kind)
    for endpoint in ENDPOINT_COST_CREDITS:
        CREDITS_SPENT.labels(endpoint=endpoint)
        POLLS.labels(endpoint=endpoint)
        for status in _STATUSES:
            ROWS_FINISHED.labels(status=status, endpoint=endpoint)


_zero_series()


def run_outcome(status: str, stopped: str, counts: dict[str, int]) -> str:
    """The outcome label of a run that ended with this status, stop and row counts."""
    if status == "cancelled":
        return "cancelled"
    if stopped == "results" or status == "failed":
        return "failed"
    if stopped:
        return "stopped"
    if any(counts.get(k, 0) for k in ("failed", "moderated", "invalid")):
        return "failed"
    return "succeeded"


def run_finished(outcome: str) -> None:
    RUNS_FINISHED.labels(outcome=outcome).inc()
    RUN_LAST_FINISHED.labels(outcome=outcome).set(time.time())


def results_write_failed() -> None:
    RESULTS_WRITE_FAILURES.inc()


def _endpoint_of(job: dict[str, str]) -> str:
    return split_slot_id(job.get("gate", ""))[1] or "unknown"


def row_finished(result: dict[str, Any], job: dict[str, str], *, recorded: bool = True) -> None:
    """Count a row's final result and its cost (not a duplicate's: ``recorded`` False)."""
    if not recorded:
        return
    endpoint = _endpoint_of(job)
    ROWS_FINISHED.labels(status=str(result.get("status", "unknown")), endpoint=endpoint).inc()
    if result.get("duration_s") is not None:
        ROW_SECONDS.labels(endpoint=endpoint).observe(float(result["duration_s"]))
    try:
        # The row's earlier passes (retry) were counted when they ended.
        cost = float(result.get("cost_credits") or 0) - float(job.get("cost_before") or 0)
    except (TypeError, ValueError):
        cost = 0.0
    if cost > 0:
        CREDITS_SPENT.labels(endpoint=endpoint).inc(cost)


def poll_answered(endpoint: str) -> None:
    POLLS.labels(endpoint=endpoint).inc()


def call_kind(request: httpx.Request) -> str:
    """What an API request is, from its shape: both providers POST to submit and send the key to poll;
    sample downloads go to a delivery host without it."""
    if request.method == "POST":
        return "submit"
    if "x-key" in request.headers or "authorization" in request.headers:
        return "credits" if request.url.path.rstrip("/").endswith("/credits") else "poll"
    return "download"


class MeteredTransport(httpx.BaseTransport):
    """Wraps a transport: times every answer until its body is closed (so downloads count whole)
    and counts 429s by kind. The body still streams through: the client's byte caps apply."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = call_kind(request)
        started = time.perf_counter()
        response = self.inner.handle_request(request)
        if response.status_code == 429:
            RATE_LIMITED.labels(kind=kind).inc()

        def done() -> None:
            API_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)

        if isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _TimedStream(response.stream, done)
        else:  # not a body we can follow: time the headers
            done()
        return response

    def close(self) -> None:
        self.inner.close()


class _TimedStream(httpx.SyncByteStream):
    """A response body passed through unchanged; ``done`` runs once, when it is closed."""

    def __init__(self, inner: httpx.SyncByteStream, done: Callable[[], None]) -> None:
        self.inner = inner
        self.done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        yield from self.inner

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            done, self.done = self.done, None
            if done is not None:
                done()


class RedisCollector(Collector):
    """Gauges read from Redis when Prometheus scrapes: slots in use against caps, waiting rows, open runs."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def describe(self) -> list[GaugeMetricFamily]:
        # Registering would otherwise call collect() (Redis) just to learn the names.
        return []

    #: How long the exporting worker's claim lasts; it renews it at each scrape (Prometheus scrapes
    #: every 15 s by default), and another worker takes over within this long when it goes.
    EXPORTER_TTL_MS: Final = 45_000

    def _exporting(self) -> bool:
        """Whether this process exports the cluster-wide gauges: one worker does, so ``sum()`` over
        workers is the truth (every worker reading the same Redis used to report the same figures)."""
        rt = self.rt
        key = f"{rt.keys.ns}:metrics-exporter"
        if rt.redis.set(key, rt.proc_id, nx=True, px=self.EXPORTER_TTL_MS):
            return True
        holder = rt.redis.get(key)
        if holder is not None and decode(holder) == rt.proc_id:
            rt.redis.pexpire(key, self.EXPORTER_TTL_MS)
            return True
        return False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            if not self._exporting():
                return
        except Exception:  # a scrape during a Redis restart shows no gauges, not a 500
            log.warning("metrics: could not read Redis", exc_info=True)
            return
        g = GaugeMetricFamily
        active = g("kontext_active_tasks", "API tasks holding a slot.", labels=["key", "endpoint"])
        cap = g("kontext_active_cap", "Slots allowed.", labels=["key", "endpoint"])
        waiting = g("kontext_waiting_rows", "Rows waiting for a slot.", labels=["pool", "endpoint"])
        unheld = g(
            "kontext_waiting_rows_unheld", "Rows waiting for a pool no live worker holds.", labels=["pool", "endpoint"]
        )
        left = g("kontext_run_rows_left", "Rows of an open run not final yet.", labels=["run"])
        budget = g("kontext_run_budget_credits", "An open run's budget.", labels=["run"])
        spent = g("kontext_run_spent_credits", "Credits an open run has spent.", labels=["run"])
        progress = g(
            "kontext_run_last_progress_timestamp_seconds",
            "When a row of this open run last became final (or when it was queued).",
            labels=["run"],
        )
        rt = self.rt
        try:
            waits = sorted(rt.slots.known_waits())
            in_flight = 0
            for fp, caps in sorted(rt.key_caps().items()):
                n_active = rt.slots.active(fp)
                in_flight += n_active
                active.add_metric([fp, "*"], n_active)
                cap.add_metric([fp, "*"], caps.total)
                for endpoint in sorted({e for _, e in waits} | set(caps.per_endpoint)):
                    active.add_metric([fp, endpoint], rt.slots.active(fp, endpoint))
                    cap.add_metric([fp, endpoint], caps.cap_for(endpoint))
            n_waiting = 0
            for pool_id, endpoint in waits:
                n = rt.slots.waiting(pool_id, endpoint)
                n_waiting += n
                waiting.add_metric([pool_id, endpoint], n)
                no_holder = n > 0 and not rt.holders.live_keys(rt.pools.pool(pool_id).fps)
                unheld.add_metric([pool_id, endpoint], n if no_holder else 0)
            for run_id in rt.runs.open_runs():
                info = rt.runs.info(run_id)
                left.add_metric([run_id], max(0, info.total - info.ndone))
                sp = rt.budget.spend(run_id)
                if sp.budget is not None:
                    budget.add_metric([run_id], sp.budget)
                    spent.add_metric([run_id], sp.spent)
                last = info.meta.get("last_final_at") or info.meta.get("created_at") or info.meta.get("started_at")
                if last:
                    progress.add_metric([run_id], float(last))
            mem = rt.redis.info("memory")
            alive = sum(1 for _ in rt.redis.scan_iter(match=rt.keys.proc("*"), count=1000))
        except Exception:  # a scrape during a Redis restart shows no gauges, not a 500
            log.warning("metrics: could not read Redis", exc_info=True)
            return
        cluster = (
            ("kontext_rows_waiting", "Rows waiting for a slot, all pools.", n_waiting),
            ("kontext_rows_in_flight", "API tasks holding a slot, all keys.", in_flight),
            ("kontext_redis_used_memory_bytes", "Redis's used_memory.", int(mem.get("used_memory", 0))),
            ("kontext_redis_maxmemory_bytes", "Redis's maxmemory (0: no limit).", int(mem.get("maxmemory", 0))),
            ("kontext_workers_alive", "Worker processes whose heartbeat is live.", alive),
        )
        yield from (active, cap, waiting, unheld, left, budget, spent, progress)
        for name, doc, value in cluster:
            yield GaugeMetricFamily(name, doc, value=value)
