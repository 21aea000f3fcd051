"""Where the API client sends the key and what it downloads: polls only on the API's own hosts,
samples over https with a byte cap and checked redirects, and unknown status words reported as such.

Servers are started here on 127.0.0.1 and record every request they get, headers included.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from kontext_batch.api import KontextClient, ResellerClient, Status, make_provider
from kontext_batch.api._http import TransportWrapper
from kontext_batch.api.client import parse_bfl_poll
from kontext_batch.api.reseller import parse_reseller_poll
from kontext_batch.errors import InvalidImage, UrlRefused
from kontext_batch.metrics import MeteredTransport
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.local_http import Handler, LocalServer, local_server

KEY = "trust-KEY-7c1d-must-stay-home"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def pending(h: Handler) -> None:
    h.reply(200, json.dumps({"id": "t-1", "status": "Pending", "progress": 0.5}).encode())


@pytest.fixture
def api() -> Iterator[LocalServer]:
    """The configured base: answers polls and serves samples."""
    with local_server() as server:
        server.routes["/v1/get_result"] = pending
        server.routes["/sample.png"] = lambda h: h.reply(200, png(), {"Content-Type": "image/png"})
        yield server


@pytest.fixture
def other() -> Iterator[LocalServer]:
    """Another host (another loopback port): nothing the API hands out may lead the key or a download here."""
    with local_server() as server:
        server.routes["/v1/get_result"] = pending
        server.routes["/inner.png"] = lambda h: h.reply(200, png(), {"Content-Type": "image/png"})
        yield server


def keys_seen(server: LocalServer) -> list[str]:
    return [h.get("x-key", "") + h.get("authorization", "") for _, h in server.seen]


# --- polling URLs ---------------------------------------------------------------------------------


def test_a_foreign_polling_url_gets_no_request_and_no_key(api: LocalServer, other: LocalServer) -> None:
    with KontextClient(KEY, api.base) as client:
        with pytest.raises(UrlRefused) as info:
            client.poll(other.url("/v1/get_result?id=t-1"))
        assert other.base.rsplit(":", 1)[1] in str(info.value)  # names the host (and port)
        assert info.value.host == "127.0.0.1"
        assert not info.value.retryable
        assert KEY not in str(info.value)
        for url in (
            "http://api.eu2.bfl.ai/v1/get_result?id=t-1",  # the API's host, but plain http
            "https://api.bfl.ai.evil.test/v1/get_result?id=t-1",
            "https://evilbfl.ai/v1/get_result?id=t-1",
            "https://api.bfl.ai:8443/v1/get_result?id=t-1",
        ):
            with pytest.raises(UrlRefused):
                client.poll(url)
    with ResellerClient(KEY, api.base + "/v1") as reseller, pytest.raises(UrlRefused):
        reseller.poll(other.url("/v1/tasks/t-1"))
    assert other.seen == []
    assert api.seen == []


def test_polls_on_the_configured_base_carry_the_key(api: LocalServer) -> None:
    with KontextClient(KEY, api.base) as client:
        assert client.poll(api.url("/v1/get_result?id=t-1")).status is Status.PENDING
        # The emulator hands out localhost for 127.0.0.1 (as BFL hands out another cluster's host).
        port = api.base.rsplit(":", 1)[1]
        assert client.poll(f"http://localhost:{port}/v1/get_result?id=t-1").status is Status.PENDING
    assert keys_seen(api) == [KEY, KEY]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.bfl.ai/v1/get_result?id=t",
        "https://api.eu2.bfl.ai/v1/get_result?id=t",
        "https://api.us1.bfl.ai/v1/get_result?id=t",
        "https://bfl.ai/v1/get_result?id=t",
    ],
)
def test_polls_on_bfls_own_hosts_carry_the_key(url: str) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"id": "t", "status": "Pending"})

    with KontextClient(KEY, "eu", transport=httpx.MockTransport(answer)) as client:
        client.poll(url)
    assert [r.headers["x-key"] for r in sent] == [KEY]


# --- samples --------------------------------------------------------------------------------------


#: Workers wrap their clients' transports in the metrics' timer: every check must hold through it.
WRAPS = pytest.mark.parametrize("wrap", [None, MeteredTransport], ids=["plain", "metered"])


@WRAPS
def test_an_oversized_sample_is_refused_without_reading_past_the_cap(
    api: LocalServer, wrap: TransportWrapper | None
) -> None:
    total = 200_000_000
    api.routes["/big.png"] = lambda h: h.stream(total)
    api.routes["/declared.png"] = lambda h: h.stream(total, declare=True)
    with KontextClient(KEY, api.base, max_sample_bytes=1_000_000, wrap_transport=wrap) as client:
        with pytest.raises(InvalidImage, match="1,000,000-byte limit"):
            client.download(api.url("/big.png"))
        with pytest.raises(InvalidImage, match="limit"):
            client.download(api.url("/declared.png"))
    assert api.sent < total  # the server was cut off: the body was not read to its end


@WRAPS
def test_a_sample_redirect_into_loopback_is_refused(
    api: LocalServer, other: LocalServer, wrap: TransportWrapper | None
) -> None:
    api.routes["/moved.png"] = lambda h: h.redirect(other.url("/inner.png"))
    with KontextClient(KEY, api.base, wrap_transport=wrap) as client:
        with pytest.raises(UrlRefused, match="loopback"):
            client.download(api.url("/moved.png"))
        with pytest.raises(UrlRefused, match="loopback"):
            client.download(other.url("/inner.png"))  # a first hop off the base is checked too
    assert other.seen == []
    with KontextClient(KEY, api.base, allow_private_urls=True) as client:
        assert client.download(api.url("/moved.png")).content == png()
    assert len(other.seen) == 1
    assert keys_seen(other) == [""]  # never the key, even where allowed


def test_sample_redirects_are_bounded(api: LocalServer) -> None:
    api.routes["/loop.png"] = lambda h: h.redirect("/loop.png")
    with KontextClient(KEY, api.base, allow_private_urls=True) as client, pytest.raises(UrlRefused, match="redirects"):
        client.download(api.url("/loop.png"))
    assert len(api.seen) == 6  # the first request and 5 redirects


def test_samples_off_the_base_must_be_https() -> None:
    with KontextClient(KEY, "https://api.bfl.ai") as client, pytest.raises(UrlRefused, match="not https"):
        client.download("http://delivery-eu1.bfl.ai/results/x/sample.png?sig=1")


def test_make_provider_carries_the_settings(api: LocalServer, other: LocalServer) -> None:
    api.routes["/moved.png"] = lambda h: h.redirect(other.url("/inner.png"))
    base: dict[str, Any] = {"api_key": Secret(KEY), "api_base": api.base}
    small = make_provider(Settings(**base, allow_private_urls=True, max_sample_bytes=10))
    with pytest.raises(InvalidImage):
        small.download(api.url("/moved.png"))
    small.close()
    strict = make_provider(Settings(**base))
    with pytest.raises(UrlRefused):
        strict.download(api.url("/moved.png"))
    strict.close()


# --- unknown status words -------------------------------------------------------------------------


def test_an_unknown_status_word_is_unknown_not_pending(api: LocalServer) -> None:
    api.routes["/v1/get_result"] = lambda h: h.reply(200, json.dumps({"id": "t-1", "status": "succeeded"}).encode())
    with KontextClient(KEY, api.base) as client:
        result = client.poll(api.url("/v1/get_result?id=t-1"))
    assert result.status is Status.UNKNOWN
    assert result.raw_status == "succeeded"
    assert not result.status.terminal
    url = "https://api.bfl.ai/v1/get_result?id=t"
    assert parse_bfl_poll({"status": "Generating"}, url).status is Status.PENDING  # seen from BFL mid-task
    reseller = parse_reseller_poll({"id": "r", "status": "succeeded"}, "https://r.test/v1/tasks/r")
    assert (reseller.status, reseller.raw_status) == (Status.UNKNOWN, "succeeded")
