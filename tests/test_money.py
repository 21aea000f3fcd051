"""Every credit spent on purpose: jobs bound to their key, key pools, a hanging API, kills, budgets.

Real worker processes (each holding its own keys), the emulator over HTTP with per-key caps and
credits, real Redis and the CLI. The emulator counts what each key was billed, so these tests read
the money side from the API's books, not from ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from kontext_batch.coord.budget import Budget
from kontext_batch.coord.keys import Keys
from kontext_batch.coord.runs import RunInfo, RunStore
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.local import WorkerPool
from kontext_batch.secret import Secret
from kontext_batch.settings import ApiKey, Settings
from tests import fault_figures
from tests.e2e_support import read_results, write_csv
from tests.e2e_support import wait_finished as wait_run
from tests.settings_support import fast_settings

pytestmark = pytest.mark.faults

KEY_A = "money-key-a-5d1e"
KEY_B = "money-key-b-9c2f"
KEY_C = "money-key-c-0a7b"
FP = {k: Secret(k).fingerprint for k in (KEY_A, KEY_B, KEY_C)}
PRO_CREDITS = 4
FAST: dict[str, Any] = {
    "http_timeout_s": 2.0,
    "retry_base_s": 0.05,
    "retry_max_s": 0.5,
    "poll_first_s": 0.2,
    "poll_min_s": 0.05,
    "poll_max_s": 1.0,
    "step_grace_s": 5.0,
}


@pytest.fixture(autouse=True, scope="module")
def _figures_plugin(pytestconfig: pytest.Config) -> None:
    fault_figures.register(pytestconfig)


@dataclass
class Stack:
    emu: Emulator
    redis_url: str
    pools: list[WorkerPool] = field(default_factory=list)
    _exit: ExitStack = field(default_factory=ExitStack)

    def settings(self, *keys: str, pool: tuple[str, ...] = (), **kw: Any) -> Settings:
        api_keys = tuple(ApiKey(Secret(k)) for k in (*keys[1:], *pool))
        return fast_settings(
            self.emu.base_url, self.redis_url, api_key=keys[0] if keys else "", api_keys=api_keys, **{**FAST, **kw}
        )

    def workers(self, *keys: str, n: int = 1, **kw: Any) -> WorkerPool:
        """``n`` worker processes holding ``keys`` (the first as KONTEXT_API_KEY, the rest as KONTEXT_API_KEYS)."""
        pool = WorkerPool(self.settings(*keys, **kw), n=n, concurrency=16, loglevel="INFO")
        self._exit.enter_context(pool)
        self.pools.append(pool)
        return pool

    def cli(
        self, *args: str, keys: tuple[str, ...] = (), pool: tuple[str, ...] = (), **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
        env.update(self.settings(*keys, pool=pool, **kw).to_env())
        return subprocess.run(
            [sys.executable, "-m", "kontext_batch", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def start(self, manifest: Path, out: Path, *extra: str, **kw: Any) -> str:
        proc = self.cli("run", str(manifest), "--output", str(out), *extra, **kw)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip().splitlines()[-1]


@contextmanager
def stack(redis_url: str, cfg: EmulatorConfig) -> Iterator[Stack]:
    with Emulator(cfg) as emu:
        s = Stack(emu, redis_url)
        with s._exit:
            yield s


def emulator(latency_s: float, **kw: Any) -> EmulatorConfig:
    base: dict[str, Any] = {
        "latency": {"*": LatencySpec.fixed(latency_s)},
        "api_keys": (KEY_A, KEY_B, KEY_C),
        "seed": 9,
        "render": "fast",
    }
    base.update(kw)
    return EmulatorConfig(**base)


def text_rows(tmp: Path, n: int, name: str = "m.csv", tag: str = "") -> Path:
    rows = [{"id": f"{tag}r{i:04d}", "prompt": f"product {tag}{i} on white", "output_format": "jpeg"} for i in range(n)]
    return write_csv(tmp / name, ["id", "prompt", "output_format"], rows)


def wait_finished(redis_url: str, run_id: str, timeout_s: float, during: Any = None) -> RunInfo:
    return wait_run(RunStore(redis.Redis.from_url(redis_url), Keys()), run_id, timeout_s, during=during)


def results_of(out: Path) -> list[dict[str, str]]:
    return read_results((out / "results.csv").read_bytes())


def once_each(results: list[dict[str, str]], n: int) -> None:
    """Every manifest row has exactly one line: none lost, none duplicated."""
    assert sorted(int(r["row"]) for r in results) == list(range(1, n + 1))


# -- jobs belong to their key ------------------------------------------------------------------------


def test_two_keys_on_one_redis_each_pay_for_their_own_rows(redis_url: str, tmp_path: Path) -> None:
    cfg = emulator(0.4, max_active_total=4, max_active={"flux-kontext-max": 4})
    n = 40
    with stack(redis_url, cfg) as s:
        s.workers(KEY_A, max_active=4)  # holds A only
        s.workers(KEY_A, KEY_B, max_active=4)  # holds A and B
        run_a = s.start(text_rows(tmp_path, n, "a.csv", "a"), tmp_path / "out-a", keys=(KEY_A,))
        run_b = s.start(text_rows(tmp_path, n, "b.csv", "b"), tmp_path / "out-b", keys=(KEY_B,))
        wait_finished(redis_url, run_a, 120)
        wait_finished(redis_url, run_b, 120)
        keys = s.emu.stats(tasks=False)["keys"]
    for key, out in ((KEY_A, tmp_path / "out-a"), (KEY_B, tmp_path / "out-b")):
        res = results_of(out)
        once_each(res, n)
        assert Counter(r["status"] for r in res) == {"succeeded": n}
        assert {r["key_fingerprint"] for r in res} == {FP[key]}  # the key that paid, never the key
        k = keys[FP[key]]
        assert k["credits_spent"] == n * PRO_CREDITS, (key, k)  # exactly its own rows
        assert k["tasks_created"] == n
        assert k["peak_active"]["total"] <= 4
        assert k["answers_429"] == 0
    fault_figures.add(rows=2 * n)


def test_a_row_whose_key_no_worker_holds_waits_and_status_says_so(redis_url: str, tmp_path: Path) -> None:
    with stack(redis_url, emulator(0.2)) as s:
        s.workers(KEY_A)
        run_c = s.start(text_rows(tmp_path, 6), tmp_path / "out", keys=(KEY_C,))
        time.sleep(3)
        status = s.cli("status", run_c, keys=(KEY_A,))
        assert status.returncode == 0, status.stderr
        assert f"key {FP[KEY_C]}: waiting: no live worker holds this key" in status.stdout, status.stdout
        assert s.emu.stats(tasks=False)["keys"][FP[KEY_A]]["tasks_created"] == 0  # never run with A
        s.workers(KEY_C)
        wait_finished(redis_url, run_c, 60)
        keys = s.emu.stats(tasks=False)["keys"]
    assert keys[FP[KEY_C]]["tasks_created"] == 6
    assert keys[FP[KEY_A]]["tasks_created"] == 0


# -- key pools -------------------------------------------------------------------------------------


def test_a_pool_of_three_keys_uses_every_key_to_its_cap(redis_url: str, tmp_path: Path) -> None:
    cfg = emulator(1.0, max_active_total=4, max_active={"flux-kontext-max": 4})
    n = 48
    with stack(redis_url, cfg) as s:
        s.workers(KEY_A, KEY_B, KEY_C, n=2, max_active=4)
        run_id = s.start(text_rows(tmp_path, n), tmp_path / "out", pool=(KEY_A, KEY_B, KEY_C))
        wait_finished(redis_url, run_id, 90)
        keys = s.emu.stats(tasks=False)["keys"]
    res = results_of(tmp_path / "out")
    once_each(res, n)
    assert Counter(r["status"] for r in res) == {"succeeded": n}
    for key in (KEY_A, KEY_B, KEY_C):
        assert keys[FP[key]]["peak_active"]["total"] == 4, keys[FP[key]]  # every key busy, none past its cap
        assert keys[FP[key]]["answers_429"] == 0
    assert sum(keys[FP[k]]["tasks_created"] for k in (KEY_A, KEY_B, KEY_C)) == n
    assert Counter(r["key_fingerprint"] for r in res).keys() == {FP[KEY_A], FP[KEY_B], FP[KEY_C]}


def test_a_key_refused_with_403_mid_run_leaves_the_pool_and_the_run_completes(redis_url: str, tmp_path: Path) -> None:
    n = 60
    with stack(redis_url, emulator(0.5, max_active_total=4)) as s:
        s.workers(KEY_A, KEY_B, max_active=4)
        run_id = s.start(text_rows(tmp_path, n), tmp_path / "out", pool=(KEY_A, KEY_B))
        revoked: list[int] = []

        def revoke_b(info: RunInfo) -> None:
            if not revoked and info.ndone >= 10:
                s.emu.revoke(KEY_B)
                revoked.append(info.ndone)

        wait_finished(redis_url, run_id, 120, during=revoke_b)
        status = s.cli("status", run_id, "--json", keys=(KEY_A,))
        charged = sum(k["credits_spent"] for k in s.emu.stats(tasks=False)["keys"].values())
    res = results_of(tmp_path / "out")
    once_each(res, n)
    assert Counter(r["status"] for r in res) == {"succeeded": n}
    assert revoked
    # The rows B's revoked tasks left behind were paid for twice, and their figures say so.
    assert json.loads(status.stdout)[0]["credits_spent"] == charged
    assert sum(float(r["cost_credits"] or 0) for r in res) == charged
    late = [r for r in res if int(r["row"]) > 40]
    assert {r["key_fingerprint"] for r in late} == {FP[KEY_A]}
    refused = {k["fingerprint"]: k["refused"] for k in json.loads(status.stdout)[0]["keys"]}
    assert refused[FP[KEY_B]]  # B left the pool, and status says why
    assert not refused[FP[KEY_A]]
    fault_figures.add(rows=n)


# -- an API that hangs -----------------------------------------------------------------------------


def test_a_hanging_api_never_makes_a_row_run_twice(redis_url: str, tmp_path: Path) -> None:
    """Submits and polls stall (35 %) past a 1 s HTTP timeout; leases of 3 s would once have expired
    under the client's own retries and let the sweeper submit the same row again."""
    n = 60
    cfg = emulator(0.3, faults={"timeout": 0.35}, max_active_total=24)
    with stack(redis_url, cfg) as s:
        s.workers(KEY_A, n=2, http_timeout_s=1.0, lease_s=3.0, max_attempts=20)
        run_id = s.start(text_rows(tmp_path, n), tmp_path / "out", keys=(KEY_A,))
        wait_finished(redis_url, run_id, 240)
        stats = s.emu.stats(tasks=False)
    res = results_of(tmp_path / "out")
    once_each(res, n)
    assert Counter(r["status"] for r in res) == {"succeeded": n}
    assert stats["keys"][FP[KEY_A]]["tasks_created"] <= n  # no paid duplicate
    assert stats["faults_injected"].get("timeout", 0) > 10
    fault_figures.add(rows=n, faults_injected=sum(stats["faults_injected"].values()))


# -- the unavoidable duplicate, measured -----------------------------------------------------------


def test_accepted_lost_duplicates_are_marked_and_counted(redis_url: str, tmp_path: Path) -> None:
    n = 300
    cfg = emulator(0.3, faults={"accepted-lost": 0.02})
    with stack(redis_url, cfg) as s:
        s.workers(KEY_A, n=2)
        run_id = s.start(text_rows(tmp_path, n), tmp_path / "out", keys=(KEY_A,))
        info = wait_finished(redis_url, run_id, 180)
        stats = s.emu.stats(tasks=False)
    res = results_of(tmp_path / "out")
    once_each(res, n)
    assert Counter(r["status"] for r in res) == {"succeeded": n}
    created = stats["keys"][FP[KEY_A]]["tasks_created"]
    duplicates = created - n
    assert duplicates == stats["faults_injected"]["accepted-lost"]  # each lost answer cost one task
    flagged = [r for r in res if r["possible_duplicate"]]
    marked = len(flagged)
    # Every paid duplicate belongs to a flagged row: each lost answer cost its row one more submit
    # (a row can lose two answers, so count submits, not rows).
    assert sum(int(r["attempts"]) - 1 for r in flagged) >= duplicates
    # (Other rows may retry too: a lost task still holds an API slot, so a 429 can come back. A 429
    # creates no task and is no duplicate.)
    assert int(info.meta.get("possible_duplicates", 0)) >= duplicates  # and counted in `status`
    per_1000 = round(1000 * duplicates / n)
    fault_figures.add(rows=n, duplicates_per_1000_accepted_lost_2pct=per_1000)
    print(
        f"accepted-lost=0.02: {duplicates} duplicate API task(s) for {n} rows ({per_1000} per 1,000), {marked} flagged"
    )


# -- kills -----------------------------------------------------------------------------------------


def _timed_run(s: Stack, tmp: Path, n: int, tag: str, during: Any = None) -> tuple[float, list[dict[str, str]]]:
    out = tmp / f"out-{tag}"
    t0 = time.monotonic()
    run_id = s.start(text_rows(tmp, n, f"{tag}.csv", tag), out, keys=(KEY_A,))
    wait_finished(s.redis_url, run_id, 600, during=during)
    return time.monotonic() - t0, results_of(out)


def test_a_thousand_rows_through_ten_kills_lose_nothing_and_take_at_most_1_3x(redis_url: str, tmp_path: Path) -> None:
    n = 1000
    with stack(redis_url, emulator(0.5)) as s:
        pool = s.workers(KEY_A, n=3)
        calm_s, calm = _timed_run(s, tmp_path, n, "calm")
        created_before = s.emu.stats(tasks=False)["keys"][FP[KEY_A]]["tasks_created"]
        kills: list[float] = []
        t0 = time.monotonic()

        def kill_every_2_s(info: RunInfo) -> None:
            # Ten kills inside the first ~22 s: the run takes about 25 s even without them.
            if info.ndone < info.total and len(kills) < 10 and time.monotonic() - t0 > 2.0 * (len(kills) + 1):
                pool.restart(len(kills) % 3)
                kills.append(round(time.monotonic() - t0, 1))

        killed_s, killed = _timed_run(s, tmp_path, n, "kill", during=kill_every_2_s)
        created = s.emu.stats(tasks=False)["keys"][FP[KEY_A]]["tasks_created"] - created_before
    for res in (calm, killed):
        once_each(res, n)
        assert Counter(r["status"] for r in res) == {"succeeded": n}
    assert len(kills) == 10, kills
    ratio = killed_s / calm_s
    duplicates = created - n
    per_1000 = round(1000 * duplicates / n)
    fault_figures.add(rows=2 * n, kills=len(kills), duplicates_per_1000_under_10_kills=per_1000)
    print(
        f"1,000 rows: {calm_s:.1f} s calm, {killed_s:.1f} s with 10 kills at {kills} s (x{ratio:.2f}); "
        f"{duplicates} duplicate API task(s), {sum(1 for r in killed if r['possible_duplicate'])} flagged"
    )
    assert sum(int(r["attempts"]) - 1 for r in killed if r["possible_duplicate"]) >= duplicates
    assert ratio <= 1.3, f"{killed_s:.1f} s with kills against {calm_s:.1f} s without"


# -- budgets ---------------------------------------------------------------------------------------


def test_budget_refuses_a_run_whose_estimate_is_over_it(redis_url: str, tmp_path: Path) -> None:
    with stack(redis_url, emulator(0.2)) as s:
        proc = s.cli(
            "run", str(text_rows(tmp_path, 30)), "--output", str(tmp_path / "out"), "--budget", "100", keys=(KEY_A,)
        )
        assert proc.returncode == 2, proc.stderr
        assert "120 credits is over its budget of 100" in proc.stderr
        assert s.emu.stats(tasks=False)["submits"] == 0
    assert redis.Redis.from_url(redis_url).keys("kb:run:*") == []


def test_budget_stops_submits_within_one_rows_cost_and_retry_continues(redis_url: str, tmp_path: Path) -> None:
    n = 40
    with stack(redis_url, emulator(0.3)) as s:
        manifest = text_rows(tmp_path, n)
        out = tmp_path / "out"
        # The estimate (160) is over 50, so `run --budget 50` would refuse the run: queue it under a
        # budget of 200 while no worker holds the key (nothing is submitted), lower its budget to 50
        # as an operator would, then let workers in, to reach the cap mid-run.
        run_id = s.start(manifest, out, "--budget", "200", keys=(KEY_A,))
        Budget(redis.Redis.from_url(redis_url), Keys()).set(run_id, 50)
        s.workers(KEY_A, n=2)
        info = wait_finished(redis_url, run_id, 120)
        spent = s.emu.stats(tasks=False)["keys"][FP[KEY_A]]["credits_spent"]
        res = results_of(out)
        statuses = Counter(r["status"] for r in res)
        assert info.meta.get("stopped") == "budget", info.meta
        assert spent <= 50
        assert spent > 50 - PRO_CREDITS  # within one row's cost of the cap
        assert statuses["succeeded"] == spent // PRO_CREDITS
        assert statuses["budget"] == n - statuses["succeeded"]
        assert all("budget of 50 credits reached" in r["error"] for r in res if r["status"] == "budget")
        assert sum(float(r["cost_credits"] or 0) for r in res) == spent  # per row, as the API billed
        status = s.cli("status", run_id, keys=(KEY_A,))
        assert f"credits: {spent:g} spent" in status.stdout, status.stdout
        again = s.cli("retry", run_id, "--budget", "500", "--wait", keys=(KEY_A,))
        assert again.returncode == 0, again.stderr[-3000:]
        res = results_of(out)
    once_each(res, n)
    assert Counter(r["status"] for r in res) == {"succeeded": n}
