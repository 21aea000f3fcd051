"""What a user would write instead of kontext-batch: the two baselines the benchmark compares against.

``bfl-loop``
    The loop from BFL's documentation: one job at a time; submit, poll the ``polling_url`` every
    0.5 s until Ready, download the sample, write it to a folder; then the next row.
``asyncio``
    A plain ``asyncio`` + ``httpx`` script: every row is a coroutine, ``asyncio.Semaphore(C)`` keeps
    at most C tasks in flight; each does the same submit / poll every 0.5 s / download / write.

Both read the benchmark's CSV manifest (prompt, seed, output_format, an optional ``input_image``
sent as base64) and print one JSON object: rows stored, the wall time from the first submit to the
last file written, and per-row timings. They run as their own process, so they share the machine
with the emulator as kontext-batch's workers do::

    python benchmarks/baselines.py asyncio MANIFEST --base-url URL --key K --out DIR --concurrency 24
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["BaselineResult", "Job", "read_jobs", "run_asyncio", "run_bfl_loop"]

POLL_INTERVAL_S = 0.5  # BFL's example; --poll-interval scales it with a time-scaled emulator
_FAILED = ("Error", "Failed", "Request Moderated", "Content Moderated", "Task not found")


@dataclass(frozen=True)
class Job:
    """One manifest row, as the baseline scripts send it."""

    row: int
    endpoint: str
    body: dict[str, Any]
    output_name: str


@dataclass
class BaselineResult:
    """What one baseline run did; ``wall_s`` runs from the first submit to the last file written."""

    name: str
    rows: int
    stored: int = 0
    failed: int = 0
    polls: int = 0
    retries_429: int = 0
    first_submit_at: float = 0.0
    last_stored_at: float = 0.0
    cpu_s: float = 0.0  # this process's user + system CPU over the run (jobs only: not imports, not the manifest)
    stored_at: dict[str, float] = field(default_factory=dict)  # task id -> when its file was written

    @property
    def wall_s(self) -> float:
        return self.last_stored_at - self.first_submit_at


def read_jobs(manifest: Path, limit: int | None = None) -> list[Job]:
    """The benchmark manifest's rows (see ``manifest_gen.py``) as request bodies."""
    jobs: list[Job] = []
    with manifest.open(newline="", encoding="utf-8") as fh:
        for i, rec in enumerate(csv.DictReader(fh), start=1):
            if limit is not None and i > limit:
                break
            body: dict[str, Any] = {"prompt": rec["prompt"], "output_format": rec.get("output_format") or "png"}
            if rec.get("seed"):
                body["seed"] = int(rec["seed"])
            if rec.get("input_image"):
                body["input_image"] = base64.b64encode((manifest.parent / rec["input_image"]).read_bytes()).decode()
            model = rec.get("model") or "pro"
            endpoint = model if model.startswith("flux-") else f"flux-kontext-{model}"
            jobs.append(Job(i, endpoint, body, rec.get("output_name") or f"{i}.{body['output_format']}"))
    return jobs


def _write(out: Path, name: str, data: bytes) -> None:
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- BFL's documented loop: synchronous, one job at a time -------------------------------------------


def run_bfl_loop(
    jobs: Sequence[Job], base_url: str, key: str, out: Path, poll_interval_s: float = POLL_INTERVAL_S
) -> BaselineResult:
    res = BaselineResult("bfl-loop", len(jobs))
    with httpx.Client(timeout=30.0) as http:
        for job in jobs:
            submitted = time.time()
            r = http.post(f"{base_url}/v1/{job.endpoint}", headers={"x-key": key}, json=job.body)
            r.raise_for_status()
            task = r.json()
            res.first_submit_at = res.first_submit_at or submitted
            while True:
                time.sleep(poll_interval_s)
                body = http.get(task["polling_url"], headers={"x-key": key}).json()
                res.polls += 1
                if body["status"] == "Ready":
                    _write(out, job.output_name, http.get(body["result"]["sample"]).content)
                    res.stored += 1
                    res.last_stored_at = res.stored_at[task["id"]] = time.time()
                    break
                if body["status"] in _FAILED:
                    res.failed += 1
                    break
    return res


# -- asyncio + httpx with a semaphore of C -----------------------------------------------------------


async def _one(
    http: httpx.AsyncClient,
    sem: asyncio.Semaphore,
    job: Job,
    base_url: str,
    key: str,
    out: Path,
    res: BaselineResult,
    poll_interval_s: float,
) -> None:
    async with sem:
        while True:
            submitted = time.time()
            r = await http.post(f"{base_url}/v1/{job.endpoint}", headers={"x-key": key}, json=job.body)
            if r.status_code != 429:
                break
            res.retries_429 += 1
            await asyncio.sleep(1.0)
        r.raise_for_status()
        task = r.json()
        if not res.first_submit_at or submitted < res.first_submit_at:
            res.first_submit_at = submitted
        while True:
            await asyncio.sleep(poll_interval_s)
            body = (await http.get(task["polling_url"], headers={"x-key": key})).json()
            res.polls += 1
            if body["status"] == "Ready":
                sample = await http.get(body["result"]["sample"])
                _write(out, job.output_name, sample.content)
                res.stored += 1
                res.last_stored_at = res.stored_at[task["id"]] = time.time()
                return
            if body["status"] in _FAILED:
                res.failed += 1
                return


async def _run_asyncio(
    jobs: Sequence[Job], base_url: str, key: str, out: Path, concurrency: int, poll_interval_s: float
) -> BaselineResult:
    res = BaselineResult("asyncio", len(jobs))
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        await asyncio.gather(*(_one(http, sem, j, base_url, key, out, res, poll_interval_s) for j in jobs))
    return res


def run_asyncio(
    jobs: Sequence[Job], base_url: str, key: str, out: Path, concurrency: int, poll_interval_s: float = POLL_INTERVAL_S
) -> BaselineResult:
    return asyncio.run(_run_asyncio(jobs, base_url, key, out, concurrency, poll_interval_s))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run one baseline against a Kontext API (or the emulator).")
    p.add_argument("kind", choices=("bfl-loop", "asyncio"))
    p.add_argument("manifest", type=Path)
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", type=int, default=None, help="only the first ROWS rows")
    p.add_argument("--concurrency", type=int, default=24, help="asyncio: the semaphore's size")
    p.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_S, help="seconds between polls")
    a = p.parse_args(argv)
    jobs = read_jobs(a.manifest, a.rows)
    cpu0 = time.process_time()
    if a.kind == "bfl-loop":
        res = run_bfl_loop(jobs, a.base_url.rstrip("/"), a.key, a.out, a.poll_interval)
    else:
        res = run_asyncio(jobs, a.base_url.rstrip("/"), a.key, a.out, a.concurrency, a.poll_interval)
    res.cpu_s = time.process_time() - cpu0
    print(json.dumps({**asdict(res), "wall_s": res.wall_s}))


if __name__ == "__main__":
    main()
