"""The reseller dialect of FLUX.1 Kontext: another provider's wrapper, same model, other protocol.

=================  ==========================================  =====================================
call               HTTP                                        notes
=================  ==========================================  =====================================
submit(ep, req)    POST {base}/tasks, ``Authorization: Bearer``  body ``{"model": "flux_kontext_max",
                                                               ...}``; answers ``{"id", "status"}``
poll(url)          GET {base}/tasks/{id}                       the reseller gives no polling_url, so
                                                               Task.polling_url is built here
download(url)      GET the output URL, no auth header          same as BFL
=================  ==========================================  =====================================

Statuses: ``pending``/``queued``/``processing`` -> PENDING; ``completed`` -> READY (image URL from
``output[].content[]`` with ``type == "image"``); ``failed`` -> FAILED, or REQUEST/CONTENT_MODERATED
when ``error.code`` names moderation; ``error`` -> ERROR; ``cancelled`` -> FAILED; anything else
-> UNKNOWN (never PENDING: a word we do not know may mean the task ended) with ``raw_status`` kept.
Polls go to the configured base only; a polling URL elsewhere is UrlRefused, nothing sent.
``usage.cost`` (USD string) becomes credits (x100).

Request rules beyond :class:`KontextRequest`: ``output_format`` is jpeg or png only, and there is no
webhook; both are refused with RequestInvalid rather than silently changed.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Final

import httpx

from kontext_batch.api._http import (
    DEFAULT_MAX_SAMPLE_BYTES,
    ClientBase,
    TransportWrapper,
)
from kontext_batch.api.fields import opt_float, opt_int, opt_str
from kontext_batch.api.models import KontextRequest, PollResult, Sample, Status, Task, endpoint_for_model
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.errors import ConfigError, FieldError, RequestInvalid, ServerError
from kontext_batch.io.fetch import shown_url
from kontext_batch.secret import Secret

__all__ = ["ResellerClient", "parse_reseller_poll", "reseller_body", "reseller_model"]

_STATUS: Final[dict[str, Status]] = {
    "pending": Status.PENDING,
    "queued": Status.PENDING,
    "processing": Status.PENDING,
    "completed": Status.READY,
    "failed": Status.FAILED,
    "error": Status.ERROR,
    "cancelled": Status.FAILED,
    "canceled": Status.FAILED,
}
_FORMATS: Final = ("jpeg", "png")


def reseller_model(endpoint: str) -> str:
    """``flux-kontext-max`` (or ``max``) -> ``flux_kontext_max``; other endpoints: ``-`` -> ``_``."""
    return endpoint_for_model(endpoint).replace("-", "_")


def reseller_body(endpoint: str, request: KontextRequest) -> dict[str, Any]:
    """The reseller's JSON body for ``request``; RequestInvalid for what the reseller cannot take."""
    bad: list[FieldError] = []
    if request.output_format is not None and request.output_format not in _FORMATS:
        bad.append(FieldError(("output_format",), "the reseller offers jpeg or png only"))
    if request.webhook_url is not None or request.webhook_secret is not None:
        bad.append(FieldError(("webhook_url",), "the reseller has no webhooks"))
    if bad:
        raise RequestInvalid(bad)
    body: dict[str, Any] = {"model": reseller_model(endpoint)}
    body.update((k, v) for k, v in request.set_fields().items() if k not in ("webhook_url", "webhook_secret"))
    return body


class ResellerClient(ClientBase):
    """A thread-safe client for the reseller dialect (same interface as KontextClient).

    ``base_url`` is the reseller's API root, e.g. ``https://reseller.example/v1``; tasks live under
    ``{base_url}/tasks``.
    """

    name: str = "reseller"
    output_formats: tuple[str, ...] = ("jpeg", "png")

    def __init__(
        self,
        api_key: Secret | str,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        wrap_transport: TransportWrapper | None = None,
        allow_private_urls: bool = False,
        max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    ) -> None:
        base = base_url.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"the reseller base URL must be an http(s) URL, got {base_url!r}")
        super().__init__(
            api_key,
            base,
            timeout_s=timeout_s,
            retry=retry,
            transport=transport,
            http=http,
            wrap_transport=wrap_transport,
            allow_private_urls=allow_private_urls,
            max_sample_bytes=max_sample_bytes,
        )

    def submit(self, endpoint: str, request: KontextRequest) -> Task:
        """Create a task; like BFL's submit, retries may create a duplicate after a read timeout."""
        body = reseller_body(endpoint, request)
        return self._run(lambda: self._submit_once(body))

    def poll(self, polling_url: str) -> PollResult:
        return self._run(lambda: self._poll_once(polling_url))

    def download(self, sample_url: str) -> Sample:
        return self._run(lambda: self._core.download(sample_url))

    # -- single attempts ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._core.key.reveal()}", "accept": "application/json"}

    def _submit_once(self, body: dict[str, Any]) -> Task:
        url = f"{self.base_url}/tasks"
        response = self._core.send("POST", url, headers=self._headers(), json_body=body)
        if not response.is_success:
            raise self._core.api_error(response, "POST")
        data = self._core.json_object(response, "POST")
        task_id = data.get("id")
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            task_id = str(task_id)
        if not isinstance(task_id, str) or not task_id:
            raise ServerError(f"POST {shown_url(url)} answered {response.status_code} without a task id")
        return Task(id=task_id, polling_url=f"{self.base_url}/tasks/{task_id}")

    def _poll_once(self, polling_url: str) -> PollResult:
        checked = self._core.trust.check_api_url(polling_url)
        response = self._core.send("GET", checked, headers=self._headers())
        if response.status_code == 404:
            return PollResult(
                id=polling_url.rstrip("/").rsplit("/", 1)[-1],
                status=Status.TASK_NOT_FOUND,
                raw_status="not found",
                details={"http_status": 404, "detail": self._core.detail(response)},
            )
        if not response.is_success:
            raise self._core.api_error(response, "GET")
        return parse_reseller_poll(self._core.json_object(response, "GET"), polling_url)


def parse_reseller_poll(body: dict[str, Any], polling_url: str) -> PollResult:
    """A PollResult from a reseller task body (see the module docstring for the mapping)."""
    raw = body.get("status")
    raw_status = raw if isinstance(raw, str) else ("" if raw is None else str(raw))
    status = _STATUS.get(raw_status.strip().lower(), Status.UNKNOWN)
    raw_error = body.get("error")
    error: dict[str, Any] | None = raw_error if isinstance(raw_error, dict) else None
    reasons: tuple[str, ...] = ()
    if status is Status.FAILED and error is not None:
        code = str(error.get("code") or "").lower()
        if "moderat" in code:
            input_side = any(word in code for word in ("request", "input", "prompt"))
            status = Status.REQUEST_MODERATED if input_side else Status.CONTENT_MODERATED
            reasons = (str(error.get("message") or error.get("code")),)
    sample_url = _image_url(body.get("output"))
    if status is Status.READY and not sample_url:
        raise ServerError(f"GET {shown_url(polling_url)}: completed without an image URL", status_code=200)
    task_id = body.get("id")
    return PollResult(
        id=str(task_id) if isinstance(task_id, str | int) and task_id != "" else polling_url.rsplit("/", 1)[-1],
        status=status,
        raw_status=raw_status,
        progress=_progress(body.get("progress")),
        sample_url=sample_url,
        seed=opt_int(body.get("seed")),
        moderation_reasons=reasons,
        details=error,
        cost=_usd_to_credits(body.get("usage")),
    )


def _image_url(output: object) -> str | None:
    """The first ``url`` of a ``type == "image"`` entry in ``output[].content[]``."""
    if not isinstance(output, list):
        return None
    for item in output:
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image" and opt_str(part.get("url")):
                return str(part["url"])
    return None


def _usd_to_credits(usage: object) -> float | None:
    """``usage.cost`` in USD (a string such as "0.08") as credits (1 credit = $0.01)."""
    if not isinstance(usage, dict):
        return None
    raw = usage.get("cost")
    if raw is None or isinstance(raw, bool):
        return None
    try:
        # Decimal keeps "0.08" * 100 at exactly 8, where float arithmetic would not.
        usd = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    return float(usd * 100) if usd.is_finite() else None


def _progress(value: object) -> float | None:
    """0..1 as BFL reports it; a 0..100 percentage is scaled down rather than trusted as a fraction."""
    number = opt_float(value)
    if number is None or number < 0:
        return None
    return min(1.0, number / 100) if number > 1 else number
