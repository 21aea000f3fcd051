"""Every exception kontext-batch raises, under one root, split by what the caller does next.

    KontextBatchError
    ├── RetryableError             a later attempt can succeed: back off and try again
    │   ├── RateLimited *          429: too many active tasks (honours Retry-After)
    │   ├── ServerError *          5xx from the API, or a body that is not the JSON it should be
    │   ├── TransportError         no usable HTTP response at all
    │   │   ├── ApiTimeout         connect/read/write/pool timeout
    │   │   └── ApiConnectionError refused, reset or dropped connection
    │   ├── StorageUnavailable     the object store failed in a way that may pass
    │   ├── OutputBusy             another run is merging the same output's results.csv right now
    │   └── RedisUnavailable       Redis cannot be reached, refused our credentials, or TLS failed
    ├── PermanentError             retrying the same request cannot help
    │   ├── RequestInvalid         our own model refused the request before sending it
    │   ├── ApiValidationError *   422 from the API, with field paths from ``detail``
    │   ├── BadRequest *           400
    │   ├── OutOfCredits *         402: stop submitting for the whole run
    │   ├── AuthError *            401/403 on the API
    │   ├── SampleExpired *        403/404/410 on a sample URL (its 10 minutes are over)
    │   ├── InvalidImage           bytes that do not decode as an image
    │   ├── StorageError           the object store refused (permissions, bad URL)
    │   │   ├── ObjectNotFound     no such object or file (also a FileNotFoundError)
    │   │   └── ObjectTooLarge     the object is larger than the bytes allowed
    │   ├── UrlRefused             a URL we will not fetch or send the key to (address, host, scheme)
    │   ├── ManifestError          rows of a manifest are invalid (carries every row error)
    │   ├── ConfigError            settings that cannot work
    │   │   └── KeyNotHeld         a job's key is not one this process holds
    │   ├── OverBudget             a run's estimate is over its budget: nothing was queued
    │   ├── OutputInUse            another unfinished run writes to the same output
    │   ├── PresignRefused         a store that cannot sign, or a link longer-lived than it allows
    │   └── RunStateLost           a run's keys vanished from Redis (evicted or flushed): it failed
    ├── Interrupted                a stop was asked (Ctrl-C, SIGTERM) and honoured between two steps
    └── ApiError                   mixin: ``status_code`` and ``detail`` of an API answer; the
                                   classes marked * inherit it beside their branch

Terminal task outcomes (moderation, ``Error``, ``Failed``, ``Task not found``) are *not* exceptions:
they are statuses recorded per row. :func:`describe` words any exception as such a row's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "ApiTimeout",
    "ApiValidationError",
    "AuthError",
    "BadRequest",
    "ConfigError",
    "FieldError",
    "Interrupted",
    "InvalidImage",
    "KeyNotHeld",
    "KontextBatchError",
    "ManifestError",
    "ObjectNotFound",
    "ObjectTooLarge",
    "OutOfCredits",
    "OutputBusy",
    "OutputInUse",
    "OverBudget",
    "PermanentError",
    "PresignRefused",
    "RateLimited",
    "RedisUnavailable",
    "RequestInvalid",
    "RetryableError",
    "RowError",
    "RunStateLost",
    "SampleExpired",
    "ServerError",
    "StorageError",
    "StorageUnavailable",
    "TransportError",
    "UrlRefused",
    "describe",
]


@dataclass(frozen=True)
class FieldError:
    """One problem with one field: ``loc`` is its path (``("body", "seed")`` or ``("seed",)``)."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"

    @property
    def field(self) -> str:
        parts = [str(p) for p in self.loc if p != "body"]
        return ".".join(parts) or "<request>"

    def __str__(self) -> str:
        return f"{self.field}: {self.msg}"


@dataclass(frozen=True)
class RowError:
    """One problem with one manifest row. ``row`` is 1-based, counting data rows (header excluded)."""

    row: int
    field: str
    msg: str

    def __str__(self) -> str:
        return f"row {self.row}, field {self.field}: {self.msg}"


class KontextBatchError(Exception):
    """Root of every kontext-batch exception. ``retryable`` says whether a later attempt may succeed."""

    retryable: bool = False


class RetryableError(KontextBatchError):
    """Raised when a later attempt of the same operation can succeed."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(KontextBatchError):
    """Raised when retrying the same operation cannot help."""

    retryable = False


class ApiError(KontextBatchError):
    """Mixin data for errors that came from an HTTP response of the API."""

    status_code: int | None = None
    detail: object = None


class RateLimited(RetryableError, ApiError):
    """Raised on HTTP 429: the key has too many active tasks. ``retry_after_s`` from Retry-After."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, detail: object = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status_code = 429
        self.detail = detail


class ServerError(RetryableError, ApiError):
    """Raised on HTTP 5xx, or on a response body that is not the JSON the API documents."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        detail: object = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status_code = status_code
        self.detail = detail


class TransportError(RetryableError):
    """Raised when no usable HTTP response arrived."""


class ApiTimeout(TransportError):
    """Raised when connecting, sending or reading timed out."""


class ApiConnectionError(TransportError):
    """Raised when the connection was refused, reset or dropped mid-response."""


class StorageUnavailable(RetryableError):
    """Raised when the object store failed in a way that may pass (timeouts, 5xx, throttling)."""


class OutputBusy(RetryableError):
    """Raised when another run holds the output's results.csv merge (a short Redis lock) for longer
    than a finalize waits: the run is left open for the next sweep. ``output`` is the store's URL."""

    def __init__(self, output: str, waited_s: float) -> None:
        super().__init__(f"another run has been writing results.csv at {output} for over {waited_s:g} s")
        self.output = output


class RedisUnavailable(RetryableError):
    """Raised when Redis cannot be used: nothing listens, it refused the password or ACL user, or the
    TLS handshake failed. ``redis`` is the URL without its password; the message names the cause.

    Retryable because a worker rides it out (Redis restarting, a password being rotated); the CLI
    reports it in one line and exits 2.
    """

    def __init__(self, message: str, *, redis: str) -> None:
        super().__init__(message)
        self.redis = redis


class RequestInvalid(PermanentError):
    """Raised by the request model before anything is sent. ``errors`` lists every bad field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("invalid request: " + "; ".join(str(e) for e in self.errors))


class ApiValidationError(PermanentError, ApiError):
    """Raised on HTTP 422. ``errors`` holds the ``detail`` entries with their field paths."""

    def __init__(self, errors: Sequence[FieldError], *, detail: object = None) -> None:
        self.errors = tuple(errors)
        self.status_code = 422
        self.detail = detail
        super().__init__("API rejected the request (422): " + "; ".join(str(e) for e in self.errors))


class BadRequest(PermanentError, ApiError):
    """Raised on HTTP 400 (and other 4xx the API does not document)."""

    def __init__(self, message: str, *, status_code: int = 400, detail: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class OutOfCredits(PermanentError, ApiError):
    """Raised on HTTP 402: the account has no credits left. Stop submitting; no retry fixes it."""

    def __init__(self, message: str, *, detail: object = None) -> None:
        super().__init__(message)
        self.status_code = 402
        self.detail = detail


class AuthError(PermanentError, ApiError):
    """Raised on HTTP 401/403 from the API: the key is missing, wrong or lacks permission."""

    def __init__(self, message: str, *, status_code: int = 403, detail: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class SampleExpired(PermanentError, ApiError):
    """Raised when a sample URL answers 403/404: it expired (10 minutes after Ready) or was never valid."""

    def __init__(self, message: str, *, status_code: int = 403) -> None:
        super().__init__(message)
        self.status_code = status_code


class InvalidImage(PermanentError):
    """Raised when bytes that should be an image do not decode as one."""


class StorageError(PermanentError):
    """Raised when the object store refuses an operation for good (permissions, malformed URL)."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """Raised when the object (or local file) named does not exist. ``uri`` says which.

    Also a FileNotFoundError, so code written against files (``except FileNotFoundError``) still
    catches it.
    """

    def __init__(self, uri: str) -> None:
        super().__init__(f"no such object: {uri}")
        self.uri = uri


class ObjectTooLarge(StorageError):
    """Raised when an object or a fetched body is larger than the ``max_bytes`` asked for."""

    def __init__(self, uri: str, size: int, max_bytes: int) -> None:
        super().__init__(f"{uri} is {size:,} bytes, more than the {max_bytes:,} allowed")
        self.uri = uri
        self.size = size
        self.max_bytes = max_bytes


class UrlRefused(PermanentError):
    """Raised before a request is sent when its URL is not allowed: a host that resolves to a
    loopback, private or link-local address, a plain-http sample, too many redirects, or a polling
    URL on a host that is not the API's (the key is never sent there). ``host`` names the host."""

    def __init__(self, message: str, *, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class ManifestError(PermanentError):
    """Raised when a manifest cannot be run as it is. ``errors`` lists every bad row and field."""

    def __init__(self, errors: Sequence[RowError], message: str | None = None) -> None:
        self.errors = tuple(errors)
        shown = "; ".join(str(e) for e in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        super().__init__(message or f"{len(self.errors)} invalid row(s): {shown}{more}")


class ConfigError(PermanentError):
    """Raised when settings cannot work (a malformed URL, an unknown provider, a cap below 1)."""


class KeyNotHeld(ConfigError):
    """Raised when a job's API key (by fingerprint) is not one this process holds: the job must go to
    a worker that holds it, never run with another key."""


class OverBudget(PermanentError):
    """Raised by ``run`` when the run's estimated cost is over its budget (``--budget``); nothing was queued."""

    def __init__(self, estimate: float, budget: float) -> None:
        super().__init__(f"the run's estimate of {estimate:g} credits is over its budget of {budget:g} credits")
        self.estimate = estimate
        self.budget = budget


class OutputInUse(PermanentError):
    """Raised by ``run`` when another unfinished run writes to the same output location: their outputs
    and results.csv would mix. ``--force`` runs anyway."""

    def __init__(self, output: str, run_id: str) -> None:
        super().__init__(f"run {run_id} is still writing to {output}; wait for it, cancel it, or use --force")
        self.output = output
        self.run_id = run_id


class PresignRefused(PermanentError):
    """Raised before anything is signed or written when a presigned link cannot be made: the store
    is not one that signs (a local folder, ``memory://``, ``gs://``), or the duration asked is not
    above zero or is longer than the backend lets a signature last. ``url`` names the store."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class RunStateLost(PermanentError):
    """Raised when a run's state is no longer whole in Redis (its metadata, rows, results or counters
    gone: evicted by a ``maxmemory`` policy, or flushed): nothing it says can be trusted, so the run
    has failed and no results.csv is written from it. ``what`` names the part found missing.

    The message carries :data:`RunStateLost.REASON`, the line ``status``, ``results`` and the run's
    end show, and the run's ``stopped_reason`` records.
    """

    REASON = "run state lost from Redis (evicted or flushed?)"

    def __init__(self, run_id: str, what: str) -> None:
        super().__init__(f"run {run_id}: {self.REASON}: {what}")
        self.run_id = run_id
        self.what = what


class Interrupted(KontextBatchError):
    """Raised when a stop was asked (Ctrl-C, SIGTERM) and a pass honours it between two rows or two
    looks: nothing is half-written. Neither retryable nor permanent: the caller decides (the CLI
    exits 130, or detaches from a run that goes on in the workers)."""


def describe(exc: BaseException) -> str:
    """``exc`` as the plain line a row's reason records: one of ours by its own message; an OSError
    by its words and file (``Permission denied: /in/a.png``); anything else, a bug, by its class too,
    which is what finds it."""
    if isinstance(exc, KontextBatchError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"
