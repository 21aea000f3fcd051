"""What a run keeps in Redis per row: its prompt once (in the row's spec), not again in its result,
whatever the row's end: succeeded, invalid, or skipped by a second night's run. A run of 40,000 rows
with 9.5 KB prompts pays each prompt's bytes once. Real enqueue pass and steps, inline, against real
Redis and the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.runtime import Runtime
from tests.e2e_support import write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime
from tests.settings_support import fast_settings

pytestmark = pytest.mark.integration

LONG = 9_500


def _prompt(i: int) -> str:
    return f"prompt-{i:02d}: " + " ".join(f"word{i}x{j}" for j in range(LONG // 9))[:LONG]


@pytest.fixture
def rt(redis_url: str) -> Iterator[Runtime]:
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.05)}, time_scale=1.0, seed=5)
    with Emulator(cfg) as emu:
        runtime = inline_runtime(fast_settings(emu.base_url, redis_url, api_key="memory-test-key"), InlineScheduler())
        yield runtime
        runtime.close()


def _values(r: redis.Redis, run_id: str) -> bytes:
    """Every value Redis holds under a key naming the run."""
    out = []
    for key in r.scan_iter(match=f"*{run_id}*", count=1000):
        kind = r.type(key)
        if kind == b"hash":
            out += [k + b"=" + v for k, v in r.hgetall(key).items()]
        elif kind == b"string":
            out.append(r.get(key) or b"")
        else:
            raise AssertionError(f"{key!r} is a {kind!r}: count its prompts too")
    return b"\n".join(out)


def _run(rt: Runtime, manifest: Path, out: Path) -> str:
    queued = start_run(rt, RunRequest(str(manifest), str(out), skip_invalid=True))
    assert isinstance(rt.scheduler, InlineScheduler)
    rt.scheduler.run(rt)
    assert rt.runs.info(queued.run_id).finished
    return queued.run_id


def test_each_prompt_is_stored_once_whatever_the_row_became(rt: Runtime, tmp_path: Path) -> None:
    rows = [{"id": f"sku-{i}", "prompt": _prompt(i), "model": "pro"} for i in range(4)]
    rows.append({"id": "sku-bad", "prompt": _prompt(9), "model": "no-such-model"})  # invalid
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "model"], rows)
    out = tmp_path / "out"
    first = _run(rt, manifest, out)
    assert rt.runs.info(first).counts == {"succeeded": 4, "invalid": 1}, rt.runs.info(first).counts
    second = _run(rt, manifest, out)  # the four valid rows are skipped: their outputs exist
    assert rt.runs.info(second).counts.get("skipped") == 4, rt.runs.info(second).counts
    for run_id in (first, second):
        held = _values(rt.redis, run_id)
        for i in (0, 1, 2, 3, 9):
            assert held.count(_prompt(i).encode()) == 1, (run_id, i, held.count(_prompt(i).encode()))
        # And little else per row besides: the prompts are ~9.5 KB of each row's bytes.
        assert len(held) < 5 * (LONG + 1500), len(held)
