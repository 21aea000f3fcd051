"""The benchmark's command parses its options, and its table marks targets met and missed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.kills import KillRun, KillsFigures
from benchmarks.measure import BaselineFigures, EnqueueFigures, Phases, Scenario, SystemFigures, pct, phases
from benchmarks.run import build_rows, make_plan, parse_args, render_table
from kontext_batch.emulator import LatencySpec

ROOT = Path(__file__).resolve().parent.parent


def _system(
    name: str,
    *,
    cap: int = 24,
    keys: int = 1,
    util: float = 1.0,
    worker_ms: float = 8.0,
    user_util: float | None = None,
    split: Phases | None = None,
) -> SystemFigures:
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
        user_wall_s=ideal / (util if user_util is None else user_util),
        phases=split,
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
    assert "--timeline" in proc.stdout


def test_quick_shrinks_every_run_and_explicit_sizes_win() -> None:
    full, quick = parse_args([]), parse_args(["--quick", "--n", "48"])
    # Issue 22's sizes: 1,200 rows at C=24, 1,920 on a pool of 4 x 24.
    assert (full.n, full.enqueue_rows, full.enqueue_images_rows) == (1200, 1_000_000, 100_000)
    assert (full.n_pool, full.n_pool3) == (1920, 720)
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


def test_pro_must_reach_0975_from_start_to_exit_and_beat_the_asyncio_script() -> None:
    asyncio = BaselineFigures(
        "asyncio", "pro C=24 L=1s N=240", 240, 240, 10.2, 10.0, 2.0, 0.5, cpu_ms_per_job=4.0, user_wall_s=10.5
    )
    # The internal API wall meets the old 0.97; the command's start -> exit (0.96) is the headline.
    pro = _system("pro", util=0.98, user_util=0.96)
    table = render_table(build_rows({"pro": pro}, {"asyncio": asyncio}, [])).splitlines()
    head = _line(table, "1 cap utilisation, start -> exit")
    assert head.endswith("MISSED")  # 0.96 < 0.975
    assert "0.960 (10.4s / ideal 10.0s)" in head
    assert "API wall 0.980" in head  # the internal figure, kept as a second column
    versus = _line(table, "1 kontext-batch vs asyncio")
    assert versus.endswith("| met")  # 0.96 >= 10 / 10.5 = 0.952, both from start to exit
    assert "API wall 0.980 vs 0.980" in versus  # 10 / 10.2 for the script's first submit -> last file
    assert "0.952 (10.5s" in _line(table, "baseline ratio to ideal, start -> exit")
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
    pool3 = _line(table, "7 pool utilisation, start -> exit", "3 keys x C=24")
    assert pool3.endswith("MISSED")
    assert ">= 0.90 (API wall)" in pool3  # issue 22 sets no start -> exit target for pool-3
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


def test_the_phase_split_comes_from_one_clock_and_its_targets_are_checked() -> None:
    # Given two 1 s tasks on cap 2, the command started at 100.0 and the first submit at 100.5,
    tasks = [
        {"submitted_at": 100.5, "ready_at": 101.5, "seen_done_at": 101.52},
        {"submitted_at": 100.7, "ready_at": 101.7, "seen_done_at": 101.8},
    ]
    split = phases(tasks, 2, started_at=100.0, exited_at=102.4, last_stored_at=101.9, finished_at=101.95)
    # then the split is the emulator's stamps against the command's.
    assert round(split.start_to_first_submit_s, 3) == 0.5
    assert round(split.inside_util, 3) == round(2.0 / (2 * 1.2), 3)
    assert round(split.last_ready_to_last_store_s, 3) == 0.2
    assert round(split.last_store_to_exit_s, 3) == 0.5
    assert split.last_store_to_finished_s is not None
    assert round(split.last_store_to_finished_s, 3) == 0.05
    assert round(split.notice_lag_p95_s, 3) == 0.1
    # When it is in the table, the start and the end read against 0.3 s each; the rest have no target.
    table = render_table(build_rows({"pro": _system("pro", split=split)}, {}, [])).splitlines()
    first = _line(table, "  start -> first submit")
    assert "0.500s" in first
    assert first.endswith("MISSED")
    end = _line(table, "  last store -> exit")
    assert "run finished at +0.050s" in end
    assert end.endswith("MISSED")
    assert _line(table, "  slot utilisation inside").endswith("| -")
    assert "20 / 100 ms" in _line(table, "  notice lag p50 / p95")
    assert "internal (as before issue 22)" in table[0]


def test_a_quick_start_and_exit_meet_their_targets() -> None:
    tasks = [{"submitted_at": 10.1, "ready_at": 11.1, "seen_done_at": 11.1}]
    split = phases(tasks, 1, started_at=10.0, exited_at=11.3, last_stored_at=11.15)
    table = render_table(build_rows({"pool": _system("pool", keys=4, user_util=0.94, split=split)}, {}, []))
    lines = table.splitlines()
    assert _line(lines, "  start -> first submit").endswith("| met")
    assert _line(lines, "  last store -> exit").endswith("| met")
    pool = _line(lines, "7 pool utilisation, start -> exit", "4 keys x C=24")
    assert ">= 0.93" in pool
    assert pool.endswith("| met")


def test_worker_cpu_is_held_to_the_issues_8_ms() -> None:
    for worker_ms, verdict in ((8.0, "| met"), (9.0, "MISSED")):
        table = render_table(build_rows({"pro": _system("pro", worker_ms=worker_ms)}, {}, [])).splitlines()
        cpu = _line(table, "8 worker CPU per job")
        assert "<= 8 " in cpu
        assert cpu.endswith(verdict)


def _kills(*, quiet_s: float, killed_s: float, kills_done: int = 10, succeeded: int = 600) -> KillsFigures:
    quiet = KillRun(quiet_s, 600, 600, 0, 0, 0)
    killed = KillRun(killed_s, succeeded, 612, 3, kills_done, 1)
    return KillsFigures(describe="pro C=24 L=1s N=600", n=600, kills_planned=10, quiet=quiet, killed=killed)


def test_the_kill_ratio_is_held_to_12_with_every_row_and_every_kill() -> None:
    assert (parse_args([]).n_kills, parse_args(["--quick"]).n_kills) == (600, 240)
    for figures, verdict in (
        (_kills(quiet_s=30.0, killed_s=35.0), "met"),
        (_kills(quiet_s=30.0, killed_s=37.0), "MISSED"),  # 1.23
        (_kills(quiet_s=30.0, killed_s=35.0, kills_done=7), "MISSED"),  # the run ended before 10 kills
        (_kills(quiet_s=30.0, killed_s=35.0, succeeded=599), "MISSED"),
    ):
        table = render_table(build_rows({}, {}, [], kills=figures)).splitlines()
        line = _line(table, "10 kill ratio")
        assert line.endswith(f"| {verdict}"), line
        assert f"{figures.killed.kills_done} of 10 kills, 1 Redis restart" in line
    assert "612 emulator tasks, 3 429s, 0 task executions" in _line(table, "10 kills: with kills")
    assert not any(r.figure.startswith("10 ") for r in build_rows({}, {}, []))
