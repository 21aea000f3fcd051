"""The store step: download a Ready sample before its URL expires, write it and its sidecar to the
output store, and record the row."""

from __future__ import annotations

import json
import time
from typing import Any

from kontext_batch.api.models import PollResult
from kontext_batch.coord.keys import split_job_ref, split_slot_id
from kontext_batch.errors import (
    ObjectNotFound,
    PermanentError,
    RetryableError,
    SampleExpired,
    describe,
)
from kontext_batch.io.formats import conform_sample
from kontext_batch.io.names import SIDECAR_SUFFIX, run_file
from kontext_batch.io.stores import ObjectStore
from kontext_batch.jobspec import JobSpec
from kontext_batch.runtime import Runtime
from kontext_batch.steps.complete import fail_lost, finish
from kontext_batch.steps.dispatch import dispatch
from kontext_batch.steps.job import backoff_s, charge_reserved

__all__ = ["store_sample"]


def store_sample(rt: Runtime, ref: str, held: str, spec: JobSpec, job: dict[str, str], res: PollResult) -> None:  # noqa: PLR0911 - each way a download can end, side by side
    run_id, _ = split_job_ref(ref)
    fp, _ = split_slot_id(job.get("gate", ""))
    if not res.sample_url:
        finish(rt, ref, "failed", job, error="Ready without a sample URL")
        return
    meta = rt.runs.recent_meta(run_id)
    output = meta.get("output")
    if not output:
        # The run's metadata went from Redis (evicted, flushed): nowhere known to store the sample.
        fail_lost(rt, run_id, "the run's metadata (its output among it)")
        return
    try:
        sample = rt.provider_for(fp).download(res.sample_url)
        data, content_type, transcoded_from = conform_sample(sample.content, spec.output_format)
        store = rt.store(output)
        name = _output_name(store, run_id, meta, spec)
        uri = store.put(name, data, content_type=content_type)
        side = _sidecar(run_id, spec, job, res, content_type)
        side["run_started_at"] = float(meta["created_at"]) if meta.get("created_at") else None
        if transcoded_from:
            side["transcoded_from"] = transcoded_from
        # One line: json's indented form has no C encoder, and cost 1.6 % of a worker's CPU (profile).
        store.put(name + SIDECAR_SUFFIX, json.dumps(side).encode(), content_type="application/json")
    except SampleExpired as exc:
        if rt.settings.resubmit_expired and int(job.get("attempts", 0)) < rt.settings.max_attempts:
            _resubmit_expired(rt, ref, held, spec, job, res)
            return
        finish(rt, ref, "failed", job, error=f"sample URL expired before download: {exc}", seed=res.seed)
        return
    except RetryableError as exc:
        # The task is Ready and its URL lives 10 minutes: poll again for it and retry the download.
        errors = int(job.get("poll_errors", 0)) + 1
        if errors > 2 * rt.settings.max_attempts:
            finish(rt, ref, "failed", job, error=f"storing failed {errors} times: {exc}")
            return
        delay = backoff_s(rt, errors)
        if rt.jobs.handoff(ref, held, delay, state="polling", poll_errors=errors, last_error=str(exc)):
            rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)
        return
    except (PermanentError, OSError) as exc:
        finish(rt, ref, "failed", job, error=f"not stored: {describe(exc)}", seed=res.seed)
        return
    finish(rt, ref, "succeeded", job, output_uri=uri, seed=res.seed)


def _output_name(store: ObjectStore, run_id: str, meta: dict[str, str], spec: JobSpec) -> str:
    """Where the row's output goes: its name, unless this is a ``retry`` of an ended run and a run
    that started later has made that output since (night 2 re-made a row whose night 1 version is
    retried the morning after). Then the output stays the newer run's, and this one goes into the
    run's own folder (``runs/RUN_ID/NAME``), beside its own results.csv, which links it.

    Only a retry pass reads the sidecar first: a run's first pass is the newest run at its output
    (``run`` refuses a second unfinished run into one output)."""
    if not meta.get("pass_started_at"):
        return spec.output_name
    try:
        side = json.loads(store.get(spec.sidecar_name))
    except (ObjectNotFound, ValueError):
        return spec.output_name
    if not isinstance(side, dict) or side.get("run_id") in (None, run_id):
        return spec.output_name
    return run_file(run_id, spec.output_name) if _started_later(side, meta) else spec.output_name


def _started_later(side: dict[str, Any], meta: dict[str, str]) -> bool:
    """Whether the run that wrote ``side`` started after the run of ``meta``. A sidecar from before
    ``run_started_at`` was kept is dated by its run id (sortable to the second)."""
    if side.get("run_started_at") is not None and meta.get("created_at"):
        return float(side["run_started_at"]) > float(meta["created_at"])
    return str(side["run_id"])[:15] > str(meta.get("id", ""))[:15]


def _sidecar(run_id: str, spec: JobSpec, job: dict[str, str], res: PollResult, content_type: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "row": spec.row,
        "id": spec.id,
        "model": spec.endpoint,
        "prompt": spec.prompt,
        "result_prompt": res.prompt,
        "seed": res.seed,
        "params": spec.params,
        "bfl_task_id": job.get("bfl_task_id"),
        "key_fingerprint": job.get("key") or None,
        "input_digests": spec.digests,
        "job_key": spec.job_key,
        "content_type": content_type,
        "cost_credits": float(job["cost_credits"]) if job.get("cost_credits") else None,
        "timings": {
            "submitted_at": float(job["submitted_at"]) if job.get("submitted_at") else None,
            "api_start_time": res.start_time,
            "api_end_time": res.end_time,
            "api_duration_s": res.duration,
            "stored_at": time.time(),
        },
    }


def _resubmit_expired(rt: Runtime, ref: str, held: str, spec: JobSpec, job: dict[str, str], res: PollResult) -> None:
    run_id, row = split_job_ref(ref)
    left = charge_reserved(rt, run_id, job)  # the expired task was paid for; the next submit reserves anew
    if res.seed is not None and spec.params.get("seed") is None:
        spec = JobSpec.from_json({**spec.to_json(), "params": {**spec.params, "seed": res.seed}})
        rt.runs.set_row(run_id, row, spec.to_json())
    rt.jobs.requeue(ref, job["pool"], spec.endpoint, **left)
    dispatch(rt, job["pool"], spec.endpoint)
