"""One manifest record (its cells as strings, keyed by normalised column name) becomes a
:class:`~kontext_batch.manifest.model.ManifestRow`, or the located RowErrors that say why not.

The checks that span rows (an id given twice, output names or folders that are the same file)
read and fill a :class:`RowContext`. Reading the records out of a CSV or JSONL file is
:mod:`kontext_batch.manifest.reader`.

Memory: the ids seen and the output names and folders claimed (folded keys, to report clashes):
about 200 bytes per row, 100 more when every row has its own folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, NamedTuple

from kontext_batch.api.models import KontextRequest
from kontext_batch.errors import ConfigError, RequestInvalid, RowError
from kontext_batch.io.names import SIDECAR_SUFFIX
from kontext_batch.manifest.images import resolve_image_ref
from kontext_batch.manifest.model import (
    COLUMNS,
    EXTENSIONS,
    IMAGE_FIELDS,
    ImageRef,
    ManifestRow,
    fold_name,
    render_output_name,
    resolve_model,
)

__all__ = ["BAD_UTF8_RE", "ID_MAX_CHARS", "RowContext", "RowOutcome", "build_row"]

ID_MAX_CHARS: Final = 256
_INT_RE: Final = re.compile(r"^[+-]?\d+$")
_TRUE: Final = frozenset({"true", "1", "yes", "y", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "n", "off"})
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
BAD_UTF8_RE: Final = re.compile(r"[\udc80-\udcff]")  # bytes surrogateescape could not decode
_FORMAT_ALIASES: Final = {"jpg": "jpeg"}
_FOLD_HINT: Final = " (names are compared ignoring case and Unicode normalisation)"


class RowOutcome(NamedTuple):
    """One data row: a ManifestRow when it is valid (``errors`` empty), else None and the errors."""

    row: int
    value: ManifestRow | None
    errors: list[RowError]
    raw: dict[str, str]


# --- cells -------------------------------------------------------------------------------------


def _parse_int(value: str, field: str, errors: list[RowError], row: int) -> int | None:
    if not _INT_RE.match(value):
        errors.append(RowError(row, field, f"must be an integer, got {value!r}"))
        return None
    return int(value)


def _parse_cells(row: int, cells: dict[str, str], errors: list[RowError]) -> dict[str, Any]:
    """Typed API fields from the string cells (set ones only); type errors appended to ``errors``."""
    out: dict[str, Any] = {}
    for name in ("seed", "safety_tolerance", "steps"):
        if cells.get(name):
            num = _parse_int(cells[name], name, errors, row)
            if num is not None:
                out[name] = num
    if cells.get("guidance_scale"):
        try:
            out["guidance_scale"] = float(cells["guidance_scale"])
        except ValueError:
            errors.append(RowError(row, "guidance_scale", f"must be a number, got {cells['guidance_scale']!r}"))
    if cells.get("prompt_upsampling"):
        v = cells["prompt_upsampling"].lower()
        if v in _TRUE or v in _FALSE:
            out["prompt_upsampling"] = v in _TRUE
        else:
            errors.append(RowError(row, "prompt_upsampling", f"must be true or false (or 1/0, yes/no), got {v!r}"))
    if cells.get("output_format"):
        v = cells["output_format"].lower()
        out["output_format"] = _FORMAT_ALIASES.get(v, v)
    for name in ("aspect_ratio", "negative_prompt"):
        if cells.get(name):
            out[name] = cells[name]
    return out


class RowContext:
    """State that spans rows: options, the ids seen, and the output files and folders claimed.

    Output names are kept only as :func:`fold_name` keys (``names``: key -> row), with every
    folder they imply (``folders``: key -> first row); a row's check is a few dict look-ups, one per
    folder level.
    """

    def __init__(
        self, base_dir: Path, default_model: str, default_output_name: str, inputs_root: Path | None = None
    ) -> None:
        self.base_dir = base_dir
        self.inputs_root = inputs_root
        try:
            resolve_model(default_model)
        except ValueError as exc:
            raise ConfigError(f"default model: {exc}") from None
        self.default_model = default_model
        self.default_output_name = default_output_name
        self.ids: dict[str, int] = {}
        self.names: dict[str, int] = {}
        self.folders: dict[str, int] = {}

    def _owner(self, key: str) -> tuple[int, str] | None:
        """The row whose output or sidecar is the file ``key``, and which of the two it is."""
        row = self.names.get(key)
        if row is not None:
            return row, "output"
        if key.endswith(SIDECAR_SUFFIX):
            row = self.names.get(key[: -len(SIDECAR_SUFFIX)])
            if row is not None:
                return row, "sidecar"
        return None

    def clash(self, name: str, key: str) -> str | None:
        """Why ``name`` (folded: ``key``) and its sidecar cannot join the names claimed, or None."""
        side = key + SIDECAR_SUFFIX
        hit = self._owner(key)
        if hit is not None:
            return f"{name!r} is the same file as the {hit[1]} of row {hit[0]}{_FOLD_HINT}"
        row = self.names.get(side)
        if row is not None:
            return f"its sidecar {name + SIDECAR_SUFFIX!r} is the same file as the output of row {row}{_FOLD_HINT}"
        for mine, what in ((key, repr(name)), (side, f"its sidecar {name + SIDECAR_SUFFIX!r}")):
            row = self.folders.get(mine)
            if row is not None:
                return f"{what} is a folder in the output name of row {row}{_FOLD_HINT}"
        end, depth = key.find("/"), 1
        while end != -1:
            hit = self._owner(key[:end])
            if hit is not None:
                folder = "/".join(name.split("/")[:depth])  # folding may change lengths, never slashes
                return f"its folder {folder!r} is the same file as the {hit[1]} of row {hit[0]}{_FOLD_HINT}"
            end, depth = key.find("/", end + 1), depth + 1
        return None

    def claim(self, key: str, row: int) -> None:
        self.names[key] = row
        end = key.find("/")
        while end != -1:
            self.folders.setdefault(key[:end], row)
            end = key.find("/", end + 1)


def build_row(row: int, raw: dict[str, str], ctx: RowContext) -> RowOutcome:  # noqa: C901, PLR0912, PLR0915 - every column's check in manifest order, so errors come in the order of the row
    """Check one row's cells (already strings, keyed by normalised column name)."""
    errors: list[RowError] = []
    for name, value in raw.items():
        if BAD_UTF8_RE.search(value):
            errors.append(RowError(row, name, "is not valid UTF-8 text; save the manifest as UTF-8"))
    if errors:
        return RowOutcome(row, None, errors, raw)
    cells = {k: (v if k == "prompt" else v.strip()) for k, v in raw.items() if k in COLUMNS}
    extra = {k: v for k, v in raw.items() if k not in COLUMNS}

    row_id = cells.get("id") or str(row)
    id_ok = False
    if len(row_id) > ID_MAX_CHARS or _CONTROL_RE.search(row_id):
        errors.append(RowError(row, "id", f"must be at most {ID_MAX_CHARS} printable characters"))
    elif row_id in ctx.ids:
        errors.append(RowError(row, "id", f"duplicate id {row_id!r}: row {ctx.ids[row_id]} has it too"))
    else:
        ctx.ids[row_id] = row
        id_ok = True

    try:
        endpoint = resolve_model(cells.get("model") or ctx.default_model)
    except ValueError as exc:
        errors.append(RowError(row, "model", str(exc)))
        endpoint = ""

    images: list[ImageRef] = []
    gap: str | None = None
    for name in IMAGE_FIELDS:
        value = cells.get(name, "")
        if not value:
            gap = gap or name
            continue
        if gap is not None:
            errors.append(RowError(row, name, f"is set but {gap} is empty; fill image columns in order"))
        try:
            images.append(resolve_image_ref(value, name, ctx.base_dir, ctx.inputs_root))
        except ValueError as exc:
            errors.append(RowError(row, name, str(exc)))

    params = _parse_cells(row, cells, errors)
    prompt = cells.get("prompt", "")
    fields: dict[str, Any] = dict(params)
    for ref in images:
        fields[ref.field] = "placeholder"  # the real payload comes at submit time
    request: KontextRequest | None = None
    if not prompt.strip():
        errors.append(RowError(row, "prompt", "is required and must not be blank"))
    else:
        try:
            request = KontextRequest.build(prompt=prompt, **fields)
        except RequestInvalid as exc:
            errors.extend(RowError(row, fe.field, fe.msg) for fe in exc.errors)

    output_format = params.get("output_format") or "png"
    template = cells.get("output_name") or ctx.default_output_name
    output_name = ""
    try:
        output_name = render_output_name(
            template,
            raw,
            id=row_id,
            row=row,
            model=endpoint,
            ext=EXTENSIONS.get(output_format, output_format),
        )
    except ValueError as exc:
        errors.append(RowError(row, "output_name", str(exc)))
    else:
        key = fold_name(output_name)
        clash = ctx.clash(output_name, key)
        if clash is not None and not id_ok:
            pass  # a duplicate id already explains it ({id} is in most names)
        elif clash is not None:
            errors.append(RowError(row, "output_name", clash))
        else:
            ctx.claim(key, row)

    if errors or request is None:
        return RowOutcome(row, None, errors, raw)
    typed = {name: value for name, value in request.set_fields().items() if name in params}
    manifest_row = ManifestRow(
        row=row,
        id=row_id,
        endpoint=endpoint,
        prompt=prompt,
        images=tuple(images),
        params=typed,
        output_name=output_name,
        output_format=output_format,
        extra=extra,
    )
    return RowOutcome(row, manifest_row, [], raw)
