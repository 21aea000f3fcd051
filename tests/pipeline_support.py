"""In-process pipeline runs for tests: the real pipeline, Redis and emulator, with steps run inline.

:class:`InlineScheduler` is our own ``Scheduler`` seam (like dramatiq's stub broker): it runs each
step in this process, in due order, so a test can deliver a message twice or delay a poll.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kontext_batch.coord.keys import job_ref
from kontext_batch.coord.pools import Pool
from kontext_batch.jobspec import JobSpec
from kontext_batch.runtime import Runtime, connect_redis
from kontext_batch.settings import Settings
from kontext_batch.steps.dispatch import dispatch
from kontext_batch.steps.poll import poll_job
from kontext_batch.steps.submit import submit_job
from kontext_batch.steps.timing import PollPlanner


@dataclass
class InlineScheduler:
    duplicate: bool = False
    extra_poll_delay: Callable[[str, int], float] = lambda ref, n: 0.0
    queue: list[tuple[float, int, str, str, int]] = field(default_factory=list)
    sent: list[tuple[str, str, int]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _polls: dict[str, int] = field(default_factory=dict)

    def _push(self, kind: str, ref: str, token: int, countdown_s: float) -> None:
        self.sent.append((kind, ref, token))
        for _ in range(2 if self.duplicate else 1):
            heapq.heappush(self.queue, (time.monotonic() + countdown_s, next(self._seq), kind, ref, token))

    def submit(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._push("submit", ref, token, countdown_s)

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        n = self._polls.get(ref, 0)
        self._polls[ref] = n + 1
        self._push("poll", ref, token, countdown_s + self.extra_poll_delay(ref, n))

    def run(self, rt: Runtime, *, timeout_s: float = 60) -> int:
        """Run steps until none is left. Returns how many ran."""
        deadline = time.monotonic() + timeout_s
        ran = 0
        while self.queue:
            due, _, kind, ref, token = heapq.heappop(self.queue)
            if time.monotonic() > deadline:
                raise TimeoutError("inline pipeline did not finish")
            time.sleep(max(0.0, due - time.monotonic()))
            rt.beat()  # this process is the live holder of the test's key
            (submit_job if kind == "submit" else poll_job)(rt, ref, token)
            ran += 1
        return ran


def inline_runtime(settings: Settings, scheduler: InlineScheduler) -> Runtime:
    rt = Runtime(
        settings=settings,
        redis=connect_redis(settings.effective_redis_url),
        scheduler=scheduler,
        planner=PollPlanner.from_settings(settings),
    )
    rt.beat()
    return rt


def start_specs(rt: Runtime, run_id: str, output: str, specs: list[JobSpec]) -> None:
    """Register a run of ready-made specs and queue them, as runner.start_run would."""
    pool = Pool.of([rt.settings.api_key.fingerprint])
    meta = {
        "id": run_id,
        "output": output,
        "total": len(specs),
        "status": "running",
        "extra_columns": [],
        "pool": pool.id,
    }
    rt.pools.register_pool(pool)
    rt.runs.register(run_id, meta)
    rt.runs.put_rows(run_id, [(s.row, s.to_json()) for s in specs])
    for endpoint in {s.endpoint for s in specs}:
        rt.slots.enqueue(pool.id, endpoint, [job_ref(run_id, s.row) for s in specs if s.endpoint == endpoint])
        dispatch(rt, pool.id, endpoint)


def text_specs(n: int, endpoint: str = "flux-kontext-pro", **params: object) -> list[JobSpec]:
    return [
        JobSpec(
            row=i,
            id=f"r{i}",
            endpoint=endpoint,
            prompt=f"a studio photo of product {i}",
            params={"seed": i, **params},
            images=[],
            digests=[],
            output_name=f"out/{i}.png",
            output_format="png",
        )
        for i in range(1, n + 1)
    ]
