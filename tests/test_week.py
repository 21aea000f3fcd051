"""A catalogue team's week: the same 300-row manifest run nightly 7 times into one output, with a
budget just above each night's cost, prompts changing every night, rows added and removed on night 4,
night 2's rejects retried on day 5, and run state kept two nights.

A "night" is NIGHT_S seconds of wall time here. The retention is two nights and a half: night 2
must still be in Redis on day 5's morning, right after night 4, for its retry (its age then is two
nights, plus night 4's length, less night 2's), and that retry starts its clock again. So after
night 3 Redis holds three nights' state (the two before and tonight's), and after night 7 three
again (5, 6 and 7: nights 1-4 gone, night 2's retry with them); in between a night may hold four
(night 2's retry among them). "No growth" is checked as night 7 against night 3, the first full window; after
night 2 only two nights' state is there, printed beside.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import redis

from kontext_batch.coord.keys import Keys
from tests.e2e_support import System, read_results, running_system, write_csv

pytestmark = pytest.mark.e2e

NIGHT_S = 30.0
RETENTION_S = 2.5 * NIGHT_S
PRICE = 4  # kontext-pro, credits per image
ROWS = 300
#: Rows the API refuses every night (charged each time): they run again each night, and on day 5.
REJECTS = {5: " [emulator:content-moderated]", 45: " [emulator:content-moderated]", 201: " [emulator:error]"}


def _prompt(i: int, night: int) -> str:
    """Row i's prompt on a night: 10 rows (a different ten each night) get a new wording."""
    changed = [n for n in range(2, night + 1) if i in _changed_on(n)]
    base = f"put product {i} on a white background"
    return (base + f", wording of night {changed[-1]}" if changed else base) + REJECTS.get(i, "")


def _changed_on(night: int) -> set[int]:
    start = 10 + 20 * night  # never a reject, never a removed or an added row
    return set(range(start, start + 10))


def _rows_on(night: int) -> list[int]:
    if night < 4:
        return list(range(1, ROWS + 1))
    return [i for i in range(1, ROWS + 21) if not 291 <= i <= 295]  # night 4: 20 added, 5 removed


def _manifest(tmp: Path, night: int) -> Path:
    rows = [{"id": f"sku-{i:03d}", "prompt": _prompt(i, night), "model": "pro"} for i in _rows_on(night)]
    return write_csv(tmp / f"night{night}.csv", ["id", "prompt", "model"], rows)


def _to_run(night: int) -> int:
    """What the night should submit: everything on night 1; then the changed rows, the added ones
    (night 4) and the rejects, which are never done."""
    if night == 1:
        return ROWS
    return len(_changed_on(night)) + (20 if night == 4 else 0) + len(REJECTS)


def _spent(system: System) -> float:
    return float(sum(k["credits_spent"] for k in system.emu.stats(tasks=False)["keys"].values()))


def _path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)


def _state_bytes(r: redis.Redis) -> int:
    """What the runs keep in Redis: the memory of every key of ours."""
    return sum(int(r.memory_usage(k) or 0) for k in r.scan_iter(match="kb:*", count=1000))


def _keys_of(r: redis.Redis, run_id: str) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter(match=f"*{run_id}*", count=1000))


def _check_newest(out: Path, night: int) -> None:
    """The output's results.csv: every row of the night's manifest with its newest prompt and image."""
    newest = {row["id"]: row for row in read_results((out / "results.csv").read_bytes())}
    for i in _rows_on(night):
        row = newest[f"sku-{i:03d}"]
        assert row["prompt"] == _prompt(i, night), (night, i, row["prompt"])
        if i in REJECTS:
            assert row["status"] in ("moderated", "failed"), (night, i, row["status"])
            continue
        assert row["status"] in ("succeeded", "skipped"), (night, i, row)
        image = _path(row["output_uri"])
        assert image.is_file(), (night, i, row["output_uri"])
        made_with = json.loads(image.with_name(image.name + ".json").read_text())
        assert made_with["prompt"] == _prompt(i, night), (night, i)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_week_of_nights_adds_up(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    out = tmp_path / "out"
    runs: dict[int, str] = {}
    spent_by_night: dict[int, float] = {}
    mem_after: dict[int, int] = {}
    with running_system(redis_url, run_retention_s=RETENTION_S) as system:
        t0 = time.monotonic()
        for night in range(1, 8):
            if night == 5:  # day 5's morning, right after night 4
                # Day 5, morning: night 2's failed and moderated rows, again (they fail again: charged).
                before = _spent(system)
                # Its budget was night 2's, just above what night 2 cost: the retry raises it by its own cost.
                budget = spent_by_night[2] + len(REJECTS) * PRICE + 1
                again = system.cli("retry", runs[2], "--failed", "--moderated", "--budget", f"{budget:g}", "--wait")
                assert again.returncode == 1, again.stderr[-3000:]  # rows failed: exit 1
                assert _spent(system) - before == len(REJECTS) * PRICE
                spent_by_night[2] += len(REJECTS) * PRICE
                # The older run's retry did not take the output's results.csv back to night 2's rows.
                _check_newest(out, 4)
            # Each night starts on its hour (or when the one before ends, if it ran over).
            time.sleep(max(0.0, t0 + (night - 1) * NIGHT_S - time.monotonic()))
            budget = _to_run(night) * PRICE + 1
            before = _spent(system)
            done = system.cli("run", str(_manifest(tmp_path, night)), "-o", str(out), "--budget", str(budget), "--wait")
            assert "nothing was queued" not in done.stderr, (night, done.stderr[-3000:])
            assert done.returncode == 1, (night, done.returncode, done.stderr[-3000:])  # the rejects: exit 1
            runs[night] = done.stdout.split()[0]
            spent_by_night[night] = _spent(system) - before
            # The budget was just above the night's real cost: it priced the rows that run, no more.
            assert spent_by_night[night] == _to_run(night) * PRICE, (night, spent_by_night[night])
            mem_after[night] = _state_bytes(r)

            _check_newest(out, night)

            # Each night's status shows its own spend, no more (night 2's includes its day-5 retry).
            shown = []
            for n, run_id in runs.items():
                if r.exists(Keys().run(run_id)) == 0:
                    continue  # gone from Redis (retention): its results files remain
                status = system.cli("status", run_id, "--json")
                assert status.returncode == 0, status.stderr[-3000:]
                [doc] = json.loads(status.stdout)
                assert float(doc["credits_spent"]) == spent_by_night[n], (night, n, doc)
                shown.append(n)
            assert night in shown, (night, shown)
            assert night == 1 or night - 1 in shown, (night, shown)
        total = _spent(system)

    # Money: the runs' own files add up to what the API charged, each charge once.
    own = sorted((out / "runs").glob("*/results.csv"))
    assert {p.parent.name for p in own} == set(runs.values())
    assert sum(float(row["cost_credits"] or 0) for p in own for row in read_results(p.read_bytes())) == total
    assert total == sum(spent_by_night.values())

    # Retention: nights 1-4 left Redis (a tombstone each says where their results went); Redis holds
    # about what it held after night 2 (two nights' state).
    for night in (1, 2, 3, 4):
        left = _keys_of(r, runs[night])
        assert left in ([], [Keys().run_gone(runs[night])]), (night, left)
    assert _keys_of(r, runs[7]), "the last night's state is kept"
    print(f"week: state bytes after each night {mem_after}; credits {spent_by_night}; total {total}")
    assert abs(mem_after[7] - mem_after[3]) <= 0.10 * mem_after[3], mem_after
