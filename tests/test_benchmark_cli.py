"""The benchmark's command parses its options, and its table marks targets met and missed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.measure import BaselineFigures, EnqueueFigures, Scenario, SystemFigures, pct
from benchmarks.run import build_rows, make_plan, parse_args, render_table
from kontext_batch.emulator import LatencySpec

ROOT = Path(__file__).resolve().parent.parent


def _system(name: str, *, cap: int = 24, keys: int = 1, util: float = 1.0, worker_ms: float = 8.0) -> SystemFigures:
    sc = Scenario(name, 240, "pro", 24 if keys > 1 else cap, LatencySpec.fixed(1.0), keys=keys)
    ideal = 240 / sc.cap
    return SystemFigures(
        scenario=name,
        describe=sc.describe(),
        n=240,
        cap=sc.cap,
        succeeded=240,
        mean_latency_s=1.0,
        ideal_s=ideal,
        system_wall_s=ideal / util,
        api_wall_s=ideal / util,
        enqueue_s=0.1,
        polls_per_job=1.1,
        polls_max=2,
        executions_per_job=1.2,
        ready_to_stored_p50_s=0.02,
        ready_to_stored_p95_s=0.1,
        ready_to_stored_max_s=0.2,
        rejected_429=0,
        peak_active=sc.cap,
        mean_busy_slots=sc.cap * util,
        cpu_busy=0.5,
        cpu_ms_per_job={"workers": worker_ms, "emulator": 1.0, "redis": 1.0},
        keys=keys,
        per_key_peak=[24] * keys,
    )


def _line(table: list[str], starts: str, scenario: str = "") -> str:
    return next(line for line in table if line.startswith(starts) and scenario in line)


@pytest.mark.integration
def test_help_runs_as_a_script_from_the_repository_root() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout
    assert "--profile" in proc.stdout


def test_quick_shrinks_every_run_and_explicit_sizes_win() -> None:
    full, quick = parse_args([]), parse_args(["--quick", "--n", "48"])
    assert (full.n, full.enqueue_rows, full.enqueue_images_rows) == (600, 1_000_000, 100_000)
    assert (full.n_pool, full.n_pool3) == (2400, 720)
    assert quick.n == 48
    assert quick.enqueue_rows < full.enqueue_rows


def test_the_plan_renders_fast_except_one_full_run_of_the_same_scenario() -> None:
    plan = make_plan(parse_args([]))
    renders = {s.name: s.render for s in plan.systems}
    assert [name for name, r in renders.items() if r == "full"] == ["pro-full"]
    pro, full = plan.system("pro"), plan.system("pro-full")
    assert (pro.n, pro.cap, pro.latency) == (full.n, full.cap, full.latency)
    assert plan.system("pool").cap == 96
    assert plan.system("pool").keys == 4
    assert plan.system("pool-3").cap == 72
    assert plan.system("pool-3").n == 720
    assert plan.system("scale").keys == 1
    assert plan.system("scale").cap == 96
    # A pool's rows spread over its own keys; one key otherwise.
    assert len(plan.system("pool").key_settings()["api_keys"]) == 4
    assert "api_key" in plan.system("pro").key_settings()


def test_a_missed_target_reads_missed_and_a_met_one_met() -> None:
    fast = EnqueueFigures(rows=1_000_000, images=0, wall_s=50.0, peak_rss_mb=400.0, cpu_s=50.0, redis_bytes_per_row=400)
    table = render_table(build_rows({}, {}, [fast])).splitlines()
    assert _line(table, "4 enqueue wall").endswith("| met")
    assert _line(table, "4 enqueue peak RSS").endswith("| MISSED")
    assert "1,000,000 rows" in _line(table, "4 enqueue wall")


def test_pro_must_reach_097_and_beat_the_asyncio_script() -> None:
    asyncio = BaselineFigures("asyncio", "pro C=24 L=1s N=240", 240, 240, 10.5, 10.0, 2.0, 0.5, cpu_ms_per_job=4.0)
    table = render_table(build_rows({"pro": _system("pro", util=0.96)}, {"asyncio": asyncio}, [])).splitlines()
    assert _line(table, "1 cap utilisation, API wall").endswith("MISSED")  # 0.96 < 0.97
    assert _line(table, "1 kontext-batch vs asyncio").endswith("| met")  # 0.96 >= 0.952
    cpu = _line(table, "8 worker CPU per job")
    assert "asyncio script 4.0" in cpu
    assert cpu.endswith("| met")


def test_pool_and_scale_lines_use_090_and_busy_slots_of_the_pool() -> None:
    systems = {
        "scale": _system("scale", cap=96, util=0.91, worker_ms=12.0),
        "pool-3": _system("pool-3", keys=3, util=0.89),
    }
    table = render_table(build_rows(systems, {}, [])).splitlines()
    assert _line(table, "6 scale utilisation", "C=96").endswith("| met")
    assert _line(table, "8 worker CPU per job", "C=96").endswith("MISSED")
    assert _line(table, "7 pool utilisation, API wall", "3 keys x C=24").endswith("MISSED")
    busy = _line(table, "7 pool mean busy slots")
    assert "64.1 of 72" in busy
    assert "24+24+24" in busy
    assert busy.endswith("MISSED")


def test_webhook_lines_say_why_they_did_not_run_and_the_machine_is_in_the_table() -> None:
    machine = {"nproc": 2, "cpu_model": "Test CPU", "memory": "1Gi", "python": "3.11", "loadavg_at_start": [1.0, 2.0]}
    table = render_table(build_rows({}, {}, [], machine_info=machine)).splitlines()
    assert "not run: not asked (--only)" in _line(table, "9 polls per job, rows done by webhook")
    assert _line(table, "9 polls per job, 10% webhooks dropped").endswith("| -")
    assert "2 cores, Test CPU" in _line(table, "machine")
    assert "1.00 / 2.00" in _line(table, "load average at start")
    assert _line(table, "load average at end").split("|")[2].strip() == "-"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 0.95) == 95.0
    assert pct(values, 0.5) == 50.0
    assert pct([], 0.95) == 0.0


def test_slot_idle_time_is_split_into_start_gaps_and_end() -> None:
    from benchmarks.slots import idle_per_slot, notice_lags  # noqa: PLC0415

    # One key, cap 2, 1 s tasks. Slot A: 0-1, 1.1-2.1. Slot B: 0.2-1.2, 1.2-2.2 (then idle to the end, 2.2).
    tasks = [
        {"key": "k", "submitted_at": s, "ready_at": s + 1.0, "seen_done_at": s + 1.0 + lag, "polls": 1}
        for s, lag in ((0.0, 0.05), (0.2, 0.01), (1.1, 0.0), (1.2, 0.0))
    ]
    idle, gaps = idle_per_slot(tasks, cap=2)
    assert [round(g, 3) for g in gaps] == [0.1, 0.0]  # 1.1 - 1.0 and 1.2 - 1.2
    assert round(idle["start"], 3) == 0.1  # (0 + 0.2) / 2 slots
    assert round(idle["gaps"], 3) == 0.05
    assert round(idle["end"], 3) == 0.05  # (2.2 - 2.1 + 0) / 2
    assert {w: [round(x, 3) for x in v] for w, v in notice_lags(tasks).items()} == {0: [0.05, 0.01], 1: [0.0, 0.0]}
