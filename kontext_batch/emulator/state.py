"""The emulator's bookkeeping: tasks, keys, active counts, credits and the numbers behind /_emulator/stats.

Plain synchronous code, touched only from the event loop, never across an ``await``: a check and
the change it guards (cap, credits, new task) happen in one step, so no lock is needed.

A task's fate is fixed at submit: its outcome is drawn from the seeded RNG and its ``ready_at`` is
submit time plus a latency draw times ``time_scale``. Its status at any moment follows from the
clock; :meth:`EmulatorState.sweep` retires tasks whose time has come, in ``ready_at`` order, so
active counts drop exactly when a poll would first see the terminal status.

Keys are kept only as :class:`~kontext_batch.secret.Secret` fingerprints.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import random
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from kontext_batch.emulator.config import OUTCOME_FAULTS, EmulatorConfig, check_faults
from kontext_batch.emulator.task import CONTENT_MODERATED, ERROR, READY, REQUEST_MODERATED, TaskRecord
from kontext_batch.secret import Secret

__all__ = ["EmulatorState", "KeyCounters", "Rejected", "fingerprint"]

_OUTCOME_STATUS: Final = {
    "request-moderated": REQUEST_MODERATED,
    "content-moderated": CONTENT_MODERATED,
    "error": ERROR,
}
#: Reported as /v1/credits when a key has no credit limit.
UNLIMITED_CREDITS: Final = 1_000_000.0


def fingerprint(key: str) -> str:
    return Secret(key).fingerprint


class Rejected(Exception):
    """Raised when a submit is refused: ``status`` is the HTTP status (429 or 402)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _nested_counts() -> dict[str, Counter[str]]:
    return {}


@dataclass
class KeyCounters:
    """One key's share of the stats; active and peak counts live in ``EmulatorState.active``/``peak``."""

    #: Tasks created for this key: every admitted submit, whether its answer reached the client or not.
    tasks_created: int = 0
    #: Submits refused for a full active cap.
    rejected_429: int = 0
    #: Every 429 this key was answered: cap refusals plus injected ``429`` faults.
    answers_429: int = 0
    rejected_402: int = 0
    #: Credits charged, counted even when the key has no credit limit.
    credits_spent: float = 0.0


class EmulatorState:
    """All mutable emulator state. Create one per app; :meth:`reset` returns it to the config's."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._allowed = {fingerprint(k) for k in config.api_keys}
        self._cap_by_key = {fingerprint(k): n for k, n in config.max_active_total_by_key.items()}
        self._credits_by_key = {fingerprint(k): c for k, c in config.credits_by_key.items()}
        self.signing_key = secrets.token_bytes(32)
        self.reset()

    def reset(self) -> None:
        """Forget every task and counter; credits and faults go back to the config's."""
        self.rng = random.Random(self.config.seed)
        self.faults: dict[str, float] = dict(self.config.faults)
        self.tasks: dict[str, TaskRecord] = {}
        self._due: list[tuple[float, str]] = []
        self._expiring: list[tuple[float, str]] = []
        self._held: dict[str, int] = {}  # task id -> bytes of its rendered sample, oldest first
        self._held_bytes = 0
        self.samples_evicted = 0
        self.samples_rendered = 0
        self.active: dict[str, Counter[str]] = _nested_counts()
        self.peak: dict[str, Counter[str]] = _nested_counts()
        self.credits: dict[str, float | None] = {}
        self.revoked: set[str] = set()
        self.keys: dict[str, KeyCounters] = {fp: KeyCounters() for fp in sorted(self._allowed)}
        self.submits = self.rejected_429 = self.rejected_402 = self.polls = self.downloads = 0
        self.webhooks_sent = self.webhooks_failed = 0
        self.final_status: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()

    @staticmethod
    def now() -> float:
        return time.time()

    # -- keys and credits -------------------------------------------------------------------------

    def authenticate(self, key: str | None) -> str | None:
        """The key's fingerprint, or None when it is missing or (with api_keys set) unknown."""
        if not key:
            return None
        fp = fingerprint(key)
        if (self._allowed and fp not in self._allowed) or fp in self.revoked:
            return None
        return fp

    def credits_of(self, fp: str) -> float | None:
        if fp in self.credits:
            return self.credits[fp]
        return self._credits_by_key.get(fp, self.config.credits)

    def cap_of(self, fp: str) -> int:
        """The key's active-task cap over all endpoints."""
        return self._cap_by_key.get(fp, self.config.max_active_total)

    def key(self, fp: str) -> KeyCounters:
        """The key's counters, created on first use (any key is accepted when api_keys is empty)."""
        return self.keys.setdefault(fp, KeyCounters())

    def revoke(self, key: str) -> None:
        """From now on the key is refused (403), as the real API refuses a key deleted mid-run."""
        self.revoked.add(fingerprint(key))

    def set_credits(self, key: str, credits: float | None) -> None:
        self.credits[fingerprint(key)] = credits

    def set_faults(self, faults: dict[str, float]) -> None:
        self.faults = check_faults(faults)

    # -- faults -----------------------------------------------------------------------------------

    def draw_fault(self, kinds: tuple[str, ...]) -> str | None:
        """The first of ``kinds`` whose rate fires on this request, counted in faults_injected."""
        for kind in kinds:
            rate = self.faults.get(kind, 0.0)
            if rate > 0 and self.rng.random() < rate:
                self.faults_injected[kind] += 1
                return kind
        return None

    def draw_outcome(self, prompt: str = "") -> str:
        """The task's fate: forced by a marker in the prompt, else drawn at the configured rates.

        Markers (``[emulator:request-moderated]``, ``[emulator:content-moderated]``,
        ``[emulator:error]``) let a pipeline's own CI pin one row's outcome without random faults.
        """
        for kind, status in _OUTCOME_STATUS.items():
            if f"[emulator:{kind}]" in prompt:
                return status
        r = self.rng.random()
        edge = 0.0
        for kind in OUTCOME_FAULTS:
            edge += self.faults.get(kind, 0.0)
            if r < edge:
                self.faults_injected[kind] += 1
                return _OUTCOME_STATUS[kind]
        return READY

    # -- tasks ------------------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> None:
        """Retire every task whose ready time has passed: free its active slot, count its status."""
        now = self.now() if now is None else now
        while self._due and self._due[0][0] <= now:
            _, task_id = heapq.heappop(self._due)
            task = self.tasks.get(task_id)
            if task is not None and not task.terminal:
                self._retire(task)
        # Rendered samples are held only while their URL is valid: memory stays bounded on long runs.
        while self._expiring and self._expiring[0][0] <= now:
            _, task_id = heapq.heappop(self._expiring)
            if (task := self.tasks.get(task_id)) is not None:
                self._drop_sample(task)

    def _retire(self, task: TaskRecord) -> None:
        task.terminal = True
        self.final_status[task.outcome] += 1
        if task.outcome != REQUEST_MODERATED:
            counts = self.active[task.key_fp]
            counts[task.endpoint] -= 1
            counts["total"] -= 1

    def admit(self, fp: str, endpoint: str) -> float:
        """Check caps and credits for one more task; raise :class:`Rejected`, else charge and return cost."""
        self.sweep()
        counts = self.active.setdefault(fp, Counter(total=0))
        counters = self.key(fp)
        cap = self.config.max_active.get(endpoint)
        total_cap = self.cap_of(fp)
        message = None
        if cap is not None and counts[endpoint] >= cap:
            message = f"Too many active tasks for {endpoint}: the limit is {cap} per account"
        elif counts["total"] >= total_cap:
            message = f"Too many active tasks: the limit is {total_cap} per account"
        if message is not None:
            self.rejected_429 += 1
            counters.rejected_429 += 1
            counters.answers_429 += 1
            raise Rejected(429, message)
        cost = self.config.cost_for(endpoint)
        balance = self.credits_of(fp)
        if balance is not None:
            if balance < cost:
                self.rejected_402 += 1
                counters.rejected_402 += 1
                raise Rejected(402, "Insufficient credits")
            self.credits[fp] = balance - cost
        counters.credits_spent += cost
        return cost

    def add(self, task: TaskRecord) -> None:
        """Register an admitted task; it is active until ready_at unless moderated at once."""
        self.tasks[task.id] = task
        self.submits += 1
        self.key(task.key_fp).tasks_created += 1
        if task.outcome == REQUEST_MODERATED:
            self._retire(task)
            return
        counts = self.active.setdefault(task.key_fp, Counter(total=0))
        counts[task.endpoint] += 1
        counts["total"] += 1
        peak = self.peak.setdefault(task.key_fp, Counter(total=0))
        for name in (task.endpoint, "total"):
            peak[name] = max(peak[name], counts[name])
        heapq.heappush(self._due, (task.ready_at, task.id))
        heapq.heappush(self._expiring, (task.ready_at + self.config.sample_ttl_s, task.id))

    def hold_sample(self, task: TaskRecord, size: int) -> None:
        """Account a rendered sample; past ``sample_cache_mb``, drop the oldest (downloaded ones first).

        A dropped sample answers 404 BlobNotFound, as a deleted blob does; ``samples_evicted`` counts them.
        """
        if task.sample is None or self.tasks.get(task.id) is not task:
            return
        self._held[task.id] = size
        self._held_bytes += size
        budget = self.config.sample_cache_mb * 1024 * 1024
        while self._held_bytes > budget and len(self._held) > 1:
            victim_id = next((i for i in self._held if self.tasks[i].downloads > 0), next(iter(self._held)))
            self._drop_sample(self.tasks[victim_id])
            self.samples_evicted += 1

    def _drop_sample(self, task: TaskRecord) -> None:
        task.sample = None
        self._held_bytes -= self._held.pop(task.id, 0)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def latency_s(self, endpoint: str) -> float:
        return self.config.latency_for(endpoint).sample(self.rng) * self.config.time_scale

    # -- delivery URLs ----------------------------------------------------------------------------

    def sign(self, path: str, se: str) -> str:
        return hmac.new(self.signing_key, f"{path}\n{se}".encode(), hashlib.sha256).hexdigest()

    def sample_path(self, task: TaskRecord) -> tuple[str, str, str]:
        """(path, se, sig) of the task's sample URL; it expires sample_ttl_s after ready_at."""
        path = f"/delivery/results/{task.id}/sample.{task.extension}"
        se = f"{task.ready_at + self.config.sample_ttl_s:.3f}"
        return path, se, self.sign(path, se)

    def sample_url(self, task: TaskRecord) -> str:
        path, se, sig = self.sample_path(task)
        query = f"se={se}&sp=r&sv=2024-11-04&sr=b&rsct=image/{task.output_format}&sig={sig}"
        return f"{task.scheme}://{task.poll_host}{path}?{query}"

    # -- stats ------------------------------------------------------------------------------------

    def _key_stats(self, fp: str, counters: KeyCounters) -> dict[str, Any]:
        return {
            "tasks_created": counters.tasks_created,
            "active": dict(self.active.get(fp, Counter(total=0))),
            "peak_active": dict(self.peak.get(fp, Counter(total=0))),
            "max_active_total": self.cap_of(fp),
            "rejected_429": counters.rejected_429,
            "answers_429": counters.answers_429,
            "rejected_402": counters.rejected_402,
            "credits": self.credits_of(fp),
            "credits_spent": counters.credits_spent,
        }

    def stats(self, include_tasks: bool = True) -> dict[str, Any]:
        self.sweep()
        polls = [t.polls for t in self.tasks.values()]
        out: dict[str, Any] = {
            "submits": self.submits,
            "tasks_created": self.submits,
            "rejected_429": self.rejected_429,
            "rejected_402": self.rejected_402,
            "polls": self.polls,
            "polls_per_task_mean": round(sum(polls) / len(polls), 3) if polls else 0.0,
            "polls_per_task_max": max(polls, default=0),
            "downloads": self.downloads,
            "active": {fp: dict(c) for fp, c in self.active.items()},
            "peak_active": {fp: dict(c) for fp, c in self.peak.items()},
            "final_status": dict(self.final_status),
            "faults_injected": dict(self.faults_injected),
            "webhooks_sent": self.webhooks_sent,
            "webhooks_failed": self.webhooks_failed,
            "samples_held_bytes": self._held_bytes,
            "samples_evicted": self.samples_evicted,
            "samples_rendered": self.samples_rendered,
            "credits": dict(self.credits),
            "keys": {fp: self._key_stats(fp, c) for fp, c in self.keys.items()},
        }
        if include_tasks:
            now = self.now()
            out["tasks"] = {
                t.id: {
                    "endpoint": t.endpoint,
                    "key": t.key_fp,
                    "prompt": t.prompt,
                    "submitted_at": t.submitted_at,
                    "ready_at": t.ready_at,
                    "status": t.status_at(now),
                    "polls": t.polls,
                    "downloads": t.downloads,
                    "first_download_at": t.first_download_at,
                    "seen_done_at": t.seen_done_at,
                }
                for t in self.tasks.values()
            }
        return out
