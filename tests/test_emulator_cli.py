"""The emulator's option parsers and its click command, the latter as a real subprocess.

Given CLI option strings, when parsed, then good ones become config values and bad ones raise
ValueError with a hint; given ``emulator`` started as a process, when it prints its URL, then a
client can use it at once and SIGTERM stops it cleanly.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from kontext_batch.emulator import (
    EmulatorConfig,
    LatencySpec,
    emulator_command,
    parse_fault,
    parse_latency,
    parse_max_active,
)
from tests.emulator_fixtures import wait_terminal

START_GUARD_S = 30.0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1.0", ("*", LatencySpec.fixed(1.0))),
        ("0", ("*", LatencySpec.fixed(0.0))),
        ("lognormal:5:0.4", ("*", LatencySpec.lognormal(5.0, 0.4))),
        ("flux-kontext-max=lognormal:9:0.4", ("flux-kontext-max", LatencySpec.lognormal(9.0, 0.4))),
        ("flux-kontext-pro=2.5", ("flux-kontext-pro", LatencySpec.fixed(2.5))),
    ],
)
def test_parse_latency(spec: str, expected: tuple[str, LatencySpec]) -> None:
    assert parse_latency(spec) == expected


@pytest.mark.parametrize("spec", ["", "fast", "-1", "lognormal:5", "lognormal:a:b", "Bad Name=1", "x=lognormal:1:-2"])
def test_parse_latency_refuses_with_a_hint(spec: str) -> None:
    with pytest.raises(ValueError, match="latency"):
        parse_latency(spec)


def test_parse_fault_and_max_active() -> None:
    assert parse_fault("500=0.1") == ("500", 0.1)
    assert parse_fault("content-moderated=1") == ("content-moderated", 1.0)
    assert parse_max_active("flux-kontext-max=6") == ("flux-kontext-max", 6)
    assert parse_max_active("total=24") == ("total", 24)


@pytest.mark.parametrize("spec", ["500", "teapot=0.1", "500=1.5", "500=-1", "500=lots"])
def test_parse_fault_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_fault(spec)


@pytest.mark.parametrize("spec", ["6", "flux-kontext-max=0", "total=x", "Bad=3"])
def test_parse_max_active_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="max-active"):
        parse_max_active(spec)


def test_lognormal_latency_centres_on_its_median() -> None:
    rng = random.Random(3)
    spec = LatencySpec.lognormal(4.0, 0.3)
    draws = sorted(spec.sample(rng) for _ in range(2001))
    assert 3.6 < draws[1000] < 4.4
    assert LatencySpec.fixed(1.5).sample(rng) == 1.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_scale": 0},
        {"max_active_total": 0},
        {"faults": {"nope": 0.1}},
        {"default_ratio": "2:1"},
        {"api_keys": ("",)},
    ],
)
def test_impossible_configs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(**kwargs)  # type: ignore[arg-type]


def test_durations_scale_and_the_stall_has_a_floor() -> None:
    config = EmulatorConfig(time_scale=0.01)
    assert config.sample_ttl_s == pytest.approx(6.0)
    assert config.stall_s == 2.0
    assert EmulatorConfig(time_scale=1.0).stall_s == 40.0
    assert config.cost_for("flux-kontext-max") == 8
    assert config.cost_for("flux-2-pro") == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency", "soon"], "latency"),
        (["--fault", "teapot=1"], "fault"),
        (["--max-active", "total=0"], "max-active"),
        (["--time-scale", "0"], "time_scale"),
    ],
)
def test_bad_options_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = CliRunner().invoke(emulator_command, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.fixture
def served() -> Iterator[str]:
    """``emulator`` as a real process on a free port; yields the base URL it prints."""
    code = "from kontext_batch.emulator import emulator_command; emulator_command()"
    args = [
        "--port", "0", "--api-key", "cli-key", "--latency", "6", "--latency", "flux-kontext-max=lognormal:9:0.1",
        "--time-scale", "0.05", "--max-active", "flux-kontext-max=1", "--max-active", "total=5",
        "--credits", "100", "--seed", "3", "--default-ratio", "input", "--webhook-form", "alt",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if match is None:
            proc.kill()
            pytest.fail(f"no URL printed: {line!r} {proc.communicate(timeout=START_GUARD_S)}")
        yield match.group(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=START_GUARD_S)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in stderr


def test_the_command_serves_until_terminated(served: str) -> None:
    with httpx.Client(timeout=10) as http:
        headers = {"x-key": "cli-key"}
        assert (
            http.post(f"{served}/v1/flux-kontext-pro", headers={"x-key": "other"}, json={"prompt": "x"}).status_code
            == 403
        )
        first = http.post(f"{served}/v1/flux-kontext-max", headers=headers, json={"prompt": "x"})
        assert first.status_code == 200
        assert first.json()["polling_url"].startswith(served.replace("127.0.0.1", "localhost"))
        assert http.post(f"{served}/v1/flux-kontext-max", headers=headers, json={"prompt": "x"}).status_code == 429
        assert http.get(f"{served}/v1/credits", headers=headers).json() == {"credits": 92.0}
        assert wait_terminal(http, first.json()["polling_url"], key="cli-key")["status"] == "Ready"
        stats = http.get(f"{served}/_emulator/stats").json()
    assert stats["submits"] == 1
    assert stats["rejected_429"] == 1
    assert "cli-key" not in str(stats)


@pytest.mark.integration
def test_a_busy_port_is_a_clean_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(emulator_command, ["--port", str(port)])
    assert result.exit_code == 1
    assert "cannot listen" in result.output
