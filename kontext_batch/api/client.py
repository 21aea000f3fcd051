"""The BFL dialect of the FLUX.1 Kontext API: submit, poll the returned ``polling_url``, download.

=================  =======================================  ==========================================
call               HTTP                                     returns / raises
=================  =======================================  ==========================================
submit(ep, req)    POST {base}/v1/{ep}, ``x-key``, JSON     Task (id, polling_url, cost...)
poll(url)          GET url exactly as submit returned it    PollResult; HTTP 404 -> TASK_NOT_FOUND;
                   (only on the base or an api*.bfl.ai      UrlRefused, nothing sent, for any other
                   host over https)                         host
download(url)      GET the signed URL, *no* ``x-key``       Sample; 403/404/410 -> SampleExpired
credits()          GET {base}/v1/credits                    float
=================  =======================================  ==========================================

Errors follow :mod:`kontext_batch.api.statuses`. With a :class:`RetryPolicy`, every call is retried on retryable
errors only; without one, each call is a single attempt.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import httpx

from kontext_batch.api._http import (
    DEFAULT_MAX_SAMPLE_BYTES,
    ClientBase,
    TransportWrapper,
)
from kontext_batch.api.fields import opt_float, opt_int, opt_str
from kontext_batch.api.models import KontextRequest, PollResult, Sample, Status, Task, endpoint_for_model
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.errors import FieldError, RequestInvalid, ServerError
from kontext_batch.io.fetch import shown_url
from kontext_batch.secret import Secret
from kontext_batch.settings import resolve_api_base

__all__ = ["BFL_API_HOSTS", "KontextClient", "parse_bfl_poll", "parse_bfl_submit"]

#: Request fields of the reseller dialect that BFL's API does not have.
_RESELLER_ONLY: Final = ("steps", "guidance_scale", "negative_prompt")
_MODERATION_KEY: Final = "Moderation Reasons"
#: BFL's own API hosts, which may hand back polling URLs on another cluster (api.eu2.bfl.ai...).
BFL_API_HOSTS: Final = re.compile(r"(?:api(?:\.[a-z0-9-]+)?\.)?bfl\.ai")


class KontextClient(ClientBase):
    """A thread-safe client for BFL's API; create one per worker process and share it.

    ``api_key`` may be a str or a :class:`Secret`; it is kept as a Secret and only ever revealed
    into the ``x-key`` header of requests to the API and to polling URLs.
    """

    name: str = "bfl"
    api_hosts = BFL_API_HOSTS
    output_formats: tuple[str, ...] = ("jpeg", "png", "webp")

    def __init__(
        self,
        api_key: Secret | str,
        base_url: str = "https://api.bfl.ai",
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        wrap_transport: TransportWrapper | None = None,
        allow_private_urls: bool = False,
        max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    ) -> None:
        super().__init__(
            api_key,
            resolve_api_base(base_url),
            timeout_s=timeout_s,
            retry=retry,
            transport=transport,
            http=http,
            wrap_transport=wrap_transport,
            allow_private_urls=allow_private_urls,
            max_sample_bytes=max_sample_bytes,
        )

    # -- calls ----------------------------------------------------------------------------------

    def submit(self, endpoint: str, request: KontextRequest) -> Task:
        """Create a task at ``endpoint`` (``flux-kontext-pro``, ``max``, ``flux-2-pro``...).

        Raises RequestInvalid before sending when ``request`` sets reseller-only fields.
        """
        url = f"{self.base_url}/v1/{endpoint_for_model(endpoint)}"
        bad = [
            FieldError((name,), "not supported by the BFL API (reseller provider only)")
            for name in _RESELLER_ONLY
            if getattr(request, name) is not None
        ]
        if bad:
            raise RequestInvalid(bad)
        body = request.bfl_body()
        # Retried on 429/5xx/connection errors and on timeouts too. A read timeout may come after
        # the API already created the task, so a retry can create a second one (and charge for it):
        # we accept at-least-once submission here rather than lose rows to one slow response.
        return self._run(lambda: self._submit_once(url, body))

    def poll(self, polling_url: str) -> PollResult:
        """One look at a task, at exactly the ``polling_url`` submit returned (never rebuilt)."""
        return self._run(lambda: self._poll_once(polling_url))

    def download(self, sample_url: str) -> Sample:
        """Fetch a Ready task's image from its signed URL (valid ~10 minutes after Ready)."""
        return self._run(lambda: self._core.download(sample_url))

    def credits(self) -> float:
        """The account's remaining credits (1 credit = $0.01)."""
        return self._run(self._credits_once)

    # -- single attempts ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"x-key": self._core.key.reveal(), "accept": "application/json"}

    def _submit_once(self, url: str, body: dict[str, Any]) -> Task:
        response = self._core.send("POST", url, headers=self._headers(), json_body=body)
        if not response.is_success:
            raise self._core.api_error(response, "POST")
        return parse_bfl_submit(self._core.json_object(response, "POST"), self.base_url, url)

    def _poll_once(self, polling_url: str) -> PollResult:
        checked = self._core.trust.check_api_url(polling_url)
        response = self._core.send("GET", checked, headers=self._headers())
        if response.status_code == 404:
            # Unconfirmed: an unknown or expired id may answer 404 instead of "Task not found".
            return PollResult(
                id=_query_id(polling_url),
                status=Status.TASK_NOT_FOUND,
                raw_status=Status.TASK_NOT_FOUND.value,
                details={"http_status": 404, "detail": self._core.detail(response)},
            )
        if not response.is_success:
            raise self._core.api_error(response, "GET")
        return parse_bfl_poll(self._core.json_object(response, "GET"), polling_url)

    def _credits_once(self) -> float:
        url = f"{self.base_url}/v1/credits"
        response = self._core.send("GET", url, headers=self._headers())
        if not response.is_success:
            raise self._core.api_error(response, "GET")
        credits = opt_float(self._core.json_object(response, "GET").get("credits"))
        if credits is None:
            raise ServerError(f"GET {shown_url(url)}: no 'credits' number in the body", status_code=200)
        return credits


def parse_bfl_submit(body: dict[str, Any], base_url: str, url: str) -> Task:
    """A Task from a 200 submit body; ServerError when ``id`` or ``polling_url`` is missing."""
    task_id = body.get("id")
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        task_id = str(task_id)
    if not isinstance(task_id, str) or not task_id:
        raise ServerError(f"POST {shown_url(url)} answered 200 without a task id", status_code=200)
    polling_url = opt_str(body.get("polling_url"))
    if not polling_url and opt_str(body.get("webhook_url")):
        # A webhook submit answers {id, status, webhook_url} without a polling_url. Failing here
        # would make the retry policy submit (and pay) again, so for this one shape we fall back
        # to the documented get_result route on the submit host for fallback polling.
        polling_url = f"{base_url}/v1/get_result?id={task_id}"
    if not polling_url:
        raise ServerError(f"POST {shown_url(url)} answered 200 without a polling_url", status_code=200)
    return Task(
        id=task_id,
        polling_url=polling_url,
        cost=opt_float(body.get("cost")),
        input_mp=opt_float(body.get("input_mp")),
        output_mp=opt_float(body.get("output_mp")),
    )


def parse_bfl_poll(body: dict[str, Any], polling_url: str) -> PollResult:
    """A PollResult from a get_result body. An unknown status is UNKNOWN, its word in ``raw_status``."""
    raw = body.get("status")
    raw_status = raw if isinstance(raw, str) else ("" if raw is None else str(raw))
    status = Status.parse(raw_status)
    raw_result, raw_details = body.get("result"), body.get("details")
    result: dict[str, Any] = raw_result if isinstance(raw_result, dict) else {}
    details: dict[str, Any] | None = raw_details if isinstance(raw_details, dict) else None
    reasons: tuple[str, ...] = ()
    if details is not None:
        found = details.get(_MODERATION_KEY)
        if isinstance(found, str):
            reasons = (found,)
        elif isinstance(found, list):
            reasons = tuple(str(r) for r in found)
    sample_url = opt_str(result.get("sample"))
    if status is Status.READY and not sample_url:
        raise ServerError(f"GET {shown_url(polling_url)}: status Ready without result.sample", status_code=200)
    task_id = body.get("id")
    return PollResult(
        id=str(task_id) if isinstance(task_id, str | int) and task_id != "" else _query_id(polling_url),
        status=status,
        raw_status=raw_status,
        progress=opt_float(body.get("progress")),
        sample_url=sample_url,
        seed=opt_int(result.get("seed")),
        prompt=opt_str(result.get("prompt")),
        start_time=opt_float(result.get("start_time")),
        end_time=opt_float(result.get("end_time")),
        duration=opt_float(result.get("duration")),
        moderation_reasons=reasons,
        details=details,
    )


def _query_id(polling_url: str) -> str:
    values = parse_qs(urlsplit(polling_url).query).get("id")
    return values[0] if values else ""
