"""Two API keys on one emulator: each has its own cap, credits, peak and 429 count in /_emulator/stats.

Given keys A and B, when each submits past its cap or its credits, then ``stats["keys"][fp]`` tells
them apart: ``tasks_created``, ``active``, ``peak_active``, ``max_active_total``, ``rejected_429``,
``answers_429``, ``rejected_402``, ``credits`` and ``credits_spent``, with ``fp`` the key's
:class:`~kontext_batch.secret.Secret` fingerprint; the keys themselves appear nowhere.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kontext_batch.emulator import Emulator, EmulatorConfig, emulator_command
from kontext_batch.secret import Secret
from tests.emulator_fixtures import http, slow_config, submit

__all__ = ["http"]  # fixtures used by name

A = "emu-test-key-A-7c1e-secret"
B = "emu-test-key-B-0d42-secret"
FP_A, FP_B = Secret(A).fingerprint, Secret(B).fingerprint


def two_keys(**overrides: Any) -> EmulatorConfig:
    return slow_config(api_keys=(A, B), **overrides)


def fill(client: httpx.Client, emu: Emulator, key: str, n: int, endpoint: str = "flux-kontext-pro") -> list[int]:
    return [submit(client, emu.base_url, {"prompt": "x"}, endpoint, key=key).status_code for _ in range(n)]


@pytest.mark.integration
def test_every_configured_key_is_listed_before_it_submits() -> None:
    with Emulator(two_keys(max_active_total=4, credits=50)) as emu:
        keys = emu.stats(tasks=False)["keys"]
    assert set(keys) == {FP_A, FP_B}
    assert keys[FP_A] == {
        "tasks_created": 0,
        "active": {"total": 0},
        "peak_active": {"total": 0},
        "max_active_total": 4,
        "rejected_429": 0,
        "answers_429": 0,
        "rejected_402": 0,
        "credits": 50,
        "credits_spent": 0,
    }


def test_a_cap_of_4_per_key_holds_for_each_key_separately(http: httpx.Client) -> None:
    with Emulator(two_keys(max_active_total=4)) as emu:
        assert fill(http, emu, A, 6) == [200] * 4 + [429] * 2
        assert fill(http, emu, B, 5) == [200] * 4 + [429]
        stats = emu.stats(tasks=False)
    a, b = stats["keys"][FP_A], stats["keys"][FP_B]
    assert (a["peak_active"]["total"], b["peak_active"]["total"]) == (4, 4)
    assert (a["active"]["total"], b["active"]["total"]) == (4, 4)
    assert (a["rejected_429"], b["rejected_429"]) == (2, 1)
    assert (a["answers_429"], b["answers_429"]) == (2, 1)
    assert (a["tasks_created"], b["tasks_created"]) == (4, 4)
    assert stats["rejected_429"] == 3
    assert stats["tasks_created"] == 8


def test_key_stats_reads_one_keys_entry_by_the_key_itself(http: httpx.Client) -> None:
    with Emulator(two_keys(max_active_total=1)) as emu:
        fill(http, emu, B, 2)
        assert emu.key_stats(B)["rejected_429"] == 1
        assert emu.key_stats(A)["tasks_created"] == 0


def test_one_key_may_have_its_own_cap(http: httpx.Client) -> None:
    with Emulator(two_keys(max_active_total=4, max_active_total_by_key={B: 2})) as emu:
        assert fill(http, emu, A, 5) == [200] * 4 + [429]
        assert fill(http, emu, B, 3) == [200] * 2 + [429]
        keys = emu.stats(tasks=False)["keys"]
    assert (keys[FP_A]["max_active_total"], keys[FP_B]["max_active_total"]) == (4, 2)
    assert (keys[FP_A]["peak_active"]["total"], keys[FP_B]["peak_active"]["total"]) == (4, 2)


def test_each_keys_credits_fall_by_exactly_the_cost_of_its_own_tasks(http: httpx.Client) -> None:
    with Emulator(two_keys(credits=100, credits_by_key={B: 20})) as emu:
        costs_a = [
            submit(http, emu.base_url, {"prompt": "x"}, endpoint, key=A).json()["cost"]
            for endpoint in ("flux-kontext-pro", "flux-kontext-max", "flux-kontext-pro")
        ]
        b_answers = [submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max", key=B) for _ in range(3)]
        stats = emu.stats()
        balance_b = http.get(f"{emu.base_url}/v1/credits", headers={"x-key": B}).json()["credits"]
    assert costs_a == [4, 8, 4]
    assert [r.status_code for r in b_answers] == [200, 200, 402]
    a, b = stats["keys"][FP_A], stats["keys"][FP_B]
    assert a["credits"] == 100 - sum(costs_a)
    assert a["credits_spent"] == sum(costs_a)
    assert b["credits"] == balance_b == 20 - 16
    assert b["credits_spent"] == 16
    assert (a["rejected_402"], b["rejected_402"]) == (0, 1)
    # The spend matches the tasks each key owns, by endpoint price.
    owned = {FP_A: 0, FP_B: 0}
    for task in stats["tasks"].values():
        owned[task["key"]] += {"flux-kontext-pro": 4, "flux-kontext-max": 8}[task["endpoint"]]
    assert owned == {FP_A: a["credits_spent"], FP_B: b["credits_spent"]}


def test_injected_429s_count_as_answers_to_their_key_but_not_as_cap_refusals(http: httpx.Client) -> None:
    with Emulator(two_keys(faults={"429": 1.0})) as emu:
        assert fill(http, emu, A, 3) == [429] * 3
        reseller = http.post(
            f"{emu.base_url}/reseller/v1/tasks",
            headers={"authorization": f"Bearer {B}"},
            json={"model": "flux_kontext_pro", "prompt": "x"},
        )
        assert reseller.status_code == 429
        keys = emu.stats(tasks=False)["keys"]
    assert (keys[FP_A]["answers_429"], keys[FP_A]["rejected_429"]) == (3, 0)
    assert (keys[FP_B]["answers_429"], keys[FP_B]["rejected_429"]) == (1, 0)


def test_keys_never_appear_in_stats_or_the_config_repr(http: httpx.Client) -> None:
    config = two_keys(max_active_total_by_key={A: 3}, credits_by_key={B: 10})
    with Emulator(config) as emu:
        fill(http, emu, A, 4)
        fill(http, emu, B, 3)
        text = http.get(f"{emu.base_url}/_emulator/stats").text
    for key in (A, B):
        assert key not in text
        assert key not in repr(config)


@pytest.mark.parametrize(
    "kwargs", [{"max_active_total_by_key": {A: 0}}, {"credits_by_key": {A: -1}}, {"credits_by_key": {"": 5}}]
)
def test_bad_per_key_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(**kwargs)


def test_the_cli_builds_per_key_caps_and_credits(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[EmulatorConfig] = []
    monkeypatch.setattr("kontext_batch.emulator.cli.run", lambda config, *_, **__: seen.append(config))
    args = ["--api-key", A, "--api-key", B, "--key-max-active", f"{A}=4", "--key-credits", f"{B}=12.5"]
    result = CliRunner().invoke(emulator_command, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.max_active_total_by_key == {A: 4}
    assert config.credits_by_key == {B: 12.5}


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--key-max-active", f"{A}=0"], "--key-max-active"),
        (["--key-max-active", f"{A}=2.5"], "--key-max-active"),
        (["--key-max-active", A], "--key-max-active"),
        (["--key-credits", f"{A}=lots"], "--key-credits"),
    ],
)
def test_bad_per_key_options_exit_2_without_echoing_the_key(args: list[str], hint: str) -> None:
    result = CliRunner().invoke(emulator_command, args)
    assert result.exit_code == 2
    assert hint in result.output
    assert A not in result.output
