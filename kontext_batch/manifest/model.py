"""One manifest row as a checked value: what to send, where its output goes, what to carry along.

A :class:`ManifestRow` only exists for a row with no errors; it is small and JSON-able
(:meth:`ManifestRow.to_json`) so a run can park 1,000,000 of them in Redis.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from string import Formatter
from types import MappingProxyType
from typing import Any, Final

from kontext_batch.api.models import INPUT_IMAGE_FIELDS, MODEL_ENDPOINTS, endpoint_for_model
from kontext_batch.api.prices import ENDPOINT_COST_CREDITS
from kontext_batch.errors import RequestInvalid
from kontext_batch.io.names import (
    INPUTS_FOLDER,
    MAX_FILE_NAME_BYTES,
    MAX_NAME_BYTES,
    RESERVED_NAMES,
    RUNS_FOLDER,
    SIDECAR_SUFFIX,
    check_object_name,
)

__all__ = [
    "COLUMNS",
    "EXTENSIONS",
    "IMAGE_FIELDS",
    "PARAM_FIELDS",
    "ImageRef",
    "ManifestRow",
    "fold_name",
    "render_output_name",
    "resolve_model",
]

IMAGE_FIELDS: Final = INPUT_IMAGE_FIELDS
#: API parameters a row may set (``negative_prompt``, ``steps``, ``guidance_scale``: reseller only).
PARAM_FIELDS: Final = (
    "seed",
    "aspect_ratio",
    "output_format",
    "safety_tolerance",
    "prompt_upsampling",
    "steps",
    "guidance_scale",
    "negative_prompt",
)
#: Every column with a meaning; any other column is an "extra", carried to the results.
COLUMNS: Final = ("id", "prompt", *IMAGE_FIELDS, *PARAM_FIELDS, "model", "output_name")
#: output_format -> file extension used for ``{ext}``.
EXTENSIONS: Final[Mapping[str, str]] = MappingProxyType({"png": "png", "jpeg": "jpg", "webp": "webp"})
_PLACEHOLDER_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_FOLDED: Final = {n.lower(): n for n in RESERVED_NAMES}
_RESERVED_MAX_CHARS: Final = max(len(n) for n in RESERVED_NAMES)


def resolve_model(value: str) -> str:
    """The endpoint a ``model`` cell names: ``pro``/``max``, a known endpoint, or any ``flux-*`` one.

    Raises ValueError for anything else, so a typo (``prro``) fails validation instead of every submit.
    """
    v = value.strip().lower()
    if v in MODEL_ENDPOINTS:
        return MODEL_ENDPOINTS[v]
    if v in ENDPOINT_COST_CREDITS or v in MODEL_ENDPOINTS.values() or v.startswith("flux-"):
        try:
            return endpoint_for_model(v)
        except RequestInvalid:
            pass
    raise ValueError(f"unknown model {value.strip()!r}: use pro, max or an endpoint name such as flux-kontext-pro")


def render_output_name(template: str, cells: Mapping[str, str], **named: str | int) -> str:
    """Fill ``template``'s ``{placeholders}`` from ``named`` (id, row, model, ext) then ``cells``.

    Only plain names are allowed (``{row:05d}``-style format specs too; no attribute or index
    access). The result and its sidecar (``NAME.json``) must pass
    :func:`~kontext_batch.io.names.check_object_name`, and its first segment must not be one of
    :data:`~kontext_batch.io.names.RESERVED_NAMES` (compared with :func:`fold_name`). Raises ValueError
    saying what is wrong.
    """
    try:
        parts = list(Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc} (write {{{{ or }}}} for a literal brace)") from None
    out: list[str] = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if not _PLACEHOLDER_RE.match(name) or conversion:
            raise ValueError(f"bad placeholder {{{name}}} in {template!r}: use a plain column name")
        if name in named:
            value: object = named[name]
        elif name in cells:
            value = cells[name].strip()
        else:
            raise ValueError(f"unknown placeholder {{{name}}} in {template!r}: no such column")
        try:
            out.append(format(value, spec or ""))
        except ValueError as exc:
            raise ValueError(f"bad format {{{name}:{spec}}} in {template!r}: {exc}") from None
    rendered = "".join(out)
    check_object_name(rendered)
    # The sidecar differs only in length: check that without a second full pass.
    size = len(rendered.encode("utf-8")) + len(SIDECAR_SUFFIX)
    if size > MAX_FILE_NAME_BYTES and (
        size > MAX_NAME_BYTES
        or len(rendered.rpartition("/")[2].encode("utf-8")) + len(SIDECAR_SUFFIX) > MAX_FILE_NAME_BYTES
    ):
        limit = MAX_FILE_NAME_BYTES - len(SIDECAR_SUFFIX)
        raise ValueError(
            f"{rendered!r} is too long for its sidecar {SIDECAR_SUFFIX!r} to be stored: a file name at most "
            f"{limit} bytes, the whole name at most {MAX_NAME_BYTES - len(SIDECAR_SUFFIX)} bytes"
        )
    top = rendered.split("/", 1)[0]
    # Folding never makes a name shorter, so only a short first segment can fold to a reserved one.
    if len(top) <= _RESERVED_MAX_CHARS and (top := fold_name(top)) in _RESERVED_FOLDED:
        what = {
            INPUTS_FOLDER: "staged input images",
            RUNS_FOLDER: "each run's own results.csv and gallery.html (runs/RUN_ID/)",
        }.get(top, "the run's own files")
        raise ValueError(f"{rendered!r}: {_RESERVED_FOLDED[top]!r} is reserved for {what}")
    return rendered


def fold_name(name: str) -> str:
    """The key under which two output names are one file on some file system.

    macOS and Windows ignore case; macOS also ignores Unicode normalisation (``é`` as one code
    point or as ``e`` + combining accent). Canonical caseless matching (Unicode D145), kept in NFC.
    """
    if name.isascii():
        return name.lower()  # casefold == lower for ASCII; skips two normalisations per row
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


@dataclass(frozen=True)
class ImageRef:
    """One input image of a row: its column, and where it is (absolute path, or URL)."""

    field: str
    ref: str
    is_local: bool


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class ManifestRow:
    """A valid row. ``params`` holds only the API parameters the row sets, already typed."""

    row: int
    id: str
    endpoint: str
    prompt: str
    images: tuple[ImageRef, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    output_name: str = ""
    output_format: str = "png"
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only views, so a row shared between threads cannot be changed under another.
        object.__setattr__(self, "params", _frozen(self.params))
        object.__setattr__(self, "extra", _frozen(self.extra))

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.output_format, self.output_format)
