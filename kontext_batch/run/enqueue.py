"""Queue a manifest: one pass that checks, stages and records every row, then queue the run.

    manifest --iter_checked_rows--> JobSpec (valid) | invalid result --> Redis --> the pool's wait lists

Nothing is queued unless every row is valid, or the caller asked to record invalid rows as
``invalid``: rows go to the pool's wait lists only after the pass ends. A refused run is deleted from
Redis, and so is one that Redis has no room for: the run's footprint is estimated from the manifest
before anything is written (a stdin, .xlsx or .parquet manifest, whose bytes do not tell, is checked
at each flush instead), and
a Redis that fills up anyway is said in one line naming ``maxmemory``
(:mod:`kontext_batch.coord.policy`). Local input images are staged (content-addressed, so a refused
run leaves at most a cache of inputs behind, never an output). Rows whose output already exists for
the same inputs and parameters are recorded ``skipped`` unless ``force``.

Nothing here prints: :func:`start_run` returns a :class:`QueuedRun`. Looking at the run afterwards
(``status``, ``--wait``, ``follow``) is :mod:`kontext_batch.run.view`.
"""

from __future__ import annotations

import json
import secrets
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from redis.exceptions import OutOfMemoryError

from kontext_batch.coord.demand import sync_demand
from kontext_batch.coord.keys import job_ref
from kontext_batch.coord.policy import (
    RESULT_BYTES,
    ROW_BYTES,
    check_headroom,
    manifest_footprint,
    out_of_memory,
    read_memory,
)
from kontext_batch.coord.pools import Pool
from kontext_batch.coord.redisio import BATCH, batched
from kontext_batch.coord.runs import new_run_id
from kontext_batch.errors import (
    ConfigError,
    Interrupted,
    InvalidImage,
    ManifestError,
    ObjectNotFound,
    OutputInUse,
    OverBudget,
    RowError,
)
from kontext_batch.io.names import INPUTS_FOLDER, RUNS_FOLDER
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.io.stores import ObjectStore, open_store, split_scheme
from kontext_batch.jobspec import JobSpec
from kontext_batch.manifest.images import ImageCache, describe_image_error
from kontext_batch.manifest.model import ManifestRow
from kontext_batch.manifest.reader import detect_format
from kontext_batch.manifest.staging import StagedImage, stage_image
from kontext_batch.manifest.validate import CheckedRow, ValidationReport, iter_checked_rows
from kontext_batch.runtime import Runtime
from kontext_batch.steps.dispatch import hand_over

__all__ = ["QueuedRun", "RunRequest", "done_rows", "start_run"]

MAX_ERRORS_KEPT = 1000


@dataclass(frozen=True)
class RunRequest:
    """What ``run`` was asked to do; ``--local`` and ``demo`` hand the same value on."""

    manifest: str
    output: str
    model: str = "pro"
    skip_invalid: bool = False
    force: bool = False
    wait: bool = False
    max_failures: float = 0
    budget: float | None = None  # credits; None: the settings' KONTEXT_BUDGET (if any)
    inputs_root: Path | None = None  # local input images must lie in this folder (symlinks resolved)
    delimiter: str | None = None  # a CSV manifest's separator; None: read from its header
    sheet: str | None = None  # an .xlsx manifest's sheet; None: the first


@dataclass
class QueuedRun:
    """What :func:`start_run` did: the run's id and how its rows were accounted for."""

    run_id: str
    total: int = 0
    queued: int = 0
    invalid: int = 0
    skipped: int = 0
    report: ValidationReport = field(default_factory=lambda: ValidationReport(path=""), repr=False)


def start_run(
    rt: Runtime, req: RunRequest, *, stdin: TextIO | None = None, stop: Callable[[], bool] | None = None
) -> QueuedRun:
    """Check, register and queue ``req.manifest`` (``-``: ``stdin``) in one pass over it.

    The run is registered after the key, output store and output checks; whatever is raised from
    then on (a KeyboardInterrupt too), nothing is queued and the run is forgotten. Raises:

    - ConfigError: no API key is set (neither KONTEXT_API_KEY nor KONTEXT_API_KEYS), or ``req.model``
      names no model;
    - OutputInUse: another unfinished run writes to the same output (not checked with ``req.force``);
    - ManifestError: a row is invalid and ``req.skip_invalid`` is off, or the file itself is bad
      (no rows, no prompt column, ...);
    - OverBudget: the manifest's estimate is over the budget (``req.budget``, else the settings');
    - StorageError: the output store cannot be opened (a bad URL) or refuses a read or a write
      (listing outputs, staging input images); StorageUnavailable when it fails in a way that may pass;
    - OSError: the manifest cannot be read (FileNotFoundError when it does not exist);
    - Interrupted: ``stop()`` turned true; it is asked between two rows, so nothing is half-written;
    - ConfigError: the run would take Redis past 90 % of its ``maxmemory`` (checked before anything is
      written; for stdin, at each flush), or Redis ran out of memory while the run was written;
    - redis.exceptions.RedisError: Redis failed beyond the client's own retries.
    """
    keys = rt.settings.run_keys
    if not keys:
        raise ConfigError("no API key: set KONTEXT_API_KEY, or KONTEXT_API_KEYS for a pool of keys")
    pool = Pool.of(k.fingerprint for k in keys)
    budget = req.budget if req.budget is not None else rt.settings.budget_credits
    store = rt.store(req.output)
    if not req.force:
        _check_output_free(rt, store.url)
    if _sized_from_file(req):
        need = manifest_footprint(Path(req.manifest))
        check_headroom(read_memory(rt.redis), need.bytes, rt.settings.redis_display, need.what)
    run_id = new_run_id()
    enq: _Enqueue | None = None
    try:
        _register(rt, run_id, req, store.url, pool, budget)
        enq = _Enqueue(rt, run_id, store, req, pool, budget)
        queued = enq.run(stdin, stop or (lambda: False))
    except BaseException as exc:
        # Nothing of it waits for a slot yet. The rows go first: under OOM they free the room that
        # the wait lists' clean-up script needs (it rewrites a list).
        rt.runs.delete(run_id)
        rt.budget.delete(run_id)
        if enq is not None and enq.pushed:
            for endpoint in enq.waiting:
                rt.slots.remove_run_from_wait(pool.id, endpoint, run_id)
        if isinstance(exc, OutOfMemoryError):
            writing = enq.writing if enq is not None else "the run's metadata"
            raise out_of_memory(read_memory(rt.redis), rt.settings.redis_display, writing) from None
        raise
    return queued


def _sized_from_file(req: RunRequest) -> bool:
    """Whether the run's footprint is estimated from its manifest's bytes before the pass: a text
    file's (CSV, JSONL). Stdin has no size yet, and an .xlsx or .parquet file is compressed, so its
    bytes say little of its rows: those are checked at each flush instead."""
    return req.manifest != "-" and detect_format(req.manifest) in ("csv", "jsonl")


def _register(rt: Runtime, run_id: str, req: RunRequest, output: str, pool: Pool, budget: float | None) -> None:
    rt.runs.register(
        run_id,
        {
            "id": run_id,
            "manifest": str(Path(req.manifest).resolve()) if req.manifest != "-" else "-",
            "output": output,
            "total": 0,
            "default_model": req.model,
            "status": "enqueuing",
            "created_at": time.time(),
            "pool": pool.id,
            "keys": list(pool.fps),
            "budget": "" if budget is None else budget,
            **_webhook_meta(rt),
            "force": int(req.force),
        },
    )


class _Enqueue:
    """The state of one pass: rows buffered for Redis, row numbers waiting per endpoint."""

    def __init__(
        self, rt: Runtime, run_id: str, store: ObjectStore, req: RunRequest, pool: Pool, budget: float | None
    ) -> None:
        self.rt = rt
        self.run_id = run_id
        self.pool = pool
        self.pool_id = pool.id
        self.budget = budget
        self.store = store
        self.req = req
        self.cache = ImageCache()
        self.out = QueuedRun(run_id=run_id, report=ValidationReport(path=req.manifest, images_checked=True))
        self.existing = set() if req.force else _existing_outputs(store)
        self.extra_cols: dict[str, None] = {}
        self.specs: list[tuple[int, dict[str, Any]]] = []
        #: Results of rows that never become jobs (invalid, skipped), written with their specs.
        self.results: list[tuple[int, dict[str, Any]]] = []
        self.waiting: dict[str, array[int]] = {}
        self.endpoints: Counter[str] = Counter()
        #: What the pass writes now, for an out-of-memory line; whether any wait list holds its rows.
        self.writing = "the run's metadata"
        self.pushed = False
        #: For a stdin manifest (its size unknown until its end): used_memory before its first row.
        self.used_at_start = None if _sized_from_file(req) else read_memory(rt.redis).used
        self.rows_written = 0

    def run(self, stdin: TextIO | None, stop: Callable[[], bool]) -> QueuedRun:
        report = self.out.report
        rows = iter_checked_rows(
            self.req.manifest,
            default_model=self.req.model,
            stdin=stdin,
            cache=self.cache,
            fetch=FetchPolicy.from_settings(self.rt.settings),
            inputs_root=self.req.inputs_root,
            delimiter=self.req.delimiter,
            sheet=self.req.sheet,
        )
        for read in rows:
            if stop():
                raise Interrupted  # asked between two rows: nothing half-written
            refused = report.errors_total > 0 and not self.req.skip_invalid  # only checking from here on
            staged: list[StagedImage] = []
            checked = read
            if read.row is not None and not refused:
                staged, checked = self._stage(read, read.row)
            report.add(checked, max_errors=MAX_ERRORS_KEPT)
            if report.errors_total > 0 and not self.req.skip_invalid:
                continue
            if checked.row is None:
                self._invalid(checked)
            elif self._valid(checked.row, staged, checked.outcome.raw):
                # Priced only when it will run: a nightly re-run's done rows cost nothing (skipped).
                self.endpoints[checked.row.endpoint] += 1
            if len(self.specs) >= BATCH:
                self._flush()
        if report.errors_total and not self.req.skip_invalid:
            raise ManifestError(report.errors)
        report.set_endpoints(self.endpoints)
        report.already_done = self.out.skipped
        if self.budget is not None and report.cost_credits > self.budget:
            raise OverBudget(report.cost_credits, self.budget)
        self.writing = "the run's key pool and budget"
        self.rt.pools.register_pool(self.pool)
        self.rt.budget.set(self.run_id, self.budget)
        self._flush()
        return self._queue()

    def _stage(self, checked: CheckedRow, row: ManifestRow) -> tuple[list[StagedImage], CheckedRow]:
        staged: list[StagedImage] = []
        for ref in row.images:
            try:
                staged.append(stage_image(ref, self.store, self.cache))
            except (InvalidImage, ObjectNotFound) as exc:
                # The file changed between its check and now: the row is invalid, not the run.
                return [], CheckedRow(checked.outcome, [RowError(row.row, ref.field, describe_image_error(ref, exc))])
        return staged, checked

    def _invalid(self, checked: CheckedRow) -> None:
        raw = checked.outcome.raw or {}
        row = checked.outcome.row
        self.specs.append(
            (row, {"row": row, "id": raw.get("id") or str(row), "prompt": raw.get("prompt", ""), "extra": {}})
        )
        error = "; ".join(f"{e.field}: {e.msg}" for e in checked.errors)
        self.results.append((row, {"status": "invalid", "error": error, "finished_at": time.time()}))
        self.out.invalid += 1

    def _valid(self, row: ManifestRow, staged: list[StagedImage], raw: dict[str, str]) -> bool:
        """Write the row's spec; queue it (True), or record it ``skipped`` when its output is there."""
        for col in row.extra:
            self.extra_cols.setdefault(col, None)
        spec = _job_spec(row, staged, raw)
        self.specs.append((row.row, spec.to_json()))
        done = _already_done(self.store, self.existing, spec)
        if done is not None:
            self.results.append((row.row, {"status": "skipped", **done, "finished_at": time.time()}))
            self.out.skipped += 1
            return False
        self.waiting.setdefault(row.endpoint, array("I")).append(row.row)
        self.out.queued += 1
        return True

    def _flush(self) -> None:
        if self.specs:
            first, last = self.specs[0][0], self.specs[-1][0]
            self._check_room(len(self.specs))
            self.writing = f"the run's rows {first:,}-{last:,} (their specs)"
            self.rt.runs.put_rows(self.run_id, self.specs)
            self.rows_written += len(self.specs)
            self.specs.clear()
        if self.results:  # after their specs, which results.csv reads beside them
            self.writing = f"the results of {len(self.results):,} invalid or skipped rows"
            pipe = self.rt.redis.pipeline(transaction=False)
            for row, result in self.results:
                self.rt.runs.record_in(pipe, self.run_id, row, result)
            pipe.execute()
            self.results.clear()

    def _check_room(self, batch: int) -> None:
        """For a manifest not sized up front (stdin, .xlsx, .parquet): refuse before a flush that
        would leave Redis no room for the run to finish.

        The rows written so far each still take a result; the next ones are priced like the rows
        written so far (used_memory's growth since the first row)."""
        if self.used_at_start is None:
            return
        mem = read_memory(self.rt.redis)
        grown = (mem.used - self.used_at_start) / self.rows_written if self.rows_written else 0.0
        per_row = max(grown, ROW_BYTES)
        need = int(self.rows_written * RESULT_BYTES + batch * (per_row + RESULT_BYTES))
        read = self.rows_written + batch
        source = "stdin" if self.req.manifest == "-" else Path(self.req.manifest).name
        check_headroom(mem, need, self.rt.settings.redis_display, f"this run ({read:,} rows read from {source} so far)")

    def _queue(self) -> QueuedRun:
        rt, run_id, out = self.rt, self.run_id, self.out
        out.total = out.report.rows_total
        self.writing = "the run's counts"
        rt.runs.update(
            run_id,
            total=out.total,
            extra_columns=list(self.extra_cols),
            queued=out.queued,
            skipped=out.skipped,
            invalid=out.invalid,
        )
        self.writing = f"the wait lists of the run's {out.queued:,} queued rows"
        for endpoint, rows in self.waiting.items():
            self.pushed = True
            for chunk in batched(rows):
                rt.slots.enqueue(self.pool_id, endpoint, (job_ref(run_id, r) for r in chunk))
        self.writing = "the run's status"
        rt.runs.update(run_id, status="running")
        # Before the first dispatch: with no worker running, this is what starts one (KEDA).
        sync_demand(rt.redis, rt.keys, rt.runs)
        for endpoint in self.waiting:
            hand_over(rt, self.pool_id, endpoint)
        if rt.runs.info(run_id).ndone >= out.total:
            # Rare (every row invalid or skipped), so the end of a run loads only then: not on the start.
            from kontext_batch.steps.complete import finalize  # noqa: PLC0415

            finalize(rt, run_id)
        return out


def _webhook_meta(rt: Runtime) -> dict[str, str]:
    """With KONTEXT_WEBHOOK_URL: where the run's tasks announce their end, and the run's own secret
    (the API sends it back; the receiver refuses a delivery without it)."""
    if not rt.settings.webhook_url:
        return {}
    return {"webhook_url": rt.settings.webhook_url, "webhook_secret": secrets.token_urlsafe(24)}


def _check_output_free(rt: Runtime, url: str) -> None:
    """No other unfinished run may write to this output: names and results.csv would mix."""
    for other in rt.runs.open_runs():
        meta = rt.runs.meta(other)
        if meta.get("output") == url and meta.get("status") in ("enqueuing", "running"):
            raise OutputInUse(url, other)


def _job_spec(row: ManifestRow, staged: list[StagedImage], raw: dict[str, str]) -> JobSpec:
    return JobSpec(
        row=row.row,
        id=row.id,
        endpoint=row.endpoint,
        prompt=row.prompt,
        params=dict(row.params),
        images=[s.uri for s in staged],
        digests=[s.sha256 for s in staged],
        output_name=row.output_name,
        output_format=row.output_format,
        extra=dict(row.extra),
        inputs={img.field: raw.get(img.field, "").strip() for img in row.images},
    )


def done_rows(output: str, cache: ImageCache) -> Callable[[CheckedRow], bool] | None:
    """What ``validate --output`` asks of each valid row: would a run into ``output`` skip it, its
    output there already from the same inputs? The decision ``run`` makes (:func:`_already_done`),
    made without writing anything: a local folder that does not exist means nothing is done (and it
    is not created), and images are hashed as staging would, not uploaded. None when nothing is."""
    if split_scheme(output) in ("", "file"):
        folder = Path(unquote(urlsplit(output).path)) if split_scheme(output) == "file" else Path(output)
        if not folder.expanduser().is_dir():
            return None
    store = open_store(output)
    existing = _existing_outputs(store)
    if not existing:
        return None

    def done(checked: CheckedRow) -> bool:
        row = checked.row
        if row is None or row.output_name not in existing:  # most rows of a new night: no hashing
            return False
        try:
            staged = [stage_image(ref, store, cache, upload=False) for ref in row.images]
        except (InvalidImage, ObjectNotFound):
            return False  # the run finds it invalid; not done
        return _already_done(store, existing, _job_spec(row, staged, checked.outcome.raw or {})) is not None

    return done


def _existing_outputs(store: ObjectStore) -> set[str]:
    # Neither folder can hold an output (RESERVED_NAMES); a nightly prefix's runs/ grows every night.
    return {n for n in store.list() if not n.startswith((f"{INPUTS_FOLDER}/", f"{RUNS_FOLDER}/"))}


#: A skipped row's result fields -> the sidecar fields they come from: the outcome that made the
#: output, which results.csv shows beside this run's own (empty) seed, task id and cost.
_OUTPUT_FIELDS = {
    "output_run_id": "run_id",
    "output_seed": "seed",
    "output_bfl_task_id": "bfl_task_id",
    "output_cost_credits": "cost_credits",
}


def _already_done(store: ObjectStore, existing: set[str], spec: JobSpec) -> dict[str, Any] | None:
    """The skipped result of a row whose output is there for the same job (its sidecar's
    ``job_key``), with what made that output; None when the row must run."""
    if spec.output_name not in existing or spec.sidecar_name not in existing:
        return None
    try:
        side = json.loads(store.get(spec.sidecar_name))
    except (OSError, ValueError):
        return None
    if not isinstance(side, dict) or side.get("job_key") != spec.job_key:
        return None
    done: dict[str, Any] = {"output_uri": store.uri(spec.output_name)}
    done.update({k: side[f] for k, f in _OUTPUT_FIELDS.items() if side.get(f) is not None})
    return done
