"""The Kontext API's data: the request a client may send, and what submit and poll give back.

The request model enforces the documented rules *before* anything is sent, so a bad row costs no
credits and no active slot. Rules (BFL OpenAPI + docs):

=================  ==============================================  ==========
field              rule                                            default
=================  ==============================================  ==========
prompt             required, 1..10,000 characters                  -
input_image(_2-4)  base64 (no data-URI prefix) or http(s) URL      None
seed               integer >= 0                                    random
aspect_ratio       "W:H", positive integers, 21:9 >= W/H >= 9:21   model's
output_format      jpeg | png | webp                               png
webhook_url        http(s) URL, 1..2083 characters                 None
webhook_secret     string (never shown in repr)                    None
prompt_upsampling  bool                                            False
safety_tolerance   integer 0..6                                    2
=================  ==============================================  ==========

``steps``, ``guidance_scale`` and ``negative_prompt`` exist only in the reseller dialect; the BFL
provider refuses a request that sets them rather than silently dropping them.
"""

from __future__ import annotations

import enum
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from kontext_batch.api.reasons import api_message, cut
from kontext_batch.errors import FieldError, RequestInvalid
from kontext_batch.secret import Secret

__all__ = [
    "ASPECT_MAX",
    "ASPECT_MIN",
    "MODEL_ENDPOINTS",
    "KontextRequest",
    "OutputFormat",
    "PollResult",
    "Sample",
    "Status",
    "Task",
    "endpoint_for_model",
    "parse_aspect_ratio",
]

OutputFormat = Literal["jpeg", "png", "webp"]

#: The widest and the tallest ratio the API takes, as (width, height).
ASPECT_MAX: Final = (21, 9)
ASPECT_MIN: Final = (9, 21)
PROMPT_MAX_CHARS: Final = 10_000
WEBHOOK_URL_MAX_CHARS: Final = 2083
INPUT_IMAGE_FIELDS: Final = ("input_image", "input_image_2", "input_image_3", "input_image_4")

#: Manifest ``model`` values and the endpoint each names. Any other endpoint name is allowed as data.
MODEL_ENDPOINTS: Final[dict[str, str]] = {"pro": "flux-kontext-pro", "max": "flux-kontext-max"}

_ASPECT_RE: Final = re.compile(r"^\s*(\d{1,5})\s*:\s*(\d{1,5})\s*$")
_ENDPOINT_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_IN_PROGRESS: Final = frozenset({"reasoning", "generating"})


def endpoint_for_model(model: str) -> str:
    """``pro`` -> ``flux-kontext-pro``; an endpoint name (``flux-2-pro``) passes through unchanged."""
    name = MODEL_ENDPOINTS.get(model.strip().lower(), model.strip())
    if not _ENDPOINT_RE.match(name):
        raise RequestInvalid([FieldError(("model",), f"not a model or endpoint name: {model!r}")])
    return name


def parse_aspect_ratio(value: str) -> tuple[int, int]:
    """Parse ``"W:H"`` and check it lies within 21:9..9:21. Raises ValueError with the reason."""
    m = _ASPECT_RE.match(value)
    if not m:
        raise ValueError(f"aspect ratio must look like 'W:H' (e.g. 16:9), got {value!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if w == 0 or h == 0:
        raise ValueError(f"aspect ratio sides must be positive, got {value!r}")
    # 9/21 <= w/h <= 21/9, in integers (fractions' import was 2.5 ms of the CLI's start).
    if not (ASPECT_MIN[0] * h <= ASPECT_MIN[1] * w and ASPECT_MAX[1] * w <= ASPECT_MAX[0] * h):
        raise ValueError(f"aspect ratio must be between 21:9 and 9:21, got {value!r}")
    return w, h


def _int_in(value: object, low: int, high: int) -> str | None:
    """Why ``value`` is not an integer in ``low..high``, or None when it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if value < low:
        return f"must be greater than or equal to {low}"
    if value > high:
        return f"must be less than or equal to {high}"
    return None


def _text_in(value: object, low: int, high: int) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) < low:
        return f"must have at least {low} character{'s' if low != 1 else ''}"
    if len(value) > high:
        return f"must have at most {high:,} characters"
    return None


def _image(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "input image must be base64 data or an http(s) URL, not empty"
    if value.startswith("data:"):
        return "send bare base64 without a data: URI prefix"
    return None


def _prompt(value: object) -> str | None:
    why = _text_in(value, 1, PROMPT_MAX_CHARS)
    return why or (None if str(value).strip() else "prompt must not be blank")


def _aspect(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string like 16:9"
    try:
        parse_aspect_ratio(value)
    except ValueError as exc:
        return str(exc)
    return None


def _webhook_url(value: object) -> str | None:
    why = _text_in(value, 1, WEBHOOK_URL_MAX_CHARS)
    if why is None and not str(value).startswith(("http://", "https://")):
        return "webhook_url must be an http(s) URL"
    return why


def _number_in(low: float, high: float) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # noqa: PLR0124 - NaN
            return "must be a number"
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check


def _one_of(*allowed: object) -> Callable[[object], str | None]:
    return lambda value: None if value in allowed else f"must be one of {', '.join(map(str, allowed))}, got {value!r}"


def _of_type(kind: type | types.UnionType, what: str) -> Callable[[object], str | None]:
    return lambda value: None if isinstance(value, kind) else f"must be {what}"


#: Each field's rule: why a value that is set is wrong, or None. Every field is here, in order.
_RULES: Final[dict[str, Callable[[Any], str | None]]] = {
    "prompt": _prompt,
    **dict.fromkeys(INPUT_IMAGE_FIELDS, _image),
    "seed": lambda v: _int_in(v, 0, 2**63 - 1),
    "aspect_ratio": _aspect,
    "output_format": _one_of("jpeg", "png", "webp"),
    "webhook_url": _webhook_url,
    "webhook_secret": _of_type(str | Secret, "a string"),
    "prompt_upsampling": _of_type(bool, "true or false"),
    "safety_tolerance": lambda v: _int_in(v, 0, 6),
    "steps": lambda v: _int_in(v, 1, 50),
    "guidance_scale": _number_in(1, 10),
    "negative_prompt": _of_type(str, "a string"),
}


def _normal_aspect(value: str) -> str:
    w, h = parse_aspect_ratio(value)
    return f"{w}:{h}"  # " 9 : 21 " -> "9:21"


def _secret(value: str | Secret) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)  # build(webhook_secret="...")


#: The stored form of a valid value, where it differs from what was given.
_NORMAL_FORMS: Final[dict[str, Callable[[Any], object]]] = {
    "aspect_ratio": _normal_aspect,
    "webhook_secret": _secret,
    "guidance_scale": float,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class KontextRequest:
    """One generation/edit request, valid by construction: an invalid field raises
    :class:`RequestInvalid` listing every bad field, before anything is sent.

    A plain dataclass with its own checks rather than a pydantic model: the CLI checks every
    manifest row with it, and pydantic's import and model build were ~70 ms of the command's
    ~300 ms before its first submit (issue 22). The rules are the table above, in one place.
    """

    prompt: str
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    seed: int | None = None
    aspect_ratio: str | None = None
    output_format: OutputFormat | None = None
    webhook_url: str | None = None
    webhook_secret: Secret | None = None
    prompt_upsampling: bool | None = None
    safety_tolerance: int | None = None
    # Reseller dialect only.
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        bad: list[FieldError] = []
        for name, rule in _RULES.items():
            value = getattr(self, name)
            if value is None and name != "prompt":
                continue
            why = rule(value)
            if why is not None:
                bad.append(FieldError((name,), why))
            elif name in _NORMAL_FORMS:
                object.__setattr__(self, name, _NORMAL_FORMS[name](value))
        if bad:
            raise RequestInvalid(bad)

    @classmethod
    def build(cls, **fields: Any) -> KontextRequest:
        """Validate ``fields``; raise :class:`RequestInvalid` listing every bad field (an unknown
        name is one of them)."""
        unknown = [
            FieldError((name,), "not a request field", "extra_forbidden") for name in fields if name not in _NAMES
        ]
        if "prompt" not in fields:
            unknown.insert(0, FieldError(("prompt",), "is required", "missing"))
        if unknown:
            raise RequestInvalid(unknown)
        return cls(**fields)

    @property
    def input_images(self) -> list[str]:
        return [v for v in (self.input_image, self.input_image_2, self.input_image_3, self.input_image_4) if v]

    def set_fields(self) -> dict[str, Any]:
        """The fields that are set (not None), in the table's order; the webhook secret still wrapped."""
        return {name: value for name in _NAMES if (value := getattr(self, name)) is not None}

    def bfl_body(self) -> dict[str, Any]:
        """The JSON body for BFL's endpoints: only fields that are set; the secret revealed here only."""
        body = {k: v for k, v in self.set_fields().items() if k not in _NOT_BFL}
        if self.webhook_secret is not None:
            body["webhook_secret"] = self.webhook_secret.reveal()
        return body


_NAMES: Final = tuple(f.name for f in fields(KontextRequest))
_NOT_BFL: Final = frozenset({"webhook_secret", "steps", "guidance_scale", "negative_prompt"})


class Status(enum.StrEnum):
    """A task's state as the API names it; a word we do not know is UNKNOWN (see :meth:`parse`).

    UNKNOWN is neither pending nor terminal: the task may have ended under a name we have not
    seen (a reseller's ``succeeded``), so the caller decides how long to keep looking, and
    ``PollResult.raw_status`` holds the word.
    """

    PENDING = "Pending"
    READY = "Ready"
    REQUEST_MODERATED = "Request Moderated"
    CONTENT_MODERATED = "Content Moderated"
    ERROR = "Error"
    FAILED = "Failed"
    TASK_NOT_FOUND = "Task not found"
    UNKNOWN = "Unknown"

    @classmethod
    def parse(cls, raw: object) -> Status:
        """The Status ``raw`` names (case-insensitive). ``Reasoning`` and ``Generating``, seen from
        BFL's API while a task runs, are PENDING; any other word is UNKNOWN."""
        word = raw.strip().lower() if isinstance(raw, str) else ""
        if word in _IN_PROGRESS:
            return cls.PENDING
        for s in cls:
            if s is not cls.UNKNOWN and word == s.value.lower():
                return s
        return cls.UNKNOWN

    @property
    def terminal(self) -> bool:
        """True when the task has ended; False for PENDING and UNKNOWN."""
        return self not in (Status.PENDING, Status.UNKNOWN)

    @property
    def moderated(self) -> bool:
        return self in (Status.REQUEST_MODERATED, Status.CONTENT_MODERATED)


@dataclass(frozen=True)
class Task:
    """What a submit returns. Always poll ``polling_url``; never rebuild it from ``id``."""

    id: str
    polling_url: str
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


@dataclass(frozen=True)
class PollResult:
    """One poll of a task. ``raw_status`` keeps the API's word when ``status`` had to be inferred."""

    id: str
    status: Status
    raw_status: str
    progress: float | None = None
    sample_url: str | None = None
    seed: int | None = None
    prompt: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    duration: float | None = None
    moderation_reasons: tuple[str, ...] = ()
    details: dict[str, Any] | None = None
    cost: float | None = None

    @property
    def reason(self) -> str:
        """A one-line account of a non-Ready terminal outcome, worded alike for both dialects (the
        table in :mod:`kontext_batch.api.reasons`)."""
        status = self.status
        if status.moderated:
            # BFL's wording whichever dialect answered: the reseller says "failed" with a code.
            words = ", ".join(r for r in self.moderation_reasons if r) or api_message(self.details)
            return f"{status.value}: {cut(words)}" if words else status.value
        raw = self.raw_status.strip()
        label = status.value if not raw or raw.lower() == status.value.lower() else raw
        details: dict[str, Any] = self.details or {}
        if details.get("http_status") is not None:  # a poll answered 404; its body is under "detail"
            label = f"{label}, HTTP {details['http_status']}"
            message = api_message(details.get("detail"))
        else:
            message = api_message(details)
        if message.lower() in (status.value.lower(), raw.lower()):
            message = ""  # "Task not found" once more says nothing new
        lead = _REASON_LEADS.get(status, "the task ended")
        return f"{lead} ({label})" + (f": {message}" if message else "")


_REASON_LEADS: Final = {
    Status.ERROR: "the API failed the task",
    Status.FAILED: "the API failed the task",
    Status.TASK_NOT_FOUND: "the API does not know the task",
}


@dataclass(frozen=True)
class Sample:
    """A downloaded output image."""

    content: bytes = field(repr=False)
    content_type: str

    @property
    def extension(self) -> str:
        sub = self.content_type.split(";")[0].strip().lower().removeprefix("image/")
        return {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}.get(sub, "bin")
