"""The emulator speaks BFL's protocol over real HTTP: submit, poll the other host, download a real image.

Given an emulator on a free loopback port with a small time_scale, when a plain httpx client drives
it, then it sees what a client of the real API sees: a polling_url on another host, Ready results
with signed expiring sample URLs, images of the bucket size in the requested format, BFL's caps
and credits, and stats that account for every task without naming a key.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
from PIL import Image, ImageStat

from kontext_batch.emulator import Emulator
from kontext_batch.secret import Secret
from tests.emulator_fixtures import (
    KEY,
    emu,
    fast_config,
    http,
    image_b64,
    image_bytes,
    slow_config,
    submit,
    wait_terminal,
)

__all__ = ["emu", "http"]  # fixtures used by name

FP = Secret(KEY).fingerprint


def run_task(
    client: httpx.Client, base_url: str, body: dict[str, Any], endpoint: str = "flux-kontext-pro"
) -> dict[str, Any]:
    resp = submit(client, base_url, body, endpoint)
    assert resp.status_code == 200, resp.text
    return wait_terminal(client, resp.json()["polling_url"])


def sample_of(client: httpx.Client, base_url: str, body: dict[str, Any]) -> httpx.Response:
    result = run_task(client, base_url, body)
    assert result["status"] == "Ready", result
    resp = client.get(result["result"]["sample"])
    assert resp.status_code == 200
    return resp


def decode(content: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(content))
    img.load()
    return img


# -- hosts and polling ----------------------------------------------------------------------------


@pytest.mark.parametrize(("submit_host", "poll_host"), [("127.0.0.1", "localhost"), ("localhost", "127.0.0.1")])
def test_polling_url_names_the_other_host_and_the_submit_host_does_not_know_the_task(
    emu: Emulator, http: httpx.Client, submit_host: str, poll_host: str
) -> None:
    base = f"http://{submit_host}:{emu.port}"
    resp = submit(http, base, {"prompt": "x"})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert urlsplit(body["polling_url"]).netloc == f"{poll_host}:{emu.port}"
    assert parse_qs(urlsplit(body["polling_url"]).query) == {"id": [body["id"]]}

    rebuilt = http.get(f"{base}/v1/get_result", params={"id": body["id"]}, headers={"x-key": KEY})
    assert rebuilt.status_code == 200
    assert rebuilt.json()["status"] == "Task not found"
    assert rebuilt.json()["id"] == body["id"]
    assert wait_terminal(http, body["polling_url"])["status"] == "Ready"


def test_without_host_swap_the_submit_host_polls(http: httpx.Client) -> None:
    with Emulator(fast_config(poll_host_swap=False)) as emu:
        body = submit(http, emu.base_url, {"prompt": "x"}).json()
        assert body["polling_url"].startswith(emu.base_url + "/v1/get_result?id=")
        assert wait_terminal(http, body["polling_url"])["status"] == "Ready"


def test_an_unknown_id_is_task_not_found(emu: Emulator, http: httpx.Client) -> None:
    for host in ("127.0.0.1", "localhost"):
        resp = http.get(f"http://{host}:{emu.port}/v1/get_result", params={"id": "nope"})
        assert resp.status_code == 200
        assert resp.json()["status"] == "Task not found"


def test_a_pending_task_reports_progress_and_no_result(http: httpx.Client) -> None:
    with Emulator(slow_config()) as emu:
        body = submit(http, emu.base_url, {"prompt": "x"}).json()
        poll = http.get(body["polling_url"]).json()
        assert set(poll) == {"id", "status", "result", "progress", "details", "preview"}
        assert poll["status"] == "Pending"
        assert poll["result"] is None
        assert 0.0 <= poll["progress"] < 1.0


def test_a_ready_result_has_every_documented_field(emu: Emulator, http: httpx.Client) -> None:
    before = time.time()
    submitted = submit(http, emu.base_url, {"prompt": "a lighthouse", "seed": 99}).json()
    result = wait_terminal(http, submitted["polling_url"])
    assert result["id"] == submitted["id"]
    assert result["status"] == "Ready"
    assert result["progress"] == 1.0
    assert result["details"] is None
    r = result["result"]
    assert set(r) == {"sample", "prompt", "seed", "start_time", "end_time", "duration"}
    assert r["seed"] == 99
    assert r["prompt"] == "a lighthouse"
    assert before - 1 <= r["start_time"] <= r["end_time"] <= time.time() + 1
    assert r["duration"] == pytest.approx(r["end_time"] - r["start_time"], abs=0.01)
    url = urlsplit(r["sample"])
    assert url.netloc == urlsplit(submitted["polling_url"]).netloc
    assert url.path == f"/delivery/results/{submitted['id']}/sample.png"
    query = parse_qs(url.query)
    assert float(query["se"][0]) == pytest.approx(r["end_time"] + 600 * emu.config.time_scale, abs=0.01)
    assert len(query["sig"][0]) == 64


def test_a_random_seed_is_reported_and_upsampling_changes_the_prompt(emu: Emulator, http: httpx.Client) -> None:
    r = run_task(http, emu.base_url, {"prompt": "a cat", "prompt_upsampling": True})["result"]
    assert isinstance(r["seed"], int)
    assert r["prompt"].startswith("a cat")
    assert r["prompt"] != "a cat"


# -- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "fmt", "size", "pil", "mime"),
    [
        ("1:1", "png", (1024, 1024), "PNG", "image/png"),
        ("16:9", "jpeg", (1392, 752), "JPEG", "image/jpeg"),
        ("21:9", "webp", (1568, 672), "WEBP", "image/webp"),
        ("4:3", "png", (1184, 880), "PNG", "image/png"),
        ("3:2", "jpeg", (1248, 832), "JPEG", "image/jpeg"),
        ("9:16", "png", (752, 1392), "PNG", "image/png"),
        ("9:21", "png", (672, 1568), "PNG", "image/png"),
        ("2:3", "webp", (832, 1248), "WEBP", "image/webp"),
    ],
)
def test_the_sample_is_an_image_of_the_bucket_size_in_the_requested_format(
    emu: Emulator, http: httpx.Client, ratio: str, fmt: str, size: tuple[int, int], pil: str, mime: str
) -> None:
    body = {"prompt": "x", "aspect_ratio": ratio, "output_format": fmt, "input_image": image_b64()}
    submitted = submit(http, emu.base_url, body).json()
    assert submitted["output_mp"] == round(size[0] * size[1] / 1e6, 2)
    result = wait_terminal(http, submitted["polling_url"])
    assert urlsplit(result["result"]["sample"]).path.endswith(f"/sample.{fmt}")
    resp = http.get(result["result"]["sample"])
    assert resp.headers["content-type"] == mime
    img = decode(resp.content)
    assert img.format == pil
    assert img.size == size


@pytest.mark.parametrize("ratio", ["2:1", "5:4", "1:2", "7:3", "10:11"])
def test_other_ratios_get_a_near_bucket_of_about_one_megapixel(emu: Emulator, http: httpx.Client, ratio: str) -> None:
    img = decode(sample_of(http, emu.base_url, {"prompt": "x", "aspect_ratio": ratio}).content)
    w, h = img.size
    want_w, want_h = (int(p) for p in ratio.split(":"))
    assert w % 16 == 0
    assert h % 16 == 0
    assert 0.9e6 < w * h < 1.2e6
    assert abs(w / h - want_w / want_h) / (want_w / want_h) < 0.08


def test_without_aspect_ratio_the_output_is_square_or_follows_the_input(http: httpx.Client) -> None:
    inp = {"prompt": "x", "input_image": image_b64((400, 300))}
    wide = {"prompt": "x", "input_image": image_b64((800, 200))}
    with Emulator(fast_config()) as square:
        assert decode(sample_of(http, square.base_url, inp).content).size == (1024, 1024)
        assert decode(sample_of(http, square.base_url, {"prompt": "x"}).content).size == (1024, 1024)
    with Emulator(fast_config(default_ratio="input")) as follow:
        assert decode(sample_of(http, follow.base_url, inp).content).size == (1184, 880)
        # 4:1 is clamped to 21:9.
        assert decode(sample_of(http, follow.base_url, wide).content).size == (1568, 672)
        assert decode(sample_of(http, follow.base_url, {"prompt": "x"}).content).size == (1024, 1024)


def test_the_same_request_renders_the_same_bytes_and_another_seed_other_bytes(
    emu: Emulator, http: httpx.Client
) -> None:
    body = {"prompt": "make it sepia", "seed": 5, "input_image": image_b64(), "output_format": "webp"}
    first = sample_of(http, emu.base_url, body).content
    assert sample_of(http, emu.base_url, body).content == first
    assert sample_of(http, emu.base_url, {**body, "seed": 6}).content != first
    assert sample_of(http, emu.base_url, {**body, "prompt": "make it blue"}).content != first
    assert sample_of(http, emu.base_url, {**body, "input_image": image_b64(colour=(0, 90, 0))}).content != first


def test_text_only_requests_render_an_image_that_depends_on_the_prompt(emu: Emulator, http: httpx.Client) -> None:
    a = sample_of(http, emu.base_url, {"prompt": "a castle", "seed": 1}).content
    b = sample_of(http, emu.base_url, {"prompt": "a forest", "seed": 1}).content
    assert a != b
    img = decode(a)
    assert img.size == (1024, 1024)
    # Not a flat fill: a gradient and shapes.
    assert max(ImageStat.Stat(img.convert("L")).stddev) > 5


def test_the_edit_follows_the_prompt(emu: Emulator, http: httpx.Client) -> None:
    source = image_b64((512, 512), colour=(220, 40, 40))
    grey = decode(sample_of(http, emu.base_url, {"prompt": "make it black and white", "input_image": source}).content)
    body_area = grey.convert("RGB").crop((0, 0, 1024, 900))
    r, g, b = (channel.getextrema() for channel in body_area.split())
    assert r == g == b, "grayscale: every channel alike"

    white = decode(
        sample_of(http, emu.base_url, {"prompt": "put it on a white background", "input_image": source}).content
    )
    corner = white.convert("RGB").getpixel((5, 5))
    assert isinstance(corner, tuple)
    assert min(corner) > 230

    red = decode(
        sample_of(http, emu.base_url, {"prompt": "x", "input_image": image_b64(colour=(128, 128, 128))}).content
    )
    assert red.size == (1024, 1024)


def test_extra_reference_images_change_the_output(emu: Emulator, http: httpx.Client) -> None:
    body = {"prompt": "combine them", "seed": 3, "input_image": image_b64()}
    one = sample_of(http, emu.base_url, body).content
    two = sample_of(http, emu.base_url, {**body, "input_image_2": image_b64(colour=(0, 200, 0))}).content
    four = sample_of(
        http,
        emu.base_url,
        {**body, "input_image_2": image_b64(), "input_image_3": image_b64(), "input_image_4": image_b64()},
    ).content
    assert len({one, two, four}) == 3


def test_inputs_may_be_urls_or_carry_a_data_uri_prefix(emu: Emulator, http: httpx.Client) -> None:
    first = run_task(http, emu.base_url, {"prompt": "x", "aspect_ratio": "16:9"})
    chained = submit(http, emu.base_url, {"prompt": "y", "input_image": first["result"]["sample"]})
    assert chained.status_code == 200, chained.text
    assert chained.json()["input_mp"] == round(1392 * 752 / 1e6, 2)
    assert wait_terminal(http, chained.json()["polling_url"])["status"] == "Ready"

    prefixed = submit(http, emu.base_url, {"prompt": "x", "input_image": "data:image/png;base64," + image_b64()})
    assert prefixed.status_code == 200


def _bad_input_cases() -> list[tuple[str, str]]:
    huge_pixels = io.BytesIO()
    Image.new("L", (5000, 4001)).save(huge_pixels, "PNG")
    return [
        ("not base64 %%%", "base64"),
        (base64.b64encode(b"plain text, not an image").decode(), "decoded"),
        (base64.b64encode(image_bytes()[:60]).decode(), "decoded"),
        (base64.b64encode(huge_pixels.getvalue()).decode(), "megapixels"),
        ("http://127.0.0.1:9/unreachable.png", "fetched"),
    ]


@pytest.mark.parametrize(("value", "reason"), _bad_input_cases(), ids=["not-b64", "text", "truncated", "20mp", "url"])
def test_bad_input_images_answer_400_and_create_no_task(
    emu: Emulator, http: httpx.Client, value: str, reason: str
) -> None:
    before = emu.stats(tasks=False)["submits"]
    resp = submit(http, emu.base_url, {"prompt": "x", "input_image_2": value})
    assert resp.status_code == 400
    detail = resp.json()["detail"]
    assert isinstance(detail, str)
    assert "input_image_2" in detail
    assert reason in detail
    assert emu.stats(tasks=False)["submits"] == before


def test_an_input_over_20_megabytes_is_400(emu: Emulator, http: httpx.Client) -> None:
    payload = base64.b64encode(b"\0" * (20 * 1024 * 1024 + 1)).decode()
    resp = submit(http, emu.base_url, {"prompt": "x", "input_image": payload})
    assert resp.status_code == 400
    assert "20 MB" in resp.json()["detail"]


# -- limits and credits ---------------------------------------------------------------------------


def test_429_at_6_max_and_24_in_all_with_peaks_in_stats(http: httpx.Client) -> None:
    with Emulator(slow_config()) as emu:
        for _ in range(6):
            assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").status_code == 200
        over = submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max")
        assert over.status_code == 429
        assert isinstance(over.json()["detail"], str)
        for _ in range(18):
            assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-pro").status_code == 200
        assert submit(http, emu.base_url, {"prompt": "x"}, "flux-2-pro").status_code == 429
        stats = emu.stats()
    assert stats["rejected_429"] == 2
    assert stats["submits"] == 24
    assert stats["peak_active"] == {FP: {"flux-kontext-max": 6, "flux-kontext-pro": 18, "total": 24}}
    assert stats["active"][FP]["total"] == 24


def test_an_active_slot_frees_when_the_task_turns_terminal(http: httpx.Client) -> None:
    with Emulator(fast_config(max_active={"flux-kontext-max": 1})) as emu:
        first = submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").json()
        assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").status_code == 429
        wait_terminal(http, first["polling_url"])
        assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").status_code == 200
        assert emu.stats()["peak_active"][FP]["flux-kontext-max"] == 1


def test_credits_are_charged_per_submit_and_402_when_short(http: httpx.Client) -> None:
    with Emulator(fast_config(credits=10.0)) as emu:
        assert http.get(f"{emu.base_url}/v1/credits", headers={"x-key": KEY}).json() == {"credits": 10.0}
        assert submit(http, emu.base_url, {"prompt": "x"}).json()["cost"] == 4
        assert submit(http, emu.base_url, {"prompt": "x"}).status_code == 200
        short = submit(http, emu.base_url, {"prompt": "x"})
        assert short.status_code == 402
        assert short.json() == {"detail": "Insufficient credits"}
        assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").status_code == 402
        assert http.get(f"{emu.base_url}/v1/credits", headers={"x-key": KEY}).json() == {"credits": 2.0}
        emu.set_credits(KEY, 8)
        assert submit(http, emu.base_url, {"prompt": "x"}, "flux-kontext-max").status_code == 200
        assert submit(http, emu.base_url, {"prompt": "x"}).status_code == 402
        stats = emu.stats()
    assert stats["rejected_402"] == 3
    assert stats["submits"] == 3


def test_credits_and_caps_are_per_key(http: httpx.Client) -> None:
    with Emulator(slow_config(api_keys=(), credits=4.0, max_active={"flux-kontext-max": 1})) as emu:
        assert submit(http, emu.base_url, {"prompt": "x"}, key="alice").status_code == 200
        assert submit(http, emu.base_url, {"prompt": "x"}, key="alice").status_code == 402
        assert submit(http, emu.base_url, {"prompt": "x"}, key="bob").status_code == 200
        assert set(emu.stats()["peak_active"]) == {Secret("alice").fingerprint, Secret("bob").fingerprint}


# -- delivery -------------------------------------------------------------------------------------


def test_a_sample_url_expires_600_s_times_time_scale_after_ready(http: httpx.Client) -> None:
    config = fast_config(time_scale=0.001)  # the URL lives 0.6 s
    with Emulator(config) as emu:
        result = run_task(http, emu.base_url, {"prompt": "x"})
        url = result["result"]["sample"]
        assert http.get(url).status_code == 200
        time.sleep(max(0.0, float(parse_qs(urlsplit(url).query)["se"][0]) - time.time()) + 0.2)
        expired = http.get(url)
        assert expired.status_code == 403
        assert "AuthenticationFailed" in expired.text
        assert emu.stats()["downloads"] == 1


def test_a_tampered_sample_url_is_403(emu: Emulator, http: httpx.Client) -> None:
    url = urlsplit(run_task(http, emu.base_url, {"prompt": "x"})["result"]["sample"])
    query = parse_qs(url.query)
    later = str(float(query["se"][0]) + 3600)
    forged = [
        url._replace(query=url.query.replace(query["sig"][0], "0" * 64)),
        url._replace(query=url.query.replace(query["se"][0], later)),
        url._replace(path=url.path.replace("sample.png", "sample.jpeg")),
    ]
    for bad in forged:
        assert http.get(urlunsplit(bad)).status_code == 403


def test_past_the_sample_budget_the_oldest_downloaded_sample_is_dropped(http: httpx.Client) -> None:
    with Emulator(fast_config(sample_cache_mb=0.001)) as emu:
        first = run_task(http, emu.base_url, {"prompt": "a"})["result"]["sample"]
        assert http.get(first).status_code == 200
        second = run_task(http, emu.base_url, {"prompt": "b"})["result"]["sample"]
        assert http.get(second).status_code == 200
        gone = http.get(first)
        assert gone.status_code == 404
        assert "BlobNotFound" in gone.text
        stats = emu.stats(tasks=False)
    assert stats["samples_evicted"] == 1
    assert stats["samples_held_bytes"] > 0


def test_stats_account_for_tasks_polls_and_downloads_without_the_key(http: httpx.Client) -> None:
    with Emulator(fast_config()) as emu:
        submitted = submit(http, emu.base_url, {"prompt": "x"}).json()
        result = wait_terminal(http, submitted["polling_url"])
        http.get(result["result"]["sample"])
        http.get(result["result"]["sample"])
        raw = http.get(f"{emu.base_url}/_emulator/stats")
        stats = raw.json()
    assert KEY not in raw.text
    for name in (
        "submits", "rejected_429", "rejected_402", "polls", "polls_per_task_mean", "polls_per_task_max",
        "downloads", "peak_active", "active", "final_status", "faults_injected", "tasks",
    ):  # fmt: skip
        assert name in stats
    assert stats["submits"] == 1
    assert stats["downloads"] == 2
    assert stats["final_status"] == {"Ready": 1}
    assert stats["active"] == {FP: {"flux-kontext-pro": 0, "total": 0}}
    task = stats["tasks"][submitted["id"]]
    assert task["endpoint"] == "flux-kontext-pro"
    assert task["key"] == FP
    assert task["status"] == "Ready"
    assert task["downloads"] == 2
    assert task["polls"] >= 1
    assert task["polls"] == stats["polls_per_task_max"] == stats["polls"]
    assert task["submitted_at"] <= task["ready_at"] <= task["first_download_at"]


def test_reset_forgets_everything(http: httpx.Client) -> None:
    with Emulator(slow_config(credits=4.0)) as emu:
        assert submit(http, emu.base_url, {"prompt": "x"}).status_code == 200
        emu.reset()
        stats = emu.stats()
        assert stats["submits"] == 0
        assert stats["tasks"] == {}
        assert stats["active"] == {}
        assert submit(http, emu.base_url, {"prompt": "x"}).status_code == 200


# -- clients as published, and load ---------------------------------------------------------------


def bfl_example_client(base_url: str, key: str, prompt: str) -> bytes:
    """BFL's documented flow, as its examples write it: submit, poll polling_url every 0.5 s, fetch."""
    request = httpx.post(
        f"{base_url}/v1/flux-kontext-pro",
        headers={"accept": "application/json", "x-key": key, "Content-Type": "application/json"},
        json={"prompt": prompt, "input_image": image_b64()},
    ).json()
    request_id, polling_url = request["id"], request["polling_url"]
    while True:
        time.sleep(0.5)
        result = httpx.get(
            polling_url, headers={"accept": "application/json", "x-key": key}, params={"id": request_id}
        ).json()
        if result["status"] == "Ready":
            return httpx.get(result["result"]["sample"]).content
        if result["status"] not in ("Pending",):
            raise AssertionError(f"generation failed: {result}")


@pytest.mark.integration
def test_bfls_published_example_flow_runs_unchanged() -> None:
    with Emulator(fast_config()) as emu:
        content = bfl_example_client(emu.base_url, KEY, "ein fantastisches bild")
    assert decode(content).format == "PNG"


async def _raw_gets(port: int, paths: list[str], connections: int) -> list[int]:
    """GET every path over ``connections`` parallel keep-alive sockets; return the status codes.

    Raw asyncio streams, because httpx's async pool itself slows to ~60 requests/s at 200
    connections and would measure the client rather than the server.
    """
    queue = list(reversed(paths))
    codes: list[int] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                path = queue.pop()
                writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
                await writer.drain()
                head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                length = next(int(h.split(":")[1]) for h in head if h.lower().startswith("content-length"))
                await reader.readexactly(length)
                codes.append(int(head[0].split()[1]))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return codes


def test_hundreds_of_concurrent_polls_of_24_tasks_are_all_answered(http: httpx.Client) -> None:
    with Emulator(fast_config(time_scale=0.2)) as emu:
        urls = [
            submit(http, emu.base_url, {"prompt": f"row {n}", "input_image": image_b64()}).json()["polling_url"]
            for n in range(24)
        ]
        paths = [urlsplit(u).path + "?" + urlsplit(u).query for u in urls] * 25
        codes = asyncio.run(_raw_gets(emu.port, paths, connections=200))
        assert codes == [200] * 600
        assert all(wait_terminal(http, u)["status"] == "Ready" for u in urls)
        stats = emu.stats(tasks=False)
    assert stats["polls"] >= 600 + 24
    assert stats["peak_active"][FP]["total"] == 24
