"""Start a run: validate the whole manifest, register the run, stage inputs, queue every row.

Nothing is queued unless every row is valid (or the caller asked to record invalid rows as such):
validation is a full streaming pass before the first write. Rows whose output already exists for the
same inputs and parameters are recorded ``skipped`` unless ``force``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kontext_batch.errors import ManifestError
from kontext_batch.jobspec import JobSpec
from kontext_batch.keys import job_ref
from kontext_batch.manifest.reader import iter_manifest
from kontext_batch.manifest.staging import StageCache, stage_image
from kontext_batch.manifest.validate import ValidationReport, validate_manifest
from kontext_batch.netguard import FetchPolicy
from kontext_batch.pipeline import dispatch, finalize
from kontext_batch.runs import new_run_id
from kontext_batch.runtime import Runtime
from kontext_batch.storage import ObjectStore

__all__ = ["EnqueueReport", "spooled_manifest", "start_run"]


@dataclass
class EnqueueReport:
    run_id: str
    total: int
    queued: int = 0
    invalid: int = 0
    skipped: int = 0
    cost_credits: int = 0
    validation: ValidationReport | None = field(default=None, repr=False)


@contextlib.contextmanager
def spooled_manifest(manifest: str, stdin: TextIO | None = None) -> Iterator[str]:
    """``-`` means stdin: copy it to a temporary file once, since a run reads the manifest twice."""
    if manifest != "-":
        yield manifest
        return
    src = stdin or sys.stdin
    first = src.read(1)
    suffix = ".jsonl" if first == "{" else ".csv"
    with tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False, encoding="utf-8") as tmp:
        tmp.write(first)
        shutil.copyfileobj(src, tmp)
    try:
        yield tmp.name
    finally:
        Path(tmp.name).unlink(missing_ok=True)


def _existing_outputs(store: ObjectStore) -> set[str]:
    return {n for n in store.list() if not n.startswith("_inputs/")}


def _already_done(store: ObjectStore, existing: set[str], spec: JobSpec) -> str | None:
    if spec.output_name not in existing or spec.sidecar_name not in existing:
        return None
    try:
        side = json.loads(store.get(spec.sidecar_name))
    except (OSError, ValueError):
        return None
    return store.uri(spec.output_name) if side.get("job_key") == spec.job_key else None


def start_run(
    rt: Runtime,
    manifest: str,
    *,
    output: str,
    default_model: str,
    skip_invalid: bool = False,
    force: bool = False,
    inputs_root: Path | None = None,
) -> EnqueueReport:
    """Validate, register and queue ``manifest``. Raises ManifestError (nothing queued) on bad rows.

    ``inputs_root`` confines local input images to one folder (see ``validate_manifest``).
    """
    cache = StageCache()  # validation reads each image once; staging reuses what it learnt
    fetch = FetchPolicy.from_settings(rt.settings)
    report = validate_manifest(manifest, default_model=default_model, cache=cache, fetch=fetch, inputs_root=inputs_root)
    if report.errors and not skip_invalid:
        raise ManifestError(report.errors)
    store = rt.store(output)
    run_id = new_run_id()
    rt.runs.register(
        run_id,
        {
            "id": run_id,
            "manifest": str(Path(manifest).resolve()) if manifest != "-" else "-",
            "output": store.url,
            "total": report.rows_total,
            "default_model": default_model,
            "status": "enqueuing",
            "created_at": time.time(),
            "fp": rt.settings.api_key.fingerprint,
            "force": int(force),
        },
    )
    out = EnqueueReport(run_id=run_id, total=report.rows_total, validation=report)
    existing = set() if force else _existing_outputs(store)
    extra_cols: dict[str, None] = {}
    waiting: dict[str, list[str]] = {}
    specs: list[tuple[int, dict[str, Any]]] = []
    for outcome in iter_manifest(manifest, default_model=default_model, inputs_root=inputs_root):
        ref = job_ref(run_id, outcome.row)
        row = outcome.value
        for col in (row.extra if row else {}) or {}:
            extra_cols.setdefault(col, None)
        if row is None or outcome.errors:
            raw = outcome.raw or {}
            specs.append(
                (
                    outcome.row,
                    {
                        "row": outcome.row,
                        "id": raw.get("id") or str(outcome.row),
                        "prompt": raw.get("prompt", ""),
                        "extra": {},
                    },
                )
            )
            _flush(rt, run_id, specs)
            rt.runs.record(
                run_id,
                outcome.row,
                {
                    "status": "invalid",
                    "finished_at": time.time(),
                    "error": "; ".join(f"{e.field}: {e.msg}" for e in outcome.errors),
                },
                ref=ref,
            )
            out.invalid += 1
            continue
        staged = [stage_image(img, store, cache) for img in row.images]
        spec = JobSpec(
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
        )
        specs.append((row.row, spec.to_json()))
        done_uri = _already_done(store, existing, spec)
        if done_uri is not None:
            _flush(rt, run_id, specs)
            rt.runs.record(
                run_id, row.row, {"status": "skipped", "output_uri": done_uri, "finished_at": time.time()}, ref=ref
            )
            out.skipped += 1
            continue
        waiting.setdefault(row.endpoint, []).append(ref)
        out.queued += 1
        if len(specs) >= 1000:
            _flush(rt, run_id, specs)
        if len(waiting[row.endpoint]) >= 1000:
            _flush(rt, run_id, specs)
            rt.gate.enqueue(rt.gate_for(row.endpoint), waiting.pop(row.endpoint))
    _flush(rt, run_id, specs)
    for endpoint, refs in waiting.items():
        rt.gate.enqueue(rt.gate_for(endpoint), refs)
    out.cost_credits = report.cost_credits
    rt.runs.update(
        run_id,
        status="running",
        extra_columns=list(extra_cols),
        queued=out.queued,
        skipped=out.skipped,
        invalid=out.invalid,
    )
    for endpoint in {*waiting, *(e for e in report.per_endpoint)}:
        dispatch(rt, rt.gate_for(endpoint))
    if rt.runs.info(run_id).ndone >= out.total:
        finalize(rt, run_id)
    return out


def _flush(rt: Runtime, run_id: str, specs: list[tuple[int, dict[str, Any]]]) -> None:
    if specs:
        rt.runs.put_rows(run_id, specs)
        specs.clear()
