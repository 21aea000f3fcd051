"""Redis key names and the ids stored in them, in one place; the table of keys is in :mod:`kontext_batch.coord`."""

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
        """The set of the wait ids (:func:`wait_id`) of every wait list ever used. The key keeps its
        old name, ``gates``, so that a Redis written by an earlier version is still read."""
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

    def run_ended(self, run_id: str) -> str:
        """The pub/sub channel on which a run's end is announced (:mod:`kontext_batch.coord.ends`); no key."""
        return f"{self.ns}:run:{run_id}:ended"

    def rows_waiting(self, db: int) -> str:
        """The pub/sub channel on which newly waiting rows of database ``db`` are announced
        (:mod:`kontext_batch.coord.nudges`); no key. Pub/sub spans a server's databases: without the
        number, a worker of another database would hear, and be counted as having heard."""
        return f"{self.ns}:rows-waiting:{db}"

    def finalizing(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:finalizing"

    def output_lock(self, url: str) -> str:
        """The merge lock of one output store (:mod:`kontext_batch.coord.outputs`), by its URL."""
        return f"{self.ns}:output-lock:{url}"

    @property
    def ended_runs(self) -> str:
        return f"{self.ns}:runs:ended"

    def run_gone(self, run_id: str) -> str:
        return f"{self.ns}:run-gone:{run_id}"

    def proc(self, proc: str) -> str:
        return f"{self.ns}:proc:{proc}"

    def holders(self, fp: str) -> str:
        return f"{self.ns}:holders:{fp}"

    def replica_probe(self, proc: str) -> str:
        return f"{self.ns}:replica-probe:{proc}"

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

    def latency(self, endpoint: str) -> str:
        """The poll planners' shared task latencies on one endpoint (:mod:`~kontext_batch.coord.latencies`)."""
        return f"{self.ns}:latency:{endpoint}"

    @property
    def demand(self) -> str:
        return f"{self.ns}:demand"

    @property
    def submit_rate(self) -> str:
        """The prefix of the submit-rate windows: one key per second, ``{prefix}:{epoch second}``."""
        return f"{self.ns}:submit-rate"
