"""The benchmark's command parses its options, and its table marks targets met and missed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.measure import EnqueueFigures, pct
from benchmarks.run import build_rows, parse_args, render_table

ROOT = Path(__file__).resolve().parent.parent


def test_help_runs_as_a_script_from_the_repository_root() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


def test_quick_shrinks_every_run_and_explicit_sizes_win() -> None:
    full, quick = parse_args([]), parse_args(["--quick", "--n", "48"])
    assert (full.n, full.enqueue_rows) == (600, 100_000)
    assert quick.n == 48
    assert quick.enqueue_rows < full.enqueue_rows


def test_a_missed_target_reads_no_and_a_met_one_yes() -> None:
    fast = EnqueueFigures(rows=100_000, images=0, wall_s=8.0, peak_rss_mb=400.0, cpu_s=8.0, redis_bytes_per_row=400)
    table = render_table(build_rows({}, {}, [fast])).splitlines()
    wall = next(line for line in table if line.startswith("4 enqueue wall"))
    rss = next(line for line in table if line.startswith("4 enqueue peak RSS"))
    assert wall.endswith("yes")
    assert rss.endswith("NO")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 0.95) == 95.0
    assert pct(values, 0.5) == 50.0
    assert pct([], 0.95) == 0.0
