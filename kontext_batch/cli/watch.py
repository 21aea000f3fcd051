"""Following a run from the terminal: queue it, show it until it ends, and what Ctrl-C does.

Ctrl-C (or SIGTERM) while following detaches: the run goes on in its workers and the command says
how to re-attach. Under the private stack of ``--local`` and ``demo`` (:func:`private_stack`) it
stops everything the command started instead, since those workers end with this process. A stop
arrives as KeyboardInterrupt, or as :class:`~kontext_batch.errors.Interrupted` from a library pass
that honoured it between two steps; both are handled alike.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator

import click

from kontext_batch.cli.context import naming, runtime, say, trusted
from kontext_batch.cli.exits import EXIT_CODES, EXIT_INTERRUPTED, EXIT_USAGE
from kontext_batch.cli.progress import Look, reporter_for, summarize, take_look
from kontext_batch.cli.render import cost_block, lost_doc, lost_lines, queued_doc
from kontext_batch.errors import ConfigError, Interrupted, KontextBatchError, ManifestError, OverBudget
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.run.local import interrupts, local_stack
from kontext_batch.run.view import Progress, follow
from kontext_batch.runtime import Runtime
from kontext_batch.settings import Settings

__all__ = ["Watchdog", "follow_run", "private_stack", "submit_and_follow"]


@contextlib.contextmanager
def private_stack(s: Settings, *, emulator: bool, workers: int, time_scale: float | None = None) -> Iterator[Settings]:
    """The private stack of ``--local`` and ``demo``; Ctrl-C or SIGTERM stops all of it and exits 130."""

    options = {"time_scale": time_scale} if time_scale is not None else None
    # Celery's import (the command's runtime needs it) takes seconds on a loaded machine; inside the
    # window below, a Ctrl-C raised in the middle of it surfaces as a RuntimeError from a class body
    # (CPython wraps errors of __set_name__), with a traceback and exit 1 (CI, 2026-12-04).
    import kontext_batch.workers.app  # noqa: F401, PLC0415 - loaded before the signals are ours

    try:
        with (
            interrupts(),
            local_stack(s, emulator=emulator, workers=workers, emulator_options=options, announce=say) as s2,
        ):
            yield s2
    except (KeyboardInterrupt, Interrupted):
        say("interrupted: stopping everything this command started")
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def submit_and_follow(  # noqa: PLR0911 - one exit code per way a run can end
    s: Settings, req: RunRequest, *, as_json: bool, timeout_s: float | None = None, detach: bool = True
) -> int:
    """Queue a run (and follow it when ``req.wait``); render both. Returns the exit code.

    ``detach``: Ctrl-C while following leaves the run to its workers (off for ``--local`` and ``demo``,
    whose workers stop with this process).
    """

    rt = trusted(runtime(s))
    stop = threading.Event()
    try:
        # Ctrl-C only sets a flag that the pass checks between rows: a KeyboardInterrupt raised
        # wherever the main thread happens to be can land in a finalizer, which swallows it.
        with interrupts(stop) if detach else contextlib.nullcontext():
            queued = start_run(rt, req, stdin=sys.stdin if req.manifest == "-" else None, stop=stop.is_set)
    except OverBudget as exc:
        say(f"error: {exc}; nothing was queued (raise --budget, or split the manifest)")
        return EXIT_USAGE
    except ManifestError as exc:
        if any(e.row == 0 for e in exc.errors):  # the file itself, not one of its rows
            say(f"error: {naming(req.manifest, exc.errors[0].msg)}; nothing was queued.")
            return EXIT_USAGE
        say(f"error: {len(exc.errors)} invalid row(s); nothing was queued.")
        for e in exc.errors[:50]:
            say(f"  {e}")
        if len(exc.errors) > 50:
            say(f"  ... and {len(exc.errors) - 50} more (see `kontext-batch validate`)")
        return EXIT_USAGE
    except (KeyboardInterrupt, Interrupted):  # before KontextBatchError: Interrupted is one
        if not detach:
            raise  # the local stack stops everything and says so
        say("interrupted while checking the manifest: nothing was queued")
        return EXIT_INTERRUPTED
    except KontextBatchError as exc:
        say(f"error: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        say(f"error: cannot read manifest {req.manifest}: {exc.strerror or exc}")
        return EXIT_USAGE
    if as_json:
        click.echo(json.dumps(queued_doc(queued)))
    else:
        say(cost_block(queued.report))
        click.echo(queued.run_id)
    if not req.wait:
        return 0
    return follow_run(
        rt, queued.run_id, max_failures=req.max_failures, as_json=as_json, timeout_s=timeout_s, detach=detach
    )


def follow_run(
    rt: Runtime,
    run_id: str,
    *,
    max_failures: float = 0,
    as_json: bool = False,
    timeout_s: float | None = None,
    detach: bool = True,
) -> int:
    """Show the run until it ends, then its summary. With ``detach``, Ctrl-C (or SIGTERM) leaves the run
    going, says how to re-attach and returns 130."""
    reporter = reporter_for(as_json=as_json, every_s=rt.settings.progress_every_s, stream=sys.stderr, out=sys.stdout)
    watchdog = Watchdog(run_id, rt.settings.stall_warn_s)

    def on_progress(p: Progress) -> None:
        look = take_look(rt, run_id, p)
        reporter.update(look)
        watchdog(look)

    stop = threading.Event()
    try:
        with interrupts(stop) if detach else contextlib.nullcontext():
            try:
                # Twice a second: the live display moves smoothly; plain lines keep their own cadence.
                # The run's end cuts the wait short (coord.ends): the summary follows the last row at once.
                outcome = follow(
                    rt,
                    run_id,
                    on_progress=on_progress,
                    max_failures=max_failures,
                    timeout_s=timeout_s,
                    interval_s=0.5,
                    stop=stop.is_set,
                )
            finally:
                reporter.close()
    except (KeyboardInterrupt, Interrupted):
        if not detach:
            raise
        say(f"detached from run {run_id}: it goes on without this terminal")
        say(f"re-attach with: kontext-batch follow {run_id}   (stop it: kontext-batch cancel {run_id})")
        return EXIT_INTERRUPTED
    if outcome.kind == "lost":
        spend = rt.budget.spend(run_id)
        if as_json:
            click.echo(json.dumps(lost_doc(outcome.info, spend, event="outcome")))
        else:
            say(f"error: run {run_id}: {outcome.info.lost_reason}")
            click.echo("\n".join(lost_lines(outcome.info, spend)))
        return EXIT_CODES[outcome.kind]
    if outcome.kind == "timed_out":
        say(f"{run_id}: still running after --timeout {timeout_s:g} s; it goes on (`kontext-batch follow {run_id}`)")
    summary = summarize(rt, outcome)
    if as_json:
        click.echo(json.dumps(summary.doc()))
    else:
        click.echo(summary.render())
    return EXIT_CODES[outcome.kind]


class Watchdog:
    """Says once per stall when the run has made no progress for ``stall_s``."""

    def __init__(self, run_id: str, stall_s: float) -> None:
        self.run_id, self.stall_s = run_id, stall_s
        self.warned = False

    def __call__(self, look: Look) -> None:
        p, view = look.progress, look.view
        if p.stalled_s < self.stall_s:
            self.warned = False
            return
        if self.warned:
            return
        self.warned = True
        why = [f"key {k.fp}: {k.note}" for k in view.keys if k.refused or not k.live]
        say(
            f"warning: run {self.run_id} has made no progress for {p.stalled_s:.0f} s "
            f"({view.waiting} row(s) waiting, {look.in_flight} active)" + ("; " + "; ".join(why) if why else "")
        )
