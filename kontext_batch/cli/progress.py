"""What an operator sees while a run goes on and when it ends: the terminal side of ``--wait`` and ``follow``.

Three ways to show the same looks at a run (:class:`Look`), chosen by :func:`reporter_for`:

- :class:`LiveReporter`: on a terminal, a rich display redrawn in place (bar, counts, in flight per
  key against its cap, rate, elapsed, ETA, credits);
- :class:`LineReporter`: off a terminal, one plain line every ``every_s`` seconds and on every change
  of the run's state (its status, or a stop), so a 40k-row night logs hundreds of lines, not tens of
  thousands;
- :class:`JsonReporter`: ``--json``, one JSON event per line at the same cadence.

429 answers are not shown: the submit or poll step that met one schedules itself again, and they
are counted per worker process (the ``kontext_api_rate_limited`` metric), not per run in Redis.

:func:`summarize` reads a finished run once (failures grouped by reason) for the end-of-run account.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Protocol
from urllib.parse import unquote, urlsplit

from kontext_batch.run.view import Progress, RunOutcome, RunView, passes, view_run
from kontext_batch.runtime import Runtime

if TYPE_CHECKING:
    # rich loads only for a live display (~20 ms of the CLI's start): see reporter_for.
    from rich.console import Console, Group

__all__ = [
    "JsonReporter",
    "KeyLoad",
    "LineReporter",
    "LiveReporter",
    "Look",
    "Reporter",
    "Summary",
    "hms",
    "reporter_for",
    "summarize",
    "take_look",
]

TOP_REASONS: Final = 5
_STATUS_ORDER: Final = ("succeeded", "skipped", "failed", "moderated", "invalid", "budget", "cancelled")
_STATUS_STYLE: Final = {"succeeded": "green", "skipped": "cyan", "failed": "red", "moderated": "yellow"}


def hms(seconds: float) -> str:
    """``3725`` -> ``1:02:05``."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass(frozen=True)
class KeyLoad:
    """One key of the run's pool: jobs in flight on it, and its cap (None: no live worker holds it)."""

    fp: str
    active: int
    cap: int | None
    refused: str | None


@dataclass(frozen=True)
class Look:
    """One look at a followed run: its progress, its view (counts, spend) and each key's load."""

    progress: Progress
    view: RunView
    keys: tuple[KeyLoad, ...]

    @property
    def in_flight(self) -> int:
        return sum(k.active for k in self.keys)

    @property
    def cap(self) -> int:
        return sum(k.cap or 0 for k in self.keys)

    @property
    def state(self) -> tuple[str, str]:
        """What prints a line off a terminal when it changes: the status, and why the run stopped."""
        meta = self.view.info.meta
        return (self.view.info.status, meta.get("stopped", "") or "")


def take_look(rt: Runtime, run_id: str, p: Progress) -> Look:
    view = view_run(rt, run_id)
    caps = rt.holders.live_keys(k.fp for k in view.keys)
    keys = tuple(KeyLoad(k.fp, k.active, caps[k.fp].total if k.fp in caps else None, k.refused) for k in view.keys)
    return Look(p, view, keys)


def _counts_text(look: Look) -> str:
    info = look.view.info
    order = sorted(info.counts, key=lambda k: (_STATUS_ORDER.index(k) if k in _STATUS_ORDER else 99, k))
    return " ".join(f"{k}={info.counts[k]:,}" for k in order) or "none final yet"


def _credits_text(look: Look) -> str:
    sp = look.view.spend
    text = f"{sp.spent:,g} spent"
    if sp.reserved:
        text += f", {sp.reserved:,g} in flight"
    if sp.budget is not None:
        text += f" of {sp.budget:,g}"
    return text


def _eta_text(p: Progress) -> str:
    return "?" if p.eta_s is None else hms(p.eta_s)


def plain_line(look: Look) -> str:
    """The one-line form: for logs, CI and anything that is not a terminal."""
    p, info = look.progress, look.view.info
    pct = f" ({100 * info.ndone / info.total:.0f}%)" if info.total else ""
    stopped = f" stopped={look.state[1]}" if look.state[1] else ""
    return (
        f"{time.strftime('%H:%M:%S')} run {info.id} {info.status}{stopped}: {info.ndone:,}/{info.total:,}{pct} "
        f"[{_counts_text(look)}] in flight {look.in_flight}/{look.cap} | {p.rows_per_s:.1f} rows/s | "
        f"elapsed {hms(p.elapsed_s)} ETA {_eta_text(p)} | credits {_credits_text(look)}"
    )


def look_doc(look: Look) -> dict[str, object]:
    p, info, sp = look.progress, look.view.info, look.view.spend
    return {
        "event": "progress",
        "run_id": info.id,
        "status": info.status,
        "stopped": look.state[1] or None,
        "total": info.total,
        "done": info.ndone,
        "counts": info.counts,
        "waiting": look.view.waiting,
        "in_flight": look.in_flight,
        "cap": look.cap,
        "keys": [{"fingerprint": k.fp, "active": k.active, "cap": k.cap, "refused": k.refused} for k in look.keys],
        "rows_per_s": round(p.rows_per_s, 3),
        "elapsed_s": round(p.elapsed_s, 1),
        "eta_s": None if p.eta_s is None else round(p.eta_s, 1),
        "credits_spent": sp.spent,
        "credits_in_flight": sp.reserved,
        "budget": sp.budget,
    }


def live_frame(look: Look, *, width: int = 100) -> Group:
    """The live display: what a terminal shows, redrawn a few times a second."""
    from rich.console import Group  # noqa: PLC0415 - see TYPE_CHECKING above
    from rich.progress_bar import ProgressBar  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    p, info = look.progress, look.view.info
    head = Text.assemble(("run ", "dim"), (info.id, "bold"), "  ", (info.status, "bold cyan"))
    if look.state[1]:
        head.append(f"  stopped: {look.state[1]}", style="bold red")
    bar = Table.grid(padding=(0, 1))
    bar.add_column(width=max(10, width - 24))
    bar.add_column(justify="right")
    pct = 100 * info.ndone / info.total if info.total else 0.0
    bar.add_row(
        ProgressBar(total=max(info.total, 1), completed=info.ndone, width=max(10, width - 24)),
        f"{info.ndone:,}/{info.total:,} {pct:3.0f}%",
    )
    counts = Text()
    for k in sorted(info.counts, key=lambda k: (_STATUS_ORDER.index(k) if k in _STATUS_ORDER else 99, k)):
        counts.append(f"{k} ", style="dim")
        counts.append(f"{info.counts[k]:,}", style=_STATUS_STYLE.get(k, "magenta"))
        counts.append("   ")
    counts.append("waiting ", style="dim")
    counts.append(f"{look.view.waiting:,}")
    flight = Text.assemble(("in flight ", "dim"), f"{look.in_flight}/{look.cap}")
    for key in look.keys:
        load = f"{key.active}/{key.cap}" if key.cap is not None else f"{key.active} (no live worker)"
        flight.append(f"   key {key.fp}: ", style="dim")
        flight.append(load if not key.refused else f"out: {key.refused}", style="red" if key.refused else "")
    pace = Text.assemble(
        ("rate ", "dim"),
        f"{p.rows_per_s:.1f} rows/s",
        ("   elapsed ", "dim"),
        hms(p.elapsed_s),
        ("   ETA ", "dim"),
        _eta_text(p),
        ("   credits ", "dim"),
        (_credits_text(look), "bold"),
    )
    return Group(head, bar, counts, flight, pace)


class Reporter(Protocol):
    def update(self, look: Look) -> None: ...

    def close(self) -> None: ...


class LiveReporter:
    """A rich display on the terminal; its last frame stays on screen when it closes."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live  # noqa: PLC0415 - see TYPE_CHECKING above

        self.console = console
        self.live = Live(console=console, auto_refresh=False, transient=False, redirect_stdout=False)
        self.started = False

    def update(self, look: Look) -> None:
        if not self.started:
            self.live.start()
            self.started = True
        self.live.update(live_frame(look, width=self.console.width), refresh=True)

    def close(self) -> None:
        if self.started:
            self.live.stop()


class LineReporter:
    """One plain line every ``every_s`` and on each change of run state."""

    def __init__(
        self, emit: Callable[[str], None], every_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.emit, self.every_s, self.clock = emit, every_s, clock
        self.last_at: float | None = None
        self.last_state: tuple[str, str] | None = None

    def due(self, look: Look) -> bool:
        now = self.clock()
        if self.last_at is None or look.state != self.last_state or now - self.last_at >= self.every_s:
            self.last_at, self.last_state = now, look.state
            return True
        return False

    def update(self, look: Look) -> None:
        if self.due(look):
            self.emit(self.render(look))

    def render(self, look: Look) -> str:
        return plain_line(look)

    def close(self) -> None:
        pass


class JsonReporter(LineReporter):
    """``--json``: one progress event per line, at the cadence of :class:`LineReporter`."""

    def render(self, look: Look) -> str:
        return json.dumps(look_doc(look))


def reporter_for(*, as_json: bool, every_s: float, stream: IO[str], out: IO[str]) -> Reporter:
    """JSON events to ``out``; else a live display when ``stream`` is a terminal, plain lines on it otherwise."""
    if as_json:
        return JsonReporter(lambda s: print(s, file=out, flush=True), every_s)
    if not _may_be_terminal(stream):
        return LineReporter(lambda s: print(s, file=stream, flush=True), every_s)
    from rich.console import Console  # noqa: PLC0415 - see TYPE_CHECKING above

    console = Console(file=stream)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveReporter(console)
    return LineReporter(lambda s: print(s, file=stream, flush=True), every_s)


def _may_be_terminal(stream: IO[str]) -> bool:
    """False when rich's Console would say the stream is no terminal: not a tty, and neither of the
    variables rich reads to say otherwise is set (``TTY_COMPATIBLE``, ``FORCE_COLOR``). A piped or
    redirected ``--wait`` then never loads rich."""
    if "TTY_COMPATIBLE" in os.environ or "FORCE_COLOR" in os.environ:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream: let rich decide, as before
        return True


# --- the end of a run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What a followed run came to: its counts, why rows failed, what it cost and where its files are."""

    run_id: str
    status: str
    kind: str
    total: int
    done: int
    counts: dict[str, int]
    failed: int
    reasons: list[tuple[str, int]] = field(default_factory=list)
    credits_spent: float = 0.0
    duration_s: float | None = None
    results_uri: str | None = None
    gallery_uri: str | None = None
    #: The run's own results.csv (runs/RUN_ID/): what this run alone did and spent.
    run_results_uri: str | None = None
    output: str | None = None
    stopped: str | None = None

    def doc(self) -> dict[str, object]:
        return {
            "event": "outcome",
            "run_id": self.run_id,
            "status": self.status,
            "outcome": self.kind,
            "total": self.total,
            "done": self.done,
            "counts": self.counts,
            "failures": [{"reason": r, "rows": n} for r, n in self.reasons],
            "credits_spent": self.credits_spent,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 1),
            "results": self.results_uri,
            "gallery": self.gallery_uri,
            "run_results": self.run_results_uri,
            "output": self.output,
            "stopped": self.stopped,
        }

    def render(self) -> str:
        took = f" in {hms(self.duration_s)}" if self.duration_s is not None else ""
        lines = [f"run {self.run_id} {self.status}{took}: {self.done:,}/{self.total:,} rows"]
        order = sorted(self.counts, key=lambda k: (_STATUS_ORDER.index(k) if k in _STATUS_ORDER else 99, k))
        lines.append("  " + "   ".join(f"{k} {self.counts[k]:,}" for k in order) if order else "  no row final")
        if self.reasons:
            shown = sum(n for _, n in self.reasons)
            lines.append(f"failures by reason ({self.failed:,} row(s)):")
            lines.extend(f"  {n:>6,}  {reason}" for reason, n in self.reasons)
            if shown < self.failed:
                lines.append(f"  {self.failed - shown:>6,}  (other reasons)")
        lines.append(f"credits: {self.credits_spent:,g} spent")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        lines.append(f"results: {_display(self.results_uri) if self.results_uri else '(not written)'}")
        if self.gallery_uri:
            lines.append(f"gallery: {_display(self.gallery_uri)}")
        if self.run_results_uri:
            lines.append(f"this run's own: {_display(self.run_results_uri)} (and gallery.html beside it)")
        lines.append(f"outputs: {_display(self.output) if self.output else '?'}")
        return "\n".join(lines)


def gallery_of(results_uri: str) -> str:
    """The gallery beside a run's results.csv (the query of an s3 URI kept)."""
    base, sep, query = results_uri.partition("?")
    return base.rsplit("/", 1)[0] + "/gallery.html" + sep + query


def _display(uri: str) -> str:
    """A local file's path rather than its file:// URI: what a person pastes into a shell."""
    parts = urlsplit(uri)
    return str(Path(unquote(parts.path))) if parts.scheme == "file" else uri


def failure_reasons(rt: Runtime, run_id: str, total: int, *, top: int = TOP_REASONS) -> list[tuple[str, int]]:
    """The ``top`` most common reasons rows did not succeed: ``status: error``, most rows first."""
    reasons: Counter[str] = Counter()
    for _, _, res in rt.runs.iter_results(run_id, total):
        if not res or res.get("status") in ("succeeded", "skipped"):
            continue
        error = " ".join(str(res.get("error") or "").split())
        reasons[f"{res['status']}: {error[:160]}" if error else str(res["status"])] += 1
    return reasons.most_common(top)


def summarize(rt: Runtime, outcome: RunOutcome) -> Summary:
    info = outcome.info
    meta = info.meta
    spend = rt.budget.spend(info.id)
    # This pass's: a retry is timed from its own start, not from the run's creation nights ago.
    spans = passes(meta)
    duration = spans[-1].duration_s() if spans else None
    failed = sum(n for k, n in info.counts.items() if k not in ("succeeded", "skipped"))
    results = outcome.results_uri
    return Summary(
        run_id=info.id,
        status=info.status,
        kind=outcome.kind,
        total=info.total,
        done=info.ndone,
        counts=dict(info.counts),
        failed=failed,
        reasons=failure_reasons(rt, info.id, info.total) if failed else [],
        credits_spent=spend.spent,
        duration_s=duration,
        results_uri=results,
        gallery_uri=gallery_of(results) if results else None,
        run_results_uri=None if info.lost else meta.get("run_results_uri") or None,
        output=meta.get("output"),
        stopped=outcome.stopped_reason,
    )
