"""Redis key layout, in one place. Every key starts with the namespace (``kb`` by default).

==============================  ======  =========================================================
key                             type    holds
==============================  ======  =========================================================
{ns}:gates                      set     wait ids "{pool}|{endpoint}" of every wait list ever used
{ns}:pools                      hash    pool id -> JSON list of the key fingerprints of the pool
{ns}:keys-out                   hash    key fingerprint -> why the API refused it (401/403/402)
{ns}:lease:{fp}                 zset    job refs holding an active slot on the key; score=expiry ms
{ns}:lease:{fp}:{endpoint}      zset    the same, one endpoint
{ns}:wait:{pool}:{endpoint}     list    job refs waiting for a slot on any key of the pool, FIFO
{ns}:watch                      zset    job refs in flight (granted..stored); score=deadline ms
{ns}:proc:{proc}                string  a live worker process's heartbeat (5 s TTL): its keys' caps
{ns}:holders:{fp}               zset    processes holding the key; score=heartbeat expiry ms
{ns}:key-caps                   hash    key fingerprint -> caps its holders announce (JSON)
{ns}:budget:{run}               hash    budget, spent, reserved (credits) of one run
{ns}:delayed                    zset    task messages not due yet; score=due time ms
{ns}:job:{run}:{row}            hash    one in-flight job: step (fencing token), state, busy, holder,
                                        pool, gate, attempts, polls, poll_errors, task id, polling
                                        URL, cost, possible_duplicate, timings
{ns}:runs                       zset    run ids by creation time
{ns}:runs:open                  set     runs not yet finalized (swept for completion)
{ns}:run:{run}                  hash    run metadata (manifest, output, total, status, flags)
{ns}:run:{run}:rows             hash    row -> the row's job spec (JSON)
{ns}:run:{run}:results          hash    row -> the row's final result (JSON); written once
{ns}:run:{run}:counts           hash    status -> number of final rows; "submitted" etc.
{ns}:run:{run}:ndone            string  number of final rows (the completion counter)
{ns}:run:{run}:finalizing       string  claim of the one results.csv writer (expires after 300 s)
{ns}:submit-rate                string  the global submits-per-second window
==============================  ======  =========================================================

Owners: :mod:`~kontext_batch.coord.slots`, :mod:`~kontext_batch.coord.jobs` and :mod:`~kontext_batch.coord.pools`
write ``gates``, ``pools``, ``keys-out``, ``lease``, ``wait``, ``watch`` and ``job`` (the job scripts read ``proc``
to tell a live holder from a dead one);
:mod:`~kontext_batch.coord.holders` ``proc``, ``holders`` and ``key-caps``; :mod:`~kontext_batch.coord.runs` the
``runs`` and ``run`` keys; :mod:`~kontext_batch.coord.budget` ``budget``; :mod:`~kontext_batch.coord.delays`
``delayed``; :mod:`~kontext_batch.coord.ratelimit`
``submit-rate``. Everyone else goes through their methods.

A job ref is ``"{run}:{row}"``. No key or value ever holds the API key: accounts are told apart by
its fingerprint (:attr:`kontext_batch.secret.Secret.fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys", "job_ref", "slot_id", "split_job_ref", "split_slot_id", "split_wait_id", "wait_id"]


def job_ref(run_id: str, row: int) -> str:
    return f"{run_id}:{row}"


def split_job_ref(ref: str) -> tuple[str, int]:
    run_id, _, row = ref.rpartition(":")
    return run_id, int(row)


def slot_id(fp: str, endpoint: str) -> str:
    """One key's slots on one endpoint, as a job records them (its field ``gate``): ``"{fp}|{endpoint}"``."""
    return f"{fp}|{endpoint}"


def split_slot_id(sid: str) -> tuple[str, str]:
    """``(fp, endpoint)`` of a slot id; ``("", "")`` for a job that holds none."""
    fp, _, endpoint = sid.partition("|")
    return fp, endpoint


def wait_id(pool_id: str, endpoint: str) -> str:
    """One pool's wait list for one endpoint, as :attr:`Keys.wait_ids` lists it: ``"{pool}|{endpoint}"``."""
    return f"{pool_id}|{endpoint}"


def split_wait_id(wid: str) -> tuple[str, str]:
    """``(pool id, endpoint)`` of a wait id."""
    pool_id, _, endpoint = wid.partition("|")
    return pool_id, endpoint


@dataclass(frozen=True)
class Keys:
    """Every Redis key name, under the namespace ``ns``. The system always uses ``kb``: no setting
    changes it (tests pass their own to keep apart from a running system)."""

    ns: str = "kb"

    @property
    def wait_ids(self) -> str:
        """The set of the wait ids (:func:`wait_id`) of every wait list ever used (its key keeps the
        name it had when wait lists were called gates)."""
        return f"{self.ns}:gates"

    def lease_total(self, fp: str) -> str:
        return f"{self.ns}:lease:{fp}"

    def lease(self, fp: str, endpoint: str) -> str:
        return f"{self.ns}:lease:{fp}:{endpoint}"

    def wait(self, pool_id: str, endpoint: str) -> str:
        return f"{self.ns}:wait:{pool_id}:{endpoint}"

    @property
    def watch(self) -> str:
        return f"{self.ns}:watch"

    @property
    def job_prefix(self) -> str:
        return f"{self.ns}:job:"

    def job(self, ref: str) -> str:
        return f"{self.ns}:job:{ref}"

    @property
    def runs(self) -> str:
        return f"{self.ns}:runs"

    @property
    def open_runs(self) -> str:
        return f"{self.ns}:runs:open"

    def run(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}"

    def rows(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:rows"

    def results(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:results"

    def counts(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:counts"

    def ndone(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:ndone"

    def finalizing(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:finalizing"

    def proc(self, proc: str) -> str:
        return f"{self.ns}:proc:{proc}"

    def holders(self, fp: str) -> str:
        return f"{self.ns}:holders:{fp}"

    @property
    def key_caps(self) -> str:
        return f"{self.ns}:key-caps"

    @property
    def pools(self) -> str:
        return f"{self.ns}:pools"

    @property
    def keys_out(self) -> str:
        return f"{self.ns}:keys-out"

    @property
    def delayed(self) -> str:
        return f"{self.ns}:delayed"

    def budget(self, run_id: str) -> str:
        return f"{self.ns}:budget:{run_id}"

    @property
    def submit_rate(self) -> str:
        """The prefix of the submit-rate windows: one key per second, ``{prefix}:{epoch second}``."""
        return f"{self.ns}:submit-rate"
