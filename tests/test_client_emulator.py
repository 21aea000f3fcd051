"""Provider clients against the real emulator over loopback HTTP: the protocol end to end.

Given an emulator serving BFL's dialect (and the reseller's under /reseller/v1), when a client
submits, polls the returned ``polling_url`` and downloads the sample, then the image decodes and
every refusal (caps, credits, keys, validation) arrives as the right exception.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from kontext_batch.api import (
    KontextClient,
    KontextRequest,
    PollResult,
    ResellerClient,
    RetryPolicy,
    Status,
    make_provider,
)
from kontext_batch.emulator import Emulator, EmulatorConfig
from kontext_batch.emulator.config import LatencySpec
from kontext_batch.errors import (
    ApiValidationError,
    AuthError,
    BadRequest,
    OutOfCredits,
    RateLimited,
    SampleExpired,
)
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings

pytestmark = pytest.mark.integration  # every test talks to a real emulator over HTTP

KEY = "emu-KEY-5d1e2b9c-must-never-leak"
OTHER_KEY = "emu-KEY-wrong-0000"
#: Longest wall time any one task may take here; only a guard against hanging, never asserted on.
HANG_GUARD_S = 30.0


def fast_config(**overrides: Any) -> EmulatorConfig:
    """Tasks take a few real milliseconds; everything else as BFL does it."""
    base: dict[str, Any] = {
        "api_keys": (KEY,),
        "latency": {"*": LatencySpec.fixed(0.5)},
        "time_scale": 0.05,
        "seed": 1234,
    }
    return EmulatorConfig(**{**base, **overrides})


def slow_config(**overrides: Any) -> EmulatorConfig:
    """Tasks stay active for an hour, so caps can be filled without racing completions."""
    return fast_config(latency={"*": LatencySpec.fixed(3600.0)}, time_scale=1.0, **overrides)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(fast_config()) as emulator:
        yield emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[KontextClient]:
    with KontextClient(Secret(KEY), emu.base_url, timeout_s=10.0) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert KEY not in caplog.text


def wait_terminal(client: Any, polling_url: str) -> PollResult:
    """Poll until the task leaves Pending (fails the test, rather than hang, after HANG_GUARD_S)."""
    give_up = time.monotonic() + HANG_GUARD_S
    while True:
        result: PollResult = client.poll(polling_url)
        if result.status.terminal:
            return result
        if time.monotonic() > give_up:
            pytest.fail(f"task still {result.raw_status!r} after {HANG_GUARD_S} s")
        time.sleep(0.01)


# -- BFL dialect ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fmt", "ratio", "size", "pil_format"),
    [
        ("flux-kontext-pro", "png", "1:1", (1024, 1024), "PNG"),
        ("flux-kontext-max", "jpeg", "16:9", (1392, 752), "JPEG"),
        ("pro", "webp", "9:21", (672, 1568), "WEBP"),
    ],
)
def test_submit_poll_download_decode(
    client: KontextClient, emu: Emulator, endpoint: str, fmt: str, ratio: str, size: tuple[int, int], pil_format: str
) -> None:
    request = KontextRequest.build(prompt="a red fox in snow", seed=42, aspect_ratio=ratio, output_format=fmt)
    task = client.submit(endpoint, request)
    assert task.id
    assert task.cost == (8.0 if endpoint == "flux-kontext-max" else 4.0)
    # The emulator names the other loopback host, as BFL names another cluster.
    assert urlsplit(task.polling_url).netloc != urlsplit(emu.base_url).netloc

    result = wait_terminal(client, task.polling_url)
    assert result.status is Status.READY
    assert result.id == task.id
    assert result.seed == 42
    assert result.sample_url is not None

    sample = client.download(result.sample_url)
    image = Image.open(io.BytesIO(sample.content))
    image.load()
    assert image.format == pil_format
    assert image.size == size
    assert sample.extension == ("jpg" if fmt == "jpeg" else fmt)


def test_a_rebuilt_poll_url_does_not_find_the_task(client: KontextClient, emu: Emulator) -> None:
    task = client.submit("pro", KontextRequest.build(prompt="x"))
    rebuilt = f"{emu.base_url}/v1/get_result?id={task.id}"
    assert client.poll(rebuilt).status is Status.TASK_NOT_FOUND
    assert wait_terminal(client, task.polling_url).status is Status.READY


def test_an_unknown_task_id_is_task_not_found(client: KontextClient, emu: Emulator) -> None:
    task = client.submit("pro", KontextRequest.build(prompt="x"))
    unknown = task.polling_url.replace(task.id, "00000000-0000-4000-8000-000000000000")
    assert client.poll(unknown).status is Status.TASK_NOT_FOUND


def test_a_wrong_key_is_an_auth_error(emu: Emulator) -> None:
    with KontextClient(OTHER_KEY, emu.base_url) as wrong, pytest.raises(AuthError) as info:
        wrong.submit("pro", KontextRequest.build(prompt="x"))
    assert info.value.status_code in (401, 403)
    assert OTHER_KEY not in str(info.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "aspect_ratio": "30:9"}, "aspect_ratio"),
        ({"prompt": "x", "safety_tolerance": 9}, "safety_tolerance"),
        ({"prompt": "x", "seed": "not a number"}, "seed"),
        ({"seed": 1}, "prompt"),
    ],
)
def test_the_server_422_carries_field_paths(emu: Emulator, body: dict[str, Any], field: str) -> None:
    # The request model would refuse these bodies, so they go out as raw JSON; the client's reading
    # of a 422 (ApiValidationError field paths) is what a real server answer turns into.
    raw = httpx.post(f"{emu.base_url}/v1/flux-kontext-pro", json=body, headers={"x-key": KEY}, timeout=10.0)
    assert raw.status_code == 422
    with KontextClient(Secret(KEY), emu.base_url) as client:
        error = client._core.api_error(raw, "POST")
    assert isinstance(error, ApiValidationError)
    assert field in [e.field for e in error.errors]


def test_an_undecodable_input_image_is_a_400(client: KontextClient) -> None:
    # The model accepts any non-empty string as an image (base64 or URL); the server decodes it.
    with pytest.raises(BadRequest) as info:
        client.submit("pro", KontextRequest.build(prompt="x", input_image="bm90IGFuIGltYWdl"))
    assert info.value.status_code == 400


def test_an_endpoint_the_server_lacks_is_refused(client: KontextClient) -> None:
    with pytest.raises(BadRequest) as info:
        client.submit("get_result", KontextRequest.build(prompt="x"))
    assert info.value.status_code in (404, 405)


def test_credits_run_out_with_402() -> None:
    with Emulator(fast_config(credits=10.0)) as emu, KontextClient(KEY, emu.base_url) as client:
        request = KontextRequest.build(prompt="x")
        assert client.credits() == 10.0
        client.submit("pro", request)
        client.submit("pro", request)
        assert client.credits() == 2.0
        with pytest.raises(OutOfCredits):
            client.submit("pro", request)
        assert emu.stats()["rejected_402"] == 1


def test_402_is_not_retried() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=5, base_s=0.001, sleep=waits.append)
    with Emulator(fast_config(credits=0.0)) as emu, KontextClient(KEY, emu.base_url, retry=policy) as client:
        with pytest.raises(OutOfCredits):
            client.submit("pro", KontextRequest.build(prompt="x"))
        assert emu.stats()["rejected_402"] == 1
    assert waits == []


def test_429_at_the_per_model_and_account_caps() -> None:
    config = slow_config(max_active={"flux-kontext-max": 2}, max_active_total=3)
    with Emulator(config) as emu, KontextClient(KEY, emu.base_url) as client:
        request = KontextRequest.build(prompt="x")
        client.submit("max", request)
        client.submit("max", request)
        with pytest.raises(RateLimited):
            client.submit("max", request)  # max's own cap
        client.submit("pro", request)
        with pytest.raises(RateLimited):
            client.submit("pro", request)  # the account-wide cap
        assert emu.stats()["rejected_429"] == 2


def test_429_is_retried_until_attempts_run_out() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, base_s=0.001, max_s=0.01, jitter=0, sleep=waits.append)
    config = slow_config(max_active={"flux-kontext-max": 1})
    with Emulator(config) as emu, KontextClient(KEY, emu.base_url, retry=policy) as client:
        client.submit("max", KontextRequest.build(prompt="x"))
        with pytest.raises(RateLimited):
            client.submit("max", KontextRequest.build(prompt="x"))
        assert emu.stats()["rejected_429"] == 3
    assert len(waits) == 2


def test_an_expired_sample_url_raises_sample_expired() -> None:
    # time_scale 0.001: a sample URL lives 600 s * 0.001 = 0.6 real seconds.
    config = fast_config(time_scale=0.001)
    with Emulator(config) as emu, KontextClient(KEY, emu.base_url) as client:
        task = client.submit("pro", KontextRequest.build(prompt="x"))
        result = wait_terminal(client, task.polling_url)
        assert result.sample_url is not None
        time.sleep(config.sample_ttl_s + 0.3)
        with pytest.raises(SampleExpired) as info:
            client.download(result.sample_url)
        assert "sig=" not in str(info.value)


def test_retries_ride_out_injected_faults() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=30, base_s=0.001, max_s=0.005, sleep=waits.append)
    config = fast_config(faults={"500": 0.2, "503": 0.2, "429": 0.1, "disconnect": 0.1})
    with Emulator(config) as emu, KontextClient(KEY, emu.base_url, retry=policy) as client:
        for n in range(4):
            task = client.submit("pro", KontextRequest.build(prompt=f"row {n}"))
            result = wait_terminal(client, task.polling_url)
            assert result.status is Status.READY
            assert result.sample_url is not None
            assert client.download(result.sample_url).content
        injected = emu.stats()["faults_injected"]
    assert sum(injected.values()) > 0, "the faults really fired"
    assert waits, "and the policy really retried"


def test_one_client_shared_by_many_threads() -> None:
    """The pipeline shares one client per worker process across its thread pool."""

    def one_row(n: int) -> tuple[str, int]:
        task = shared.submit("pro", KontextRequest.build(prompt=f"row {n}", seed=n))
        result = wait_terminal(shared, task.polling_url)
        assert result.sample_url is not None
        return task.id, len(shared.download(result.sample_url).content)

    with Emulator(fast_config()) as emu, KontextClient(KEY, emu.base_url) as shared:
        with ThreadPoolExecutor(max_workers=16) as pool:
            rows = list(pool.map(one_row, range(20)))
        stats = emu.stats()
    assert len({task_id for task_id, _ in rows}) == 20
    assert all(size > 0 for _, size in rows)
    assert stats["submits"] == 20
    assert stats["final_status"] == {"Ready": 20}


# -- reseller dialect -----------------------------------------------------------------------------


@pytest.fixture
def reseller(emu: Emulator) -> Iterator[ResellerClient]:
    with ResellerClient(KEY, emu.base_url + "/reseller/v1", timeout_s=10.0) as c:
        yield c


@pytest.mark.parametrize(("endpoint", "credits"), [("max", 8.0), ("flux-kontext-pro", 4.0)])
def test_reseller_end_to_end(reseller: ResellerClient, endpoint: str, credits: float) -> None:
    request = KontextRequest.build(
        prompt="a lighthouse at dusk",
        seed=7,
        aspect_ratio="3:2",
        steps=28,
        guidance_scale=3.5,
        negative_prompt="blurry",
        output_format="png",
    )
    task = reseller.submit(endpoint, request)
    assert task.polling_url == f"{reseller.base_url}/tasks/{task.id}"
    result = wait_terminal(reseller, task.polling_url)
    assert result.status is Status.READY
    assert result.cost == credits
    assert result.sample_url is not None
    image = Image.open(io.BytesIO(reseller.download(result.sample_url).content))
    assert image.format == "PNG"
    assert image.size == (1248, 832)


def test_reseller_422_for_a_model_it_does_not_sell(reseller: ResellerClient) -> None:
    # Endpoint names are data on our side; this reseller only sells the two Kontext models.
    with pytest.raises(ApiValidationError) as info:
        reseller.submit("flux-2-pro", KontextRequest.build(prompt="x"))
    assert "model" in [e.field for e in info.value.errors]


def test_reseller_wrong_key_is_an_auth_error(emu: Emulator) -> None:
    with ResellerClient(OTHER_KEY, emu.base_url + "/reseller/v1") as wrong, pytest.raises(AuthError):
        wrong.submit("max", KontextRequest.build(prompt="x"))


@pytest.mark.parametrize("provider", ["bfl", "reseller"])
def test_make_provider_talks_to_the_emulator(emu: Emulator, provider: str) -> None:
    base = emu.base_url + ("/reseller/v1" if provider == "reseller" else "")
    settings = Settings(api_key=Secret(KEY), api_base=base, provider=provider, retry_base_s=0.01)
    client = make_provider(settings)
    try:
        task = client.submit("pro", KontextRequest.build(prompt="x", output_format="jpeg"))
        result = wait_terminal(client, task.polling_url)
        assert result.status is Status.READY
        assert result.sample_url is not None
        assert Image.open(io.BytesIO(client.download(result.sample_url).content)).format == "JPEG"
    finally:
        client.close()
