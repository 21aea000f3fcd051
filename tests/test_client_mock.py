"""Provider clients against httpx.MockTransport: the odd responses a live server rarely gives.

The protocol itself (submit, poll to Ready, download, caps, credits) is tested against the real
emulator in test_client_emulator.py; here every status code, header and malformed body is forced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from kontext_batch.api import (
    KontextClient,
    KontextProvider,
    KontextRequest,
    ResellerClient,
    RetryPolicy,
    Status,
    make_provider,
)
from kontext_batch.api.statuses import parse_retry_after
from kontext_batch.errors import (
    ApiConnectionError,
    ApiTimeout,
    ApiValidationError,
    AuthError,
    BadRequest,
    ConfigError,
    KontextBatchError,
    OutOfCredits,
    RateLimited,
    RequestInvalid,
    SampleExpired,
    ServerError,
)
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings

KEY = "bfl-KEY-0f3c9a7e-must-never-leak"
BASE = "https://api.test"
POLL_URL = "https://api.eu2.bfl.ai/v1/get_result?id=task-1&zone=b"  # another cluster than BASE, as on real accounts
SAMPLE_URL = "https://delivery-eu1.test/results/ab/sample.png?se=2030-01-01&sp=r&sig=SIGNATURE123"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
REQ = KontextRequest.build(prompt="make it blue", seed=7, aspect_ratio="16:9", output_format="png")

Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """A MockTransport handler that answers from a queue (the last answer repeats) and records requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def bfl(server: Handler, *, retry: RetryPolicy | None = None) -> KontextClient:
    return KontextClient(KEY, BASE, transport=httpx.MockTransport(server), retry=retry)


def reseller(server: Handler, *, retry: RetryPolicy | None = None) -> ResellerClient:
    return ResellerClient(KEY, f"{BASE}/reseller/v1", transport=httpx.MockTransport(server), retry=retry)


def do(client: Any, call: str) -> object:
    """Make one call by name, so a parametrized test can aim the same answer at each of them."""
    if call == "submit":
        return client.submit("pro", REQ)
    if call == "poll":  # each dialect polls where its submit said: BFL's cluster, the reseller's base
        return client.poll(f"{client.base_url}/tasks/task-1" if isinstance(client, ResellerClient) else POLL_URL)
    if call == "download":
        return client.download(SAMPLE_URL)
    return client.credits()


def ok_submit(**extra: Any) -> httpx.Response:
    body = {"id": "task-1", "polling_url": POLL_URL, "cost": 4, "input_mp": 0.0, "output_mp": 1.05}
    return httpx.Response(200, json={**body, **extra})


def poll_body(status: str, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"id": "task-1", "status": status, "result": None, "progress": None, **extra})


def no_sleep_policy(attempts: int = 4) -> tuple[RetryPolicy, list[float]]:
    waits: list[float] = []
    return RetryPolicy(attempts=attempts, base_s=0.5, max_s=30.0, jitter=0, sleep=waits.append), waits


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    # Whatever a test did, no log record anywhere may carry the key.
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()


# -- submit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        ("flux-kontext-pro", "/v1/flux-kontext-pro"),
        ("flux-kontext-max", "/v1/flux-kontext-max"),
        ("pro", "/v1/flux-kontext-pro"),
        ("max", "/v1/flux-kontext-max"),
        ("flux-2-pro", "/v1/flux-2-pro"),
    ],
)
def test_submit_posts_the_body_with_the_key_header(endpoint: str, path: str) -> None:
    server = Server(ok_submit())
    task = bfl(server).submit(endpoint, REQ)
    (sent,) = server.requests
    assert (sent.method, str(sent.url)) == ("POST", BASE + path)
    assert sent.headers["x-key"] == KEY
    assert json.loads(sent.content) == REQ.bfl_body()
    assert task.id == "task-1"
    assert task.polling_url == POLL_URL
    assert (task.cost, task.input_mp, task.output_mp) == (4.0, 0.0, 1.05)


@pytest.mark.parametrize(("alias", "base"), [("eu", "https://api.eu.bfl.ai"), ("global", "https://api.bfl.ai")])
def test_base_url_aliases(alias: str, base: str) -> None:
    server = Server(ok_submit())
    KontextClient(KEY, alias, transport=httpx.MockTransport(server)).submit("pro", REQ)
    assert str(server.requests[0].url) == f"{base}/v1/flux-kontext-pro"


@pytest.mark.parametrize("endpoint", ["Flux Pro", "../credits", "", "-x"])
def test_bad_endpoint_names_are_refused_before_sending(endpoint: str) -> None:
    server = Server(ok_submit())
    with pytest.raises(RequestInvalid):
        bfl(server).submit(endpoint, REQ)
    assert server.requests == []


@pytest.mark.parametrize(
    "fields", [{"steps": 20}, {"guidance_scale": 3.5}, {"negative_prompt": "blur"}], ids=lambda f: next(iter(f))
)
def test_bfl_refuses_reseller_only_fields(fields: dict[str, Any]) -> None:
    server = Server(ok_submit())
    with pytest.raises(RequestInvalid) as info:
        bfl(server).submit("pro", KontextRequest.build(prompt="x", **fields))
    assert info.value.errors[0].field == next(iter(fields))
    assert server.requests == []


def test_submit_tolerates_missing_optional_fields() -> None:
    task = bfl(Server(httpx.Response(200, json={"id": "t", "polling_url": POLL_URL}))).submit("pro", REQ)
    assert (task.cost, task.input_mp, task.output_mp) == (None, None, None)


@pytest.mark.parametrize(
    "body",
    [{"polling_url": POLL_URL}, {"id": "t"}, {"id": "", "polling_url": POLL_URL}, {"id": "t", "polling_url": 5}],
)
def test_submit_200_without_id_or_polling_url_is_a_server_error(body: dict[str, Any]) -> None:
    with pytest.raises(ServerError) as info:
        bfl(Server(httpx.Response(200, json=body))).submit("pro", REQ)
    assert info.value.retryable


def test_webhook_submit_without_polling_url_falls_back_to_get_result() -> None:
    body = {"id": "t9", "status": "Pending", "webhook_url": "https://hook.test/x", "cost": 8}
    task = bfl(Server(httpx.Response(200, json=body))).submit("max", REQ)
    assert task.polling_url == f"{BASE}/v1/get_result?id=t9"
    assert task.cost == 8.0


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="{not json"),
        httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"}),
        httpx.Response(200, json=["id", "polling_url"]),
        httpx.Response(200, content=b""),
    ],
    ids=["broken-json", "html", "json-list", "empty"],
)
def test_submit_200_with_a_bad_body_is_a_server_error(response: httpx.Response) -> None:
    with pytest.raises(ServerError) as info:
        bfl(Server(response)).submit("pro", REQ)
    assert info.value.status_code == 200


# -- status mapping -------------------------------------------------------------------------------

#: (status, exception, body, retryable): whether the client tries the call again is written out
#: here, not derived from the code, so a change to the retry rule has to change this table.
STATUS_CASES = [
    (400, BadRequest, {"detail": "bad image"}, False),
    (401, AuthError, {"detail": "Not authenticated"}, False),
    (403, AuthError, {"detail": "Not authenticated - Invalid Authentication"}, False),
    (402, OutOfCredits, {"detail": "Insufficient credits"}, False),
    (409, BadRequest, {"detail": "conflict"}, False),
    (408, ServerError, {"detail": "request timeout"}, True),
    (422, ApiValidationError, {"detail": [{"loc": ["body", "seed"], "msg": "not an int", "type": "int_type"}]}, False),
    (429, RateLimited, {"detail": "You have exceeded 24 active tasks"}, True),
    (500, ServerError, {"detail": "Internal Server Error"}, True),
    (502, ServerError, {"detail": "bad gateway"}, True),
    (503, ServerError, {"detail": "maintenance"}, True),
    (504, ServerError, {"detail": "gateway timeout"}, True),
    (302, ServerError, {"detail": "moved"}, True),
]


@pytest.mark.parametrize(("code", "error", "body", "retryable"), STATUS_CASES, ids=[str(c[0]) for c in STATUS_CASES])
@pytest.mark.parametrize("call", ["submit", "poll", "credits"])
def test_status_codes_map_to_the_exception_tree(
    code: int, error: type[KontextBatchError], body: dict[str, Any], retryable: bool, call: str
) -> None:
    client = bfl(Server(httpx.Response(code, json=body)))
    with pytest.raises(error) as info:
        do(client, call)
    exc = info.value
    assert getattr(exc, "status_code", None) == code
    assert exc.retryable is retryable
    if code != 422:
        assert str(code) in str(exc)
        assert isinstance(body["detail"], str)
        assert body["detail"] in str(exc)


def test_422_detail_becomes_field_errors() -> None:
    detail = [
        {"loc": ["body", "aspect_ratio"], "msg": "ratio out of range", "type": "value_error"},
        {"loc": ["body", "input_image", 0], "msg": "bad base64", "type": "string_type"},
        "junk entry",
    ]
    with pytest.raises(ApiValidationError) as info:
        bfl(Server(httpx.Response(422, json={"detail": detail}))).submit("pro", REQ)
    errors = info.value.errors
    assert [(e.field, e.msg, e.type) for e in errors] == [
        ("aspect_ratio", "ratio out of range", "value_error"),
        ("input_image.0", "bad base64", "string_type"),
    ]
    assert info.value.detail == detail
    assert "aspect_ratio: ratio out of range" in str(info.value)


def test_422_with_a_string_detail_still_explains_itself() -> None:
    with pytest.raises(ApiValidationError) as info:
        bfl(Server(httpx.Response(422, json={"detail": "prompt too long"}))).submit("pro", REQ)
    assert "prompt too long" in str(info.value)


HTTP_DATE = "<two minutes from now, as an HTTP-date>"


@pytest.mark.parametrize("code", [429, 503])
@pytest.mark.parametrize(
    ("header", "low", "high"),
    [("7", 7.0, 7.0), ("2.5", 2.5, 2.5), (HTTP_DATE, 110.0, 121.0), ("0", 0.0, 0.0)],
    ids=["seconds", "fraction", "http-date", "zero"],
)
def test_retry_after_is_read_from_seconds_and_http_dates(code: int, header: str, low: float, high: float) -> None:
    if header == HTTP_DATE:  # built now, not at import: collection can take longer than the margin
        header = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    with pytest.raises((RateLimited, ServerError)) as info:
        bfl(Server(httpx.Response(code, headers={"Retry-After": header}, json={}))).submit("pro", REQ)
    value = info.value.retry_after_s
    assert value is not None
    assert low <= value <= high


@pytest.mark.parametrize(
    "headers", [{}, {"Retry-After": "soon"}, {"Retry-After": ""}], ids=["absent", "garbled", "empty"]
)
def test_retry_after_absent_or_garbled_is_none(headers: dict[str, str]) -> None:
    with pytest.raises(RateLimited) as info:
        bfl(Server(httpx.Response(429, headers=headers))).submit("pro", REQ)
    assert info.value.retry_after_s is None


def test_retry_after_in_the_past_is_zero() -> None:
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("nan") is None


@pytest.mark.parametrize("code", [502, 503])
def test_html_error_pages_become_a_short_server_error(code: int) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body>" + "<p>nginx</p>\n" * 500 + "</body></html>"
    response = httpx.Response(code, text=page, headers={"content-type": "text/html"})
    with pytest.raises(ServerError) as info:
        bfl(Server(response)).poll(POLL_URL)
    message = str(info.value)
    assert "Bad Gateway" in message
    assert len(message) < 300
    assert "(cut; " in message  # says it is not the whole page
    assert info.value.status_code == code


@pytest.mark.parametrize(
    ("raised", "mapped"),
    [
        (httpx.ConnectTimeout("connect timed out"), ApiTimeout),
        (httpx.ReadTimeout("read timed out"), ApiTimeout),
        (httpx.WriteTimeout("write timed out"), ApiTimeout),
        (httpx.PoolTimeout("pool timed out"), ApiTimeout),
        (httpx.ConnectError("connection refused"), ApiConnectionError),
        (httpx.ReadError("connection reset"), ApiConnectionError),
        (httpx.WriteError("broken pipe"), ApiConnectionError),
        (httpx.RemoteProtocolError("server disconnected"), ApiConnectionError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.__name__,
)
@pytest.mark.parametrize("call", ["submit", "poll", "download"])
def test_transport_failures_are_retryable_errors(raised: Exception, mapped: type[Exception], call: str) -> None:
    client = bfl(Server(raised))
    with pytest.raises(mapped) as info:
        do(client, call)
    assert info.value.retryable  # type: ignore[attr-defined]
    assert "SIGNATURE123" not in str(info.value)
    # A reason for a person: what went wrong in words, not httpx's class name.
    assert type(raised).__name__ not in str(info.value), str(info.value)
    assert any(w in str(info.value) for w in ("timed out", "connection", "connect")), str(info.value)


# -- poll -----------------------------------------------------------------------------------------


def test_poll_uses_the_polling_url_verbatim_with_the_key() -> None:
    server = Server(poll_body("Pending", progress=0.25))
    result = bfl(server).poll(POLL_URL)
    (sent,) = server.requests
    assert str(sent.url) == POLL_URL  # another host than BASE, query kept as given
    assert sent.method == "GET"
    assert sent.headers["x-key"] == KEY
    assert (result.status, result.progress) == (Status.PENDING, 0.25)


def test_submit_then_poll_follows_the_returned_url_not_the_base() -> None:
    server = Server(ok_submit(), poll_body("Pending"))
    client = bfl(server)
    client.poll(client.submit("pro", REQ).polling_url)
    assert [str(r.url) for r in server.requests] == [f"{BASE}/v1/flux-kontext-pro", POLL_URL]


def test_poll_ready_reads_the_result() -> None:
    result_body = {
        "sample": SAMPLE_URL,
        "prompt": "make it very blue",
        "seed": 7,
        "start_time": 1700000000.5,
        "end_time": 1700000004.0,
        "duration": 3.5,
    }
    result = bfl(Server(poll_body("Ready", result=result_body, progress=1.0))).poll(POLL_URL)
    assert result.status is Status.READY
    assert result.status.terminal
    assert result.sample_url == SAMPLE_URL
    assert (result.seed, result.prompt, result.duration) == (7, "make it very blue", 3.5)
    assert (result.start_time, result.end_time) == (1700000000.5, 1700000004.0)
    assert result.progress == 1.0


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("Pending", Status.PENDING),
        ("Ready", Status.READY),
        ("Request Moderated", Status.REQUEST_MODERATED),
        ("Content Moderated", Status.CONTENT_MODERATED),
        ("Error", Status.ERROR),
        ("Failed", Status.FAILED),
        ("Task not found", Status.TASK_NOT_FOUND),
        ("Reasoning", Status.PENDING),
        ("Generating", Status.PENDING),
        ("Something New", Status.UNKNOWN),
        ("succeeded", Status.UNKNOWN),
    ],
)
def test_poll_statuses(raw: str, status: Status) -> None:
    extra = {"result": {"sample": SAMPLE_URL}} if raw == "Ready" else {}
    result = bfl(Server(poll_body(raw, **extra))).poll(POLL_URL)
    assert result.status is status
    assert result.raw_status == raw


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
def test_moderation_reasons_come_from_details(status: str) -> None:
    details = {"Moderation Reasons": ["Derivative Works Filter", "Public Figure"]}
    result = bfl(Server(poll_body(status, details=details))).poll(POLL_URL)
    assert result.status.moderated
    assert result.moderation_reasons == ("Derivative Works Filter", "Public Figure")
    assert result.sample_url is None
    assert "Public Figure" in result.reason


def test_poll_tolerates_a_sparse_body() -> None:
    result = bfl(Server(httpx.Response(200, json={"status": "Pending", "progress": "half"}))).poll(POLL_URL)
    assert result.status is Status.PENDING
    assert result.id == "task-1"  # taken from the polling URL's id
    assert result.progress is None
    assert result.details is None
    assert result.moderation_reasons == ()


def test_poll_404_is_task_not_found_not_an_error() -> None:
    server = Server(httpx.Response(404, json={"detail": "Task not found"}))
    result = bfl(server).poll(POLL_URL)
    assert result.status is Status.TASK_NOT_FOUND
    assert result.status.terminal
    assert result.id == "task-1"


def test_poll_ready_without_a_sample_is_a_server_error() -> None:
    with pytest.raises(ServerError):
        bfl(Server(poll_body("Ready", result={"seed": 1}))).poll(POLL_URL)


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"status": "Pen'])
def test_poll_bad_json_is_a_server_error(body: bytes) -> None:
    with pytest.raises(ServerError):
        bfl(Server(httpx.Response(200, content=body))).poll(POLL_URL)


# -- download -------------------------------------------------------------------------------------


def test_download_sends_no_key_and_returns_the_bytes() -> None:
    server = Server(httpx.Response(200, content=PNG, headers={"content-type": "image/png"}))
    sample = bfl(server).download(SAMPLE_URL)
    (sent,) = server.requests
    assert str(sent.url) == SAMPLE_URL
    assert "x-key" not in sent.headers
    assert "authorization" not in sent.headers
    assert KEY not in str(sent.headers)
    assert (sample.content, sample.content_type, sample.extension) == (PNG, "image/png", "png")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (403, SampleExpired),
        (404, SampleExpired),
        (410, SampleExpired),
        (500, ServerError),
        (503, ServerError),
        (429, RateLimited),
        (400, BadRequest),
    ],
)
def test_download_errors_never_show_the_signature(code: int, error: type[Exception]) -> None:
    body = f"<Error><Message>Signature {SAMPLE_URL} not valid</Message></Error>"
    with pytest.raises(error) as info:
        bfl(Server(httpx.Response(code, text=body))).download(SAMPLE_URL)
    assert getattr(info.value, "status_code", None) == code or error is RateLimited
    assert "SIGNATURE123" not in str(info.value)
    assert "delivery-eu1.test/results/ab/sample.png" in str(info.value)


def test_download_follows_a_redirect_without_the_key() -> None:
    final = "https://cdn.test/sample.png"
    server = Server(httpx.Response(302, headers={"location": final}), httpx.Response(200, content=PNG))
    assert bfl(server).download(SAMPLE_URL).content == PNG
    assert [str(r.url) for r in server.requests] == [SAMPLE_URL, final]
    assert all("x-key" not in r.headers for r in server.requests)


def test_download_of_an_empty_body_is_retryable() -> None:
    with pytest.raises(ServerError):
        bfl(Server(httpx.Response(200, content=b""))).download(SAMPLE_URL)


def test_credits() -> None:
    server = Server(httpx.Response(200, json={"credits": 1234.5}))
    assert bfl(server).credits() == 1234.5
    assert str(server.requests[0].url) == f"{BASE}/v1/credits"
    with pytest.raises(ServerError):
        bfl(Server(httpx.Response(200, json={"balance": 3}))).credits()


# -- the key stays hidden -------------------------------------------------------------------------

ECHO = {"detail": f"invalid key {KEY}"}  # a misbehaving server that echoes the key back
LEAK_CASES: list[tuple[str, httpx.Response | Exception]] = [
    ("submit", httpx.Response(400, json=ECHO)),
    ("submit", httpx.Response(401, json=ECHO)),
    ("submit", httpx.Response(402, json=ECHO)),
    ("submit", httpx.Response(403, json=ECHO)),
    ("submit", httpx.Response(422, json={"detail": [{"loc": ["body", "x"], "msg": KEY, "type": "t"}]})),
    ("submit", httpx.Response(429, json=ECHO)),
    ("submit", httpx.Response(503, text=f"<html>{KEY}</html>")),
    ("submit", httpx.Response(200, text=f"not json {KEY}")),
    ("submit", httpx.ReadTimeout(f"timeout {KEY}")),
    ("submit", httpx.ConnectError(f"refused {KEY}")),
    ("poll", httpx.Response(500, json=ECHO)),
    ("poll", httpx.Response(200, text=f"<html>{KEY}</html>")),
    ("poll", httpx.Response(429, json=ECHO, headers={"Retry-After": "1"})),
    ("download", httpx.Response(403, text=KEY)),
    ("download", httpx.Response(502, text=KEY)),
    ("credits", httpx.Response(401, json=ECHO)),
]


@pytest.mark.parametrize(("call", "answer"), LEAK_CASES)
@pytest.mark.parametrize("make", [bfl, reseller], ids=["bfl", "reseller"])
def test_the_key_never_appears_in_errors_reprs_or_logs(
    call: str, answer: httpx.Response | Exception, make: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    if make is reseller and call == "credits":
        pytest.skip("the reseller has no credits call")
    policy, _ = no_sleep_policy(attempts=2)
    client = make(Server(answer), retry=policy)
    with pytest.raises(KontextBatchError) as info:
        do(client, call)
    exc = info.value
    for text in (str(exc), repr(exc), repr(exc.args), repr(client), str(getattr(exc, "errors", ""))):
        assert KEY not in text
    assert "SIGNATURE123" not in str(exc)
    assert KEY not in caplog.text
    assert caplog.records, "the client logs each request at DEBUG"


def test_repr_shows_a_fingerprint_not_the_key() -> None:
    client = KontextClient(Secret(KEY), BASE)
    assert KEY not in repr(client)
    assert Secret(KEY).fingerprint in repr(client)
    client.close()


def test_log_lines_name_method_path_and_status(caplog: pytest.LogCaptureFixture) -> None:
    bfl(Server(httpx.Response(200, content=PNG))).download(SAMPLE_URL)
    ours = [r.getMessage() for r in caplog.records if r.name == "kontext_batch.api"]
    assert any(m.startswith("GET https://delivery-eu1.test/results/ab/sample.png -> 200 in ") for m in ours)
    assert not any("SIGNATURE123" in m for m in ours)


def test_an_empty_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        KontextClient("", BASE)


# -- retry through the client ---------------------------------------------------------------------


@pytest.mark.parametrize("answer", [httpx.Response(503), httpx.Response(429), httpx.ConnectError("x")])
def test_retries_are_bounded(answer: httpx.Response | Exception) -> None:
    policy, waits = no_sleep_policy(attempts=4)
    server = Server(answer)
    with pytest.raises(KontextBatchError):
        bfl(server, retry=policy).submit("pro", REQ)
    assert len(server.requests) == 4
    assert waits == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("code", [400, 401, 402, 403, 422])
@pytest.mark.parametrize("call", ["submit", "poll"])
def test_permanent_answers_are_not_retried(code: int, call: str) -> None:
    policy, waits = no_sleep_policy()
    server = Server(httpx.Response(code, json={"detail": "no"}))
    client = bfl(server, retry=policy)
    with pytest.raises(KontextBatchError):
        client.submit("pro", REQ) if call == "submit" else client.poll(POLL_URL)
    assert len(server.requests) == 1
    assert waits == []


@pytest.mark.parametrize("answer", [poll_body("Content Moderated"), httpx.Response(404)])
def test_terminal_poll_outcomes_are_returned_not_retried(answer: httpx.Response) -> None:
    policy, waits = no_sleep_policy()
    server = Server(answer)
    assert bfl(server, retry=policy).poll(POLL_URL).status.terminal
    assert len(server.requests) == 1
    assert waits == []


def test_waits_honour_retry_after_then_succeed() -> None:
    policy, waits = no_sleep_policy()
    server = Server(
        httpx.Response(429, headers={"Retry-After": "9"}),
        httpx.Response(503, headers={"Retry-After": "3"}),
        ok_submit(),
    )
    assert bfl(server, retry=policy).submit("pro", REQ).id == "task-1"
    assert waits == [9.0, 3.0]


def test_download_is_retried_on_5xx_but_not_on_expiry() -> None:
    policy, _ = no_sleep_policy()
    server = Server(httpx.Response(502), httpx.Response(200, content=PNG))
    assert bfl(server, retry=policy).download(SAMPLE_URL).content == PNG
    expired = Server(httpx.Response(403))
    with pytest.raises(SampleExpired):
        bfl(expired, retry=policy).download(SAMPLE_URL)
    assert len(expired.requests) == 1


def test_without_a_policy_each_call_is_one_attempt() -> None:
    server = Server(httpx.Response(503))
    with pytest.raises(ServerError):
        bfl(server).poll(POLL_URL)
    assert len(server.requests) == 1


# -- lifecycle ------------------------------------------------------------------------------------


def test_context_manager_closes_its_own_client_but_not_an_injected_one() -> None:
    with KontextClient(KEY, BASE, transport=httpx.MockTransport(Server(ok_submit()))) as client:
        client.submit("pro", REQ)
    assert client._core.http.is_closed
    injected = httpx.Client(transport=httpx.MockTransport(Server(ok_submit())))
    with KontextClient(KEY, BASE, http=injected) as client:
        client.submit("pro", REQ)
    assert not injected.is_closed
    injected.close()


# -- reseller dialect -----------------------------------------------------------------------------

RESELLER_BASE = f"{BASE}/reseller/v1"


def completed(url: str = SAMPLE_URL, cost: str = "0.08") -> httpx.Response:
    body = {
        "id": "r-1",
        "status": "completed",
        "output": [{"content": [{"type": "text", "url": "https://x.test/t"}, {"type": "image", "url": url}]}],
        "usage": {"cost": cost, "discount": 0},
    }
    return httpx.Response(200, json=body)


@pytest.mark.parametrize(
    ("endpoint", "model"),
    [("max", "flux_kontext_max"), ("flux-kontext-pro", "flux_kontext_pro"), ("flux-2-pro", "flux_2_pro")],
)
def test_reseller_submit_body_and_bearer(endpoint: str, model: str) -> None:
    server = Server(httpx.Response(200, json={"id": "r-1", "status": "pending"}))
    request = KontextRequest.build(
        prompt="p", seed=3, steps=20, guidance_scale=2.5, negative_prompt="blur", output_format="jpeg"
    )
    task = reseller(server).submit(endpoint, request)
    (sent,) = server.requests
    assert (sent.method, str(sent.url)) == ("POST", f"{RESELLER_BASE}/tasks")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert "x-key" not in sent.headers
    assert json.loads(sent.content) == {
        "model": model,
        "prompt": "p",
        "seed": 3,
        "steps": 20,
        "guidance_scale": 2.5,
        "negative_prompt": "blur",
        "output_format": "jpeg",
    }
    assert task.id == "r-1"
    assert task.polling_url == f"{RESELLER_BASE}/tasks/r-1"


@pytest.mark.parametrize(
    "fields", [{"output_format": "webp"}, {"webhook_url": "https://hook.test/x"}], ids=["webp", "webhook"]
)
def test_reseller_refuses_what_it_cannot_express(fields: dict[str, Any]) -> None:
    server = Server(httpx.Response(200, json={"id": "r-1"}))
    with pytest.raises(RequestInvalid):
        reseller(server).submit("max", KontextRequest.build(prompt="p", **fields))
    assert server.requests == []


def test_reseller_completed_task() -> None:
    server = Server(completed(cost="0.08"))
    result = reseller(server).poll(f"{RESELLER_BASE}/tasks/r-1")
    assert str(server.requests[0].url) == f"{RESELLER_BASE}/tasks/r-1"
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert result.status is Status.READY
    assert result.sample_url == SAMPLE_URL
    assert result.cost == 8.0  # $0.08 = 8 credits, exactly


@pytest.mark.parametrize(
    ("raw", "error", "status"),
    [
        ("pending", None, Status.PENDING),
        ("queued", None, Status.PENDING),
        ("processing", None, Status.PENDING),
        ("warming_up", None, Status.UNKNOWN),
        ("succeeded", None, Status.UNKNOWN),
        ("failed", {"code": "internal_error", "message": "GPU fell over"}, Status.FAILED),
        ("failed", {"code": "content_moderated", "message": "output flagged"}, Status.CONTENT_MODERATED),
        ("failed", {"code": "input_moderation", "message": "input flagged"}, Status.REQUEST_MODERATED),
    ],
)
def test_reseller_statuses(raw: str, error: dict[str, str] | None, status: Status) -> None:
    body: dict[str, Any] = {"id": "r-1", "status": raw}
    if error:
        body["error"] = error
    result = reseller(Server(httpx.Response(200, json=body))).poll(f"{RESELLER_BASE}/tasks/r-1")
    assert result.status is status
    assert result.raw_status == raw
    if error:
        assert error["message"] in result.reason
    if status.moderated:
        assert result.moderation_reasons == (error["message"],)  # type: ignore[index]


def test_reseller_completed_without_an_image_is_a_server_error() -> None:
    with pytest.raises(ServerError):
        reseller(Server(httpx.Response(200, json={"id": "r", "status": "completed", "output": []}))).poll(
            f"{RESELLER_BASE}/tasks/r"
        )


@pytest.mark.parametrize(
    ("code", "error"),
    [(401, AuthError), (402, OutOfCredits), (429, RateLimited), (500, ServerError), (422, ApiValidationError)],
)
def test_reseller_errors(code: int, error: type[Exception]) -> None:
    body = {"error": {"code": "x", "message": "nope"}}
    with pytest.raises(error):
        reseller(Server(httpx.Response(code, json=body))).submit("max", REQ)


def test_reseller_poll_404_is_task_not_found() -> None:
    result = reseller(Server(httpx.Response(404))).poll(f"{RESELLER_BASE}/tasks/r-9")
    assert (result.status, result.id) == (Status.TASK_NOT_FOUND, "r-9")


# -- reasons: what results.csv, status and the logs say of a task's end ----------------------------

MODERATION_REASON = "Content Filter"


def bfl_end(status: str, details: dict[str, Any] | None) -> str:
    return bfl(Server(poll_body(status, details=details))).poll(POLL_URL).reason


def reseller_end(error: dict[str, str]) -> str:
    body = {"id": "r-1", "status": "failed", "error": error}
    return reseller(Server(httpx.Response(200, json=body))).poll(f"{RESELLER_BASE}/tasks/r-1").reason


def test_an_error_task_reads_as_a_sentence_with_the_apis_message() -> None:
    reason = bfl_end("Error", {"message": "Internal error while generating the image"})
    assert reason == "the API failed the task (Error): Internal error while generating the image"


@pytest.mark.parametrize(
    ("bfl_status", "details", "error"),
    [
        (
            "Content Moderated",
            {"Moderation Reasons": ["Content Filter"]},
            {"code": "content_moderated", "message": "Content Filter"},
        ),
        (
            "Request Moderated",
            {"Moderation Reasons": ["Derivative Works Filter"]},
            {"code": "request_moderated", "message": "Derivative Works Filter"},
        ),
        ("Failed", {"message": "GPU fell over"}, {"code": "generation_failed", "message": "GPU fell over"}),
    ],
    ids=["content-moderated", "request-moderated", "failed"],
)
def test_the_reseller_and_bfl_word_the_same_outcome_alike(
    bfl_status: str, details: dict[str, Any], error: dict[str, str]
) -> None:
    assert reseller_end(error) == bfl_end(bfl_status, details)


def test_a_reseller_moderation_names_the_kind_of_moderation_as_bfl_does() -> None:
    reason = reseller_end({"code": "content_moderated", "message": MODERATION_REASON})
    assert reason.startswith("Content Moderated: ")
    assert MODERATION_REASON in reason
    assert "failed" not in reason


@pytest.mark.parametrize(
    "details",
    [
        {"message": {"code": 13, "message": "nested trouble"}},
        {"message": ["first trouble", "second trouble"]},
        {"code": 13, "hint": "nested trouble"},
    ],
    ids=["nested", "list", "no-message"],
)
def test_structured_details_read_as_words_not_a_python_repr(details: dict[str, Any]) -> None:
    reason = bfl_end("Error", details)
    assert reason.startswith("the API failed the task (Error): ")
    assert not any(ch in reason for ch in "{}[]'\"")
    assert "trouble" in reason


def test_a_long_api_message_is_cut_and_says_so() -> None:
    message = "the renderer said: " + "very " * 2000 + "long"
    reason = bfl_end("Error", {"message": message + "\n\nwith a traceback"})
    assert len(reason) < 500
    assert "\n" not in reason
    assert "cut" in reason
    assert reason.startswith("the API failed the task (Error): the renderer said: very")


@pytest.mark.parametrize("make", [bfl, reseller], ids=["bfl", "reseller"])
def test_a_task_the_api_does_not_know_reads_as_a_sentence(make: Callable[..., Any]) -> None:
    url = f"{RESELLER_BASE}/tasks/task-1" if make is reseller else POLL_URL
    reason = make(Server(httpx.Response(404, json={"detail": "Task not found"}))).poll(url).reason
    assert reason.startswith("the API does not know the task")
    assert "404" in reason
    assert not any(ch in reason for ch in "{}'")


@pytest.mark.parametrize("make", [bfl, reseller], ids=["bfl", "reseller"])
def test_a_poll_body_that_echoes_the_key_keeps_it_out_of_the_reason(make: Callable[..., Any]) -> None:
    if make is reseller:
        body: dict[str, Any] = {"id": "r-1", "status": "failed", "error": {"code": "x", "message": f"bad key {KEY}"}}
        url = f"{RESELLER_BASE}/tasks/r-1"
    else:
        body = {"id": "task-1", "status": "Error", "details": {"message": f"bad key {KEY}"}}
        url = POLL_URL
    reason = make(Server(httpx.Response(200, json=body))).poll(url).reason
    assert "bad key" in reason
    assert KEY not in reason


def test_an_api_error_with_a_structured_detail_reads_as_words() -> None:
    answer = httpx.Response(400, json={"detail": {"message": "input image is not a JPEG", "code": "bad_image"}})
    with pytest.raises(BadRequest) as info:
        bfl(Server(answer)).submit("pro", REQ)
    message = str(info.value)
    assert "input image is not a JPEG" in message
    assert "400" in message
    assert not any(ch in message for ch in "{}\"'")


# -- factory --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "cls"), [("bfl", KontextClient), ("reseller", ResellerClient)])
def test_make_provider_picks_by_settings(provider: str, cls: type) -> None:
    settings = Settings(api_key=Secret(KEY), api_base=BASE, provider=provider, max_attempts=3, http_timeout_s=5)
    provided = make_provider(settings, transport=httpx.MockTransport(Server(ok_submit())))
    assert isinstance(provided, KontextProvider)
    assert provided.name == provider
    client: Any = provided
    assert provided.__class__ is cls
    assert client.retry is not None
    assert client.retry.attempts == 3
    assert client._core.http.timeout.read == 5
    client.close()


def test_make_provider_needs_a_key_and_a_known_provider() -> None:
    with pytest.raises(ConfigError):
        make_provider(Settings(api_base=BASE))
    with pytest.raises(ConfigError):
        make_provider(Settings(api_key=Secret(KEY), provider="other"))


# -- cookies --------------------------------------------------------------------------------------


def test_a_cookie_an_answer_sets_is_never_sent_back() -> None:
    # No host we talk to needs one, and a jar would carry one host's state into the next request.
    set_cookie = {"set-cookie": "session=abc123; Path=/; Domain=api.eu2.bfl.ai"}
    server = Server(
        httpx.Response(200, json=ok_submit().json(), headers=set_cookie),
        httpx.Response(200, json=poll_body("Pending").json(), headers=set_cookie),
        poll_body("Pending"),
    )
    client = bfl(server)
    client.poll(client.submit("pro", REQ).polling_url)
    client.poll(POLL_URL)
    assert len(server.requests) == 3
    assert [r.headers.get("cookie") for r in server.requests] == [None, None, None]
