"""Worker metrics: real worker processes serving /metrics, a real run against the emulator, scraped over HTTP.

The figures are checked against what the run recorded (results.csv) and what the emulator counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.metrics import call_kind
from kontext_batch.run.local import WorkerPool, free_port
from kontext_batch.settings import Settings
from tests.e2e_support import read_results, write_csv
from tests.settings_support import fast_settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "metrics-secret-key-5e1b"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: list[Samples], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for s in samples for (n, ls), v in s.items() if n == name and want <= ls)


def by_label(samples: list[Samples], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        for (n, ls), v in s.items():
            if n == name:
                out[dict(ls)[label]] += v
    return dict(out)


def wait_http(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        except httpx.HTTPError:
            time.sleep(0.2)
        else:
            return
    raise AssertionError(f"no metrics on port {port}")


@pytest.fixture
def system(redis_url: str) -> Iterator[tuple[Emulator, Settings, list[int]]]:
    # Spurious 429s on a quarter of the submits: the client retries them; the counter must see each.
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.4)}, api_keys=(KEY,), seed=3, faults={"429": 0.25})
    with Emulator(cfg) as emu:
        s = fast_settings(
            emu.base_url, redis_url, api_key=KEY, poll_first_s=0.2, retry_base_s=0.05, retry_max_s=0.3, max_attempts=20
        )
        ports = [free_port(), free_port()]
        with WorkerPool(s, n=2, concurrency=8, extra_args=lambda i: ["--metrics-port", str(ports[i])]):
            for p in ports:
                wait_http(p)
            yield emu, s, ports


@pytest.mark.e2e
def test_scraped_figures_match_the_run(system: tuple[Emulator, Settings, list[int]], tmp_path: Path) -> None:
    emu, s, ports = system
    rows: list[dict[str, object]] = []
    for i in range(1, 13):
        prompt = f"a studio photo of product {i}"
        if i in (4, 8):
            prompt += " [emulator:error]"
        elif i == 11:
            prompt += " [emulator:content-moderated]"
        rows.append({"id": f"m{i}", "prompt": prompt, "model": "max" if i % 3 == 0 else "pro", "output_format": "png"})
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "model", "output_format"], rows)
    out = tmp_path / "out"
    # Before the first event every counter is there, at 0: a quiet night's panels read 0, not "No data".
    quiet = scrape(ports[1])
    for outcome in ("succeeded", "failed", "stopped", "cancelled"):
        assert quiet[("kontext_runs_finished_total", frozenset({("outcome", outcome)}))] == 0
    assert quiet[("kontext_results_write_failures_total", frozenset())] == 0
    assert (
        quiet[("kontext_rows_finished_total", frozenset({("status", "failed"), ("endpoint", "flux-kontext-max")}))] == 0
    )
    assert quiet[("kontext_api_rate_limited_total", frozenset({("kind", "submit")}))] == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")} | s.to_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kontext_batch", "run", str(manifest), "--output", str(out), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # During the run: the slot gauges are there, per key and endpoint, against their caps, from one
    # worker only, so summed over both workers the active tasks never pass the cap.
    during: Samples = {}
    peak = 0.0
    while proc.poll() is None:
        both = [scrape(p) for p in ports]
        exporters = [i for i, sc in enumerate(both) if any(n == "kontext_active_cap" for n, _ in sc)]
        assert len(exporters) <= 1, exporters
        peak = max(peak, total(both, "kontext_active_tasks", endpoint="*"))
        if exporters:
            during = both[exporters[0]]
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=180)
    assert peak <= 24, peak
    # Rows m4 and m8 end failed and m11 moderated (their prompts' emulator markers pin that): a run
    # with failed rows exits 1, whatever the 429s did to the others (20 attempts ride them out).
    assert proc.returncode == 1, stderr
    caps = {dict(ls)["endpoint"]: v for (n, ls), v in during.items() if n == "kontext_active_cap"}
    assert caps.get("*") == 24
    assert caps.get("flux-kontext-max") == 6

    results = read_results((out / "results.csv").read_bytes())
    assert {r["id"]: r["status"] for r in results if r["status"] != "succeeded"} == {
        "m4": "failed",
        "m8": "failed",
        "m11": "moderated",
    }
    after = [scrape(p) for p in ports]
    statuses: dict[str, float] = defaultdict(float)
    for r in results:
        statuses[r["status"]] += 1
    # Every known status exists from the start, at 0 where no row ended so.
    finished = by_label(after, "kontext_rows_finished_total", "status")
    assert {k for k, v in finished.items() if v == 0} >= {"invalid", "skipped", "cancelled", "budget"}
    assert {k: v for k, v in finished.items() if v} == statuses
    assert total(after, "kontext_rows_finished_total") == len(rows)
    endpoints = by_label(after, "kontext_rows_finished_total", "endpoint")
    assert {k: v for k, v in endpoints.items() if v} == {"flux-kontext-pro": 8, "flux-kontext-max": 4}
    # The histogram counts every submitted row once, by its endpoint; the run's end, by its outcome
    # (rows failed and were moderated: "failed"), on whichever worker recorded it.
    assert total(after, "kontext_row_duration_seconds_count") == len(rows)
    assert total(after, "kontext_runs_finished_total", outcome="failed") == 1
    assert total(after, "kontext_runs_finished_total") == 1
    assert (
        max(
            s.get(("kontext_run_last_finished_timestamp_seconds", frozenset({("outcome", "failed")})), 0) for s in after
        )
        > 0
    )
    # Every metric the alert rules and the dashboard may use (deploy/prometheus/metrics-contract.yml)
    # is exported by some worker.
    contract = yaml.safe_load((ROOT / "deploy" / "prometheus" / "metrics-contract.yml").read_text(encoding="utf-8"))
    exported = {n for sc in [*after, during] for n, _ in sc}
    # (Per-run series exist only while their run is open, and a run without a budget has none.)
    wanted = [m for m, doc in contract["metrics"].items() if "run" not in doc.get("labels", [])]
    missing = [m for m in wanted if not any(n == m or n.startswith(f"{m}_") for n in exported)]
    assert missing == []
    assert total(after, "kontext_polls_total") == sum(int(r["polls"]) for r in results)
    spent = sum(float(r["cost_credits"]) for r in results if r["cost_credits"])
    assert spent > 0
    assert total(after, "kontext_credits_spent_total") == pytest.approx(spent)

    stats = httpx.get(f"{emu.base_url}/_emulator/stats", params={"include_tasks": "false"}, timeout=5).json()
    answered_429 = stats["rejected_429"] + stats["faults_injected"].get("429", 0)
    assert answered_429 > 0
    assert total(after, "kontext_api_rate_limited_total", kind="submit") == answered_429
    assert total(after, "kontext_api_request_seconds_count", kind="submit") == stats["submits"] + answered_429
    assert total(after, "kontext_api_request_seconds_count", kind="poll") == stats["polls"]
    assert total(after, "kontext_api_request_seconds_count", kind="download") == stats["downloads"]
    assert total(after, "kontext_api_request_seconds_sum", kind="poll") > 0
    # Once the run is over nothing holds a slot or waits, and no run is left open.
    assert total(after[:1], "kontext_active_tasks") == 0
    assert total(after[:1], "kontext_waiting_rows") == 0
    assert total(after[:1], "kontext_run_rows_left") == 0
    # Gauges are labelled with the key's fingerprint; the key itself is nowhere in a scrape.
    assert s.api_key.fingerprint in httpx.get(f"http://127.0.0.1:{ports[0]}/metrics", timeout=5).text
    assert KEY not in httpx.get(f"http://127.0.0.1:{ports[1]}/metrics", timeout=5).text


def test_metrics_host_is_loopback_unless_set() -> None:
    assert Settings.from_env({}).metrics_host == "127.0.0.1"
    assert Settings.from_env({"KONTEXT_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("method", "url", "headers", "kind"),
    [
        ("POST", "https://api.bfl.ai/v1/flux-kontext-pro", {"x-key": "k"}, "submit"),
        ("GET", "https://api.bfl.ai/v1/get_result?id=1", {"x-key": "k"}, "poll"),
        ("GET", "https://r.example/v1/tasks/1", {"authorization": "Bearer k"}, "poll"),
        ("GET", "https://api.bfl.ai/v1/credits", {"x-key": "k"}, "credits"),
        ("GET", "https://delivery.example/x/sample.png?sig=abc", {}, "download"),
    ],
)
def test_call_kind_from_the_request(method: str, url: str, headers: dict[str, str], kind: str) -> None:
    assert call_kind(httpx.Request(method, url, headers=headers)) == kind
