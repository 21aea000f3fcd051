"""Validate a whole manifest before a run: every row's fields, every input image, and the price.

:func:`iter_checked_rows` is the one pass over a manifest: it streams like the reader and adds each
row's image errors. ``validate`` reduces it to a :class:`ValidationReport`; a run
(:mod:`kontext_batch.run.enqueue`) turns each checked row into a job or an ``invalid`` result as it goes.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple, TextIO

from kontext_batch.api.prices import ENDPOINT_COST_CREDITS, cost_credits_for
from kontext_batch.errors import RowError
from kontext_batch.io.images import ImageInfo
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.manifest.images import (
    ImageCache,
    check_image,
    describe_image_error,
    resolve_image_ref,
)
from kontext_batch.manifest.model import IMAGE_FIELDS, ImageRef, ManifestRow
from kontext_batch.manifest.reader import is_tabular, iter_manifest
from kontext_batch.manifest.rows import RowOutcome

__all__ = [
    "USD_PER_CREDIT",
    "CheckedRow",
    "ValidationReport",
    "iter_checked_rows",
    "render_report",
    "validate_manifest",
]

USD_PER_CREDIT: Final = 0.01
_WINDOW: Final = 256  # rows whose image checks may be in flight at once


@dataclass
class ValidationReport:
    """What :func:`validate_manifest` found. Costs count valid rows only."""

    path: str
    rows_total: int = 0
    rows_valid: int = 0
    errors: list[RowError] = field(default_factory=list)
    errors_total: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)  # valid rows per endpoint
    cost_credits: int = 0
    images_checked: bool = False
    #: Valid rows whose output is already there (``run`` without ``--force``): not priced, not run.
    already_done: int = 0
    #: A tabular manifest (CSV, .xlsx, .parquet): its row N is spreadsheet row N+1, and the report says so.
    sheet_rows: bool = False

    @property
    def ok(self) -> bool:
        return self.errors_total == 0 and self.rows_total > 0

    @property
    def rows_invalid(self) -> int:
        return self.rows_total - self.rows_valid

    @property
    def cost_usd(self) -> float:
        return round(self.cost_credits * USD_PER_CREDIT, 2)

    def add(self, checked: CheckedRow, *, max_errors: int) -> None:
        """Count one checked row; keep its errors while fewer than ``max_errors`` are kept."""
        self.rows_total += 1
        if checked.errors:
            self.errors_total += len(checked.errors)
            room = max_errors - len(self.errors)
            self.errors.extend(checked.errors[: max(room, 0)])
        elif checked.outcome.value is not None:
            self.rows_valid += 1

    def set_endpoints(self, endpoints: Mapping[str, int]) -> None:
        """The valid rows per endpoint, and the price they add up to."""
        self.per_endpoint = dict(sorted(endpoints.items()))
        self.cost_credits = sum(n * cost_credits_for(e) for e, n in endpoints.items())

    @property
    def estimated_endpoints(self) -> list[str]:
        """Endpoints priced at the default because the price table does not list them."""
        return sorted(e for e in self.per_endpoint if e not in ENDPOINT_COST_CREDITS)


def _refs_of(outcome: RowOutcome, base_dir: Path, inputs_root: Path | None) -> list[ImageRef]:
    if outcome.value is not None:
        return list(outcome.value.images)
    # An invalid row still gets its images checked, so one pass reports everything.
    refs: list[ImageRef] = []
    for name in IMAGE_FIELDS:
        value = outcome.raw.get(name, "").strip()
        if value:
            with contextlib.suppress(ValueError):  # already reported by the reader
                refs.append(resolve_image_ref(value, name, base_dir, inputs_root))
    return refs


class CheckedRow(NamedTuple):
    """One manifest row after every check: the reader's outcome and all its errors, image errors included."""

    outcome: RowOutcome
    errors: list[RowError]

    @property
    def row(self) -> ManifestRow | None:
        """The row when it passed every check, else None."""
        return self.outcome.value if not self.errors else None


def iter_checked_rows(
    path: str | Path,
    *,
    default_model: str = "pro",
    check_images: bool = True,
    fmt: str | None = None,
    stdin: TextIO | None = None,
    cache: ImageCache | None = None,
    workers: int = 8,
    timeout_s: float = 30.0,
    fetch: FetchPolicy | None = None,
    inputs_root: Path | None = None,
    delimiter: str | None = None,
    sheet: str | None = None,
) -> Iterator[CheckedRow]:
    """Every row of the manifest at ``path`` (``-``: stdin), in order, with its field and image errors.

    The one pass over a manifest that both ``validate`` and a run make. Image checks run on a small
    thread pool, at most a window of rows ahead; each distinct image source is read and decoded once
    per ``cache``. Raises ManifestError for file-level problems, as the reader does.

    ``fetch`` governs input image URLs (build it with ``FetchPolicy.from_settings``; default:
    loopback/private/link-local addresses refused). ``inputs_root`` confines local input images to
    one folder (symlinks resolved); a path outside it is a row error. ``delimiter`` and ``sheet``: as
    for :func:`~kontext_batch.manifest.reader.iter_manifest`.
    """
    cache = cache or ImageCache()
    base_dir = Path.cwd() if str(path) == "-" else Path(path).resolve().parent

    def checked(outcome: RowOutcome, refs: list[ImageRef], futures: list[Future[ImageInfo]]) -> CheckedRow:
        errors = list(outcome.errors)
        for ref, fut in zip(refs, futures, strict=True):
            exc = fut.exception()
            if exc is not None:
                errors.append(RowError(outcome.row, ref.field, describe_image_error(ref, exc)))
        return CheckedRow(outcome, errors)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="validate") as pool:
        pending: deque[tuple[RowOutcome, list[ImageRef], list[Future[ImageInfo]]]] = deque()
        rows = iter_manifest(
            path,
            default_model=default_model,
            fmt=fmt,
            stdin=stdin,
            inputs_root=inputs_root,
            delimiter=delimiter,
            sheet=sheet,
        )
        for outcome in rows:
            refs = _refs_of(outcome, base_dir, inputs_root) if check_images else []
            futures = [pool.submit(check_image, ref, cache, timeout_s=timeout_s, fetch=fetch) for ref in refs]
            pending.append((outcome, refs, futures))
            while len(pending) > _WINDOW or (pending and all(f.done() for f in pending[0][2])):
                yield checked(*pending.popleft())
        while pending:
            yield checked(*pending.popleft())


def validate_manifest(
    path: str | Path,
    *,
    default_model: str = "pro",
    check_images: bool = True,
    fmt: str | None = None,
    stdin: TextIO | None = None,
    cache: ImageCache | None = None,
    max_errors: int = 1000,
    workers: int = 8,
    timeout_s: float = 30.0,
    fetch: FetchPolicy | None = None,
    inputs_root: Path | None = None,
    delimiter: str | None = None,
    sheet: str | None = None,
    done: Callable[[CheckedRow], bool] | None = None,
) -> ValidationReport:
    """Check every row of the manifest at ``path`` (``-``: stdin) and price the valid ones.

    Keeps only the first ``max_errors`` errors (and a count), so a 1,000,000-row manifest validates
    in bounded memory. Raises ManifestError for file-level problems (no rows, wrong delimiter, ...).
    ``fetch``, ``inputs_root``, ``delimiter`` and ``sheet``: as for :func:`iter_checked_rows`.
    ``done``: says of a valid row that a run would skip it (its output is there already); such rows
    are counted in ``already_done`` and not priced, as ``run`` prices them.
    """
    report = ValidationReport(path=str(path), images_checked=check_images, sheet_rows=is_tabular(path, fmt))
    endpoints: Counter[str] = Counter()
    for checked in iter_checked_rows(
        path,
        default_model=default_model,
        check_images=check_images,
        fmt=fmt,
        stdin=stdin,
        cache=cache,
        workers=workers,
        timeout_s=timeout_s,
        fetch=fetch,
        inputs_root=inputs_root,
        delimiter=delimiter,
        sheet=sheet,
    ):
        report.add(checked, max_errors=max_errors)
        if checked.row is None:
            continue
        if done is not None and done(checked):
            report.already_done += 1
        else:
            endpoints[checked.row.endpoint] += 1
    report.set_endpoints(endpoints)
    return report


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _row_heading(row: int, *, sheet_rows: bool) -> str:
    if row == 0:
        return "file:"
    # The number a spreadsheet shows beside the row (its header is row 1), which is where people look.
    return f"row {row} (spreadsheet row {row + 1}):" if sheet_rows else f"row {row}:"


def render_report(report: ValidationReport) -> str:
    """A human-readable account: errors grouped by row, then the price of the valid rows."""
    lines: list[str] = []
    head = f"{report.path}: {_plural(report.rows_total, 'row')}"
    if report.rows_invalid:
        head += f", {report.rows_valid:,} valid, {report.rows_invalid:,} with errors"
    lines.append(head)
    if not report.images_checked:
        lines.append("(input images not checked)")
    if report.errors:
        lines.append("")
        current: int | None = None
        for err in report.errors:
            if err.row != current:
                current = err.row
                lines.append(_row_heading(err.row, sheet_rows=report.sheet_rows))
            lines.append(f"  {err.field}: {err.msg}")
        hidden = report.errors_total - len(report.errors)
        if hidden > 0:
            lines.append(f"... and {hidden:,} more error(s) not shown")
    lines.append("")
    valid = "" if report.rows_invalid == 0 else "valid "
    cost = f"{report.cost_credits:,} credits (${report.cost_usd:,.2f})"
    rows = f"{report.rows_valid:,} {valid}row{'' if report.rows_valid == 1 else 's'}"
    if report.already_done:
        to_run = report.rows_valid - report.already_done
        lines.append(f"{rows}: {to_run:,} to run ({cost}), {report.already_done:,} already done")
    else:
        lines.append(f"{rows}: {cost}")
    if len(report.per_endpoint) > 1 or report.estimated_endpoints:
        for endpoint, n in report.per_endpoint.items():
            each = cost_credits_for(endpoint)
            note = " (estimated: price not known)" if endpoint in report.estimated_endpoints else ""
            lines.append(f"  {endpoint}: {_plural(n, 'row')} x {each} = {n * each:,} credits{note}")
    return "\n".join(lines)
