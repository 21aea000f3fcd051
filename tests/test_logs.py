"""Worker logs: one line per row event from real worker processes, as text or JSON, and never a secret."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from kontext_batch.emulator import EmulatorConfig, LatencySpec
from kontext_batch.errors import ConfigError
from kontext_batch.logs import JsonFormatter, row_event, row_finished
from kontext_batch.settings import Settings
from kontext_batch.workers.app import configure
from tests.e2e_support import E2E_KEY, read_results, running_system, write_csv

pytestmark = pytest.mark.e2e

ROWS = 12
FAILING = {5, 10}


def run_rows(redis_url: str, tmp_path: Path, **settings: object) -> tuple[str, list[dict[str, str]], str]:
    """A 12-row run (rows 5 and 10 fail) through two workers; returns the run id, results, all logs."""
    rows = [
        {
            "id": f"l{i}",
            "prompt": f"product {i}" + (" [emulator:error]" if i in FAILING else ""),
            "output_format": "png",
        }
        for i in range(1, ROWS + 1)
    ]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "output_format"], rows)
    logs = tmp_path / "logs"
    with running_system(redis_url, log_dir=logs, **settings) as system:
        done = system.cli("run", str(manifest), "--output", str(tmp_path / "out"), "--wait")
        assert done.returncode == 1, done.stderr  # two rows failed
    results = read_results((tmp_path / "out" / "results.csv").read_bytes())
    run_id = results[0]["job_id"].split(":")[0]
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(logs.glob("worker-*.log")))
    return run_id, results, text


def rows_logged(lines: list[str], run_id: str, event: str) -> list[int]:
    """Rows of ``row RUN:ROW EVENT[: detail]`` lines for one event, sorted (repeats kept)."""
    out = []
    for ln in lines:
        _, sep, rest = ln.partition(f"row {run_id}:")
        words = rest.split()
        if sep and len(words) > 1 and words[1].rstrip(":") == event:
            out.append(int(words[0]))
    return sorted(out)


def test_text_log_has_one_line_per_row_event(redis_url: str, tmp_path: Path) -> None:
    run_id, results, text = run_rows(redis_url, tmp_path)
    lines = text.splitlines()
    ok = sorted(set(range(1, ROWS + 1)) - FAILING)
    assert rows_logged(lines, run_id, "submitted") == list(range(1, ROWS + 1))
    assert rows_logged(lines, run_id, "ready") == ok
    assert rows_logged(lines, run_id, "stored") == ok
    assert rows_logged(lines, run_id, "failed") == sorted(FAILING)
    reasons = {int(r["row"]): r["error"] for r in results if r["status"] == "failed"}
    for ln in lines:
        if f"row {run_id}:" in ln and " failed: " in ln:
            row = int(ln.split(f"row {run_id}:")[1].split()[0])
            assert reasons[row]
            assert ln.endswith(reasons[row])  # the reason as results.csv has it
    # Celery's per-task lines are below INFO now; the key never shows; nor do sample URL signatures.
    assert "received" not in text
    assert "succeeded in" not in text
    assert E2E_KEY not in text
    assert "sig=" not in text
    assert " INFO kontext_batch.rows: " in text


def test_json_log_parses_line_by_line_with_run_and_row(redis_url: str, tmp_path: Path) -> None:
    run_id, _, text = run_rows(redis_url, tmp_path, log_format="json")
    records = []
    for ln in text.splitlines():
        if ln.strip():
            records.append(json.loads(ln))  # every line, the shutdown notices included
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    events = [r for r in records if r.get("run") == run_id and "row" in r]
    by_event: dict[str, list[int]] = {}
    for r in events:
        by_event.setdefault(r["event"], []).append(r["row"])
    assert sorted(by_event["submitted"]) == list(range(1, ROWS + 1))
    assert sorted(by_event["stored"]) == sorted(set(range(1, ROWS + 1)) - FAILING)
    assert sorted(by_event["failed"]) == sorted(FAILING)
    assert all(r["logger"] == "kontext_batch.rows" for r in events)
    # An alert on WARNING catches every failed row, and the line names the manifest's id (SKU).
    assert {r["level"] for r in events if r["event"] == "failed"} == {"WARNING"}
    assert all(r["id"] == f"l{r['row']}" and f"(id l{r['row']})" in r["msg"] for r in events if r["event"] == "failed")
    assert {r["level"] for r in events if r["event"] != "failed"} == {"INFO"}
    (end,) = [r for r in records if r.get("run") == run_id and r.get("event") == "run finished"]
    assert (end["level"], end["outcome"]) == ("ERROR", "failed")
    assert end["counts"] == {"succeeded": ROWS - len(FAILING), "failed": len(FAILING)}
    assert E2E_KEY not in text
    assert any("shutdown" in r["msg"] for r in records)


def test_json_formatter_fields_and_exceptions() -> None:
    rec = logging.LogRecord("x.y", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    rec.run = "r1"
    rec.row = 3
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "a b"
    assert out["level"] == "WARNING"
    assert out["logger"] == "x.y"
    assert (out["run"], out["row"]) == ("r1", 3)
    assert out["ts"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        rec2 = logging.LogRecord("x", logging.ERROR, __file__, 1, "m", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(rec2))["exc"]


def test_row_event_carries_run_row_and_event(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kontext_batch.rows"):
        row_event("20261130T000000-abcdef:17", "re-driven", "was polling", level=logging.WARNING)
    (rec,) = caplog.records
    assert rec.getMessage() == "row 20261130T000000-abcdef:17 re-driven: was polling"
    assert (rec.run, rec.row, rec.event, rec.levelno) == ("20261130T000000-abcdef", 17, "re-driven", logging.WARNING)  # type: ignore[attr-defined]


def test_a_failed_rows_line_carries_its_reason_and_the_apis_task_id(caplog: pytest.LogCaptureFixture) -> None:
    reason = "the API failed the task (Error): Internal error"
    result = {"status": "failed", "error": reason, "bfl_task_id": "task-77", "polls": 3}
    with caplog.at_level(logging.INFO, logger="kontext_batch.rows"):
        row_finished("20261130T000000-abcdef:4", result, row_id="sku-4")
    (rec,) = caplog.records
    assert rec.getMessage().endswith(f"(id sku-4) {reason}")
    assert (rec.task, rec.status, rec.levelno) == ("task-77", "failed", logging.WARNING)  # type: ignore[attr-defined]


def test_log_format_setting() -> None:
    assert Settings.from_env({}).log_format == "text"
    s = Settings.from_env({"KONTEXT_LOG_FORMAT": "JSON", "KONTEXT_METRICS_HOST": "0.0.0.0"})
    assert s.log_format == "json"
    assert Settings.from_env(s.to_env()) == s
    with pytest.raises(ConfigError, match="KONTEXT_LOG_FORMAT"):
        Settings.from_env({"KONTEXT_LOG_FORMAT": "xml"})


def test_workers_send_task_events_for_flower_when_asked() -> None:
    # Flower shows task progress only from these events (docker-compose asks for them); they cost
    # worker CPU, so they are off otherwise. The settings' broker is not contacted here.
    conf = configure(Settings.from_env({"KONTEXT_TASK_EVENTS": "1"})).conf
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True
    conf = configure(Settings()).conf
    assert conf.worker_send_task_events is False
    assert conf.task_send_sent_event is False


def test_a_run_out_of_credits_logs_why_it_stopped(redis_url: str, tmp_path: Path) -> None:
    rows = [{"id": f"c{i}", "prompt": f"product {i}", "output_format": "png"} for i in range(1, 9)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "output_format"], rows)
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.3)}, api_keys=(E2E_KEY,), seed=2, credits=3 * 4.0)
    with running_system(redis_url, emulator=cfg, log_dir=tmp_path / "logs", workers=1) as system:
        done = system.cli("run", str(manifest), "--output", str(tmp_path / "out"), "--wait")
    assert done.returncode == 3, done.stderr  # stopped
    run_id = done.stdout.splitlines()[0].strip()
    lines = (tmp_path / "logs" / "worker-0.log").read_text(encoding="utf-8").splitlines()
    stops = [ln for ln in lines if f"run {run_id} stopped (out_of_credits): " in ln and "out of credits (402)" in ln]
    assert stops
    assert all(" WARNING kontext_batch.runs: " in ln for ln in stops)
    assert E2E_KEY not in "\n".join(lines)
