"""The ``kontext-batch`` command: click commands and rendering. Run logic lives in :mod:`kontext_batch.run.enqueue`,
processes in :mod:`kontext_batch.run.local`.

Exit codes: 0 every row succeeded (or was skipped); 1 rows failed beyond the allowed threshold;
2 bad usage, settings or manifest (nothing was queued); 3 the run stopped (out of credits, key refused,
or cancelled); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import click
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from kontext_batch.cli.progress import Look, hms, reporter_for, summarize, take_look
from kontext_batch.coord.connection import check_redis, explain
from kontext_batch.errors import ConfigError, KontextBatchError, ManifestError, OverBudget
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.manifest.validate import render_report, validate_manifest
from kontext_batch.run.control import cancel_run, retry_run
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.run.local import demo_manifest, interrupts, local_stack
from kontext_batch.run.view import Progress, RunView, follow, view_run
from kontext_batch.runtime import Runtime
from kontext_batch.settings import Settings, resolve_api_base
from kontext_batch.steps.gallery import ids_from_file, put_gallery
from kontext_batch.steps.results import render_results

__all__ = ["main"]

EXIT_FAILED_ROWS: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED: Final = 3
EXIT_INTERRUPTED: Final = 130
EXIT_CODES: Final = {
    "succeeded": 0,
    "rows_failed": EXIT_FAILED_ROWS,
    "stopped": EXIT_STOPPED,
    "timed_out": EXIT_STOPPED,
}

_LAZY: Final = {"emulator": ("kontext_batch.emulator.cli", "emulator_command")}


class _Group(click.Group):
    """Loads the emulator's command (it pulls in FastAPI) only when it is called."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _LAZY:
            module, attr = _LAZY[name]
            cmd: click.Command = getattr(importlib.import_module(module), attr)
            return cmd
        return super().get_command(ctx, name)


def _settings(ctx: click.Context) -> Settings:
    """The environment's settings, with the group's ``--redis-url`` / ``--api-base`` over them."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            env = Settings.from_env()
            if obj.get("redis_url"):
                env = env.with_(redis_url=obj["redis_url"])
            if obj.get("api_base"):
                env = env.with_(api_base=resolve_api_base(obj["api_base"]))
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        obj["settings"] = env
    s: Settings = obj["settings"]
    return s


def _trusted(rt: Runtime) -> Runtime:
    """``rt`` once its Redis is one to trust with runs: an evicting one is refused (ConfigError, exit 2)."""
    from kontext_batch.workers.process import trust_redis  # noqa: PLC0415 - Celery loads only for commands that need it

    trust_redis(rt, say=_say)
    return rt


def _runtime(settings: Settings) -> Runtime:
    """The command's runtime, once one quick PING says the Redis is usable.

    Without the check, a Redis that is down or refuses the password costs ~30 s of the client's
    reconnect retries and ends in a traceback; with it, one line (RedisUnavailable) and exit 2.
    The runtime makes an API client only for a key it is asked to use, so commands that only read
    or change run state need no key.
    """
    from kontext_batch.workers.app import celery_runtime  # noqa: PLC0415 - Celery loads only for commands that need it

    check_redis(settings)
    return celery_runtime(settings)


def _need_key(s: Settings) -> None:
    if not s.held_keys:
        raise click.UsageError(
            "neither KONTEXT_API_KEY nor KONTEXT_API_KEYS is set "
            "(use --emulator or `kontext-batch demo` to try offline)"
        )


def _need_run(rt: Runtime, run_id: str) -> None:
    if not rt.runs.exists(run_id):
        raise click.ClickException(f"no run {run_id!r} in the Redis at {rt.settings.redis_display}")


def _say(msg: str) -> None:
    click.echo(msg, err=True)


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``90s``, ``15m``, ``2h`` or ``1h30m``: seconds as a float."""

    name = "duration"
    _UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        try:
            return float(text)
        except ValueError:
            pass
        total, num = 0.0, ""
        for ch in text:
            if ch.isdigit() or ch == ".":
                num += ch
            elif ch in self._UNITS and num:
                total += float(num) * self._UNITS[ch]
                num = ""
            else:
                self.fail(f"{value!r} is not a duration like 90s, 15m, 2h or 1h30m", param, ctx)
        if num or total <= 0:
            self.fail(f"{value!r} is not a duration like 90s, 15m, 2h or 1h30m", param, ctx)
        return total


TIMEOUT = click.option(
    "--timeout",
    "timeout_s",
    type=Duration(),
    default=None,
    help="With --wait: stop waiting after this long (90s, 15m, 2h); the run goes on. Exit 3.",
)

MAX_FAILURES = click.option(
    "--max-failures",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Rows allowed to fail before the wait exits 1: a count, or a fraction when < 1.",
)

MODEL = click.option(
    "--model",
    envvar="KONTEXT_MODEL",
    show_envvar=True,
    default="pro",
    show_default=True,
    help="Model for rows without one: pro (4 credits an image) or max (8).",
)

INPUTS_ROOT = click.option(
    "--inputs-root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="KONTEXT_INPUTS_ROOT",
    show_envvar=True,
    default=None,
    help="Refuse local input images outside this folder (symlinks resolved).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kontext-batch")
@click.option(
    "--redis-url",
    envvar="KONTEXT_REDIS_URL",
    show_envvar=True,
    default=None,
    help="Broker and run state, e.g. redis://host:6379/0 (default redis://127.0.0.1:6379/0).",
)
@click.option(
    "--api-base",
    envvar="KONTEXT_API_BASE",
    show_envvar=True,
    default=None,
    help="The API: global, eu, us, or an http(s) URL such as the emulator's (default global).",
)
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, api_base: str | None) -> None:
    """Run FLUX.1 Kontext image edits in bulk from a CSV or JSONL manifest."""
    ctx.ensure_object(dict).update(redis_url=redis_url, api_base=api_base)


@cli.command()
@click.argument("manifest")
@MODEL
@click.option("--no-images", is_flag=True, help="Skip reading and decoding the input images.")
@INPUTS_ROOT
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def validate(
    ctx: click.Context, manifest: str, model: str, no_images: bool, inputs_root: Path | None, as_json: bool
) -> None:
    """Check every row of MANIFEST (`-`: stdin) and print the run's cost. Exit 0 only when every row is valid."""

    try:
        report = validate_manifest(
            manifest,
            default_model=model,
            check_images=not no_images,
            fetch=FetchPolicy.from_settings(_settings(ctx)),
            inputs_root=inputs_root,
        )
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot read manifest {manifest}: {exc.strerror or exc}") from None
    if as_json:
        doc = {
            "ok": report.ok,
            "rows_total": report.rows_total,
            "rows_valid": report.rows_valid,
            "errors_total": report.errors_total,
            "errors": [{"row": e.row, "field": e.field, "message": e.msg} for e in report.errors],
            "per_endpoint": report.per_endpoint,
            "cost_credits": report.cost_credits,
            "cost_usd": report.cost_usd,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_report(report))
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.argument("manifest")
@click.option(
    "--output",
    "-o",
    envvar="KONTEXT_OUTPUT",
    show_envvar=True,
    default="./output",
    show_default=True,
    help="Output store: a folder, file://, s3://bucket/prefix, gs://, az://.",
)
@MODEL
@click.option("--skip-invalid", is_flag=True, help="Record invalid rows as `invalid` and run the rest.")
@click.option("--force", is_flag=True, help="Run rows again even when their output already exists.")
@click.option(
    "--wait/--no-wait",
    default=False,
    help="Show progress until the run ends (Ctrl-C detaches: the run goes on). Off a terminal: a line "
    "every KONTEXT_PROGRESS_EVERY_S seconds (default 30) and on each change of state.",
)
@MAX_FAILURES
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    envvar="KONTEXT_BUDGET",
    show_envvar=True,
    default=None,
    help="Credits the run may spend (1 credit = $0.01): refused if the estimate is over; no submit passes it.",
)
@INPUTS_ROOT
@TIMEOUT
@click.option("--local", is_flag=True, help="No Redis needed: start one privately with workers, for this run.")
@click.option("--emulator", is_flag=True, help="With --local: run against a local Kontext emulator.")
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="With --local: worker processes to start.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON events, one a line: queued, progress, outcome.")
@click.pass_context
def run(
    ctx: click.Context,
    manifest: str,
    output: str,
    model: str,
    skip_invalid: bool,
    force: bool,
    wait: bool,
    max_failures: float,
    budget: float | None,
    inputs_root: Path | None,
    timeout_s: float | None,
    local: bool,
    emulator: bool,
    n_workers: int,
    as_json: bool,
) -> None:
    """Validate MANIFEST (`-`: stdin), register a run, and queue every row for the workers."""
    s = _settings(ctx)
    wait = wait or local or emulator
    req = RunRequest(manifest, output, model, skip_invalid, force, wait, max_failures, budget, inputs_root)
    if local or emulator:
        with _local(s, emulator=emulator, workers=n_workers) as s2:
            sys.exit(_submit_and_follow(s2, req, as_json=as_json, timeout_s=timeout_s, detach=False))
    _need_key(s)
    sys.exit(_submit_and_follow(s, req, as_json=as_json, timeout_s=timeout_s))


@contextlib.contextmanager
def _local(s: Settings, *, emulator: bool, workers: int, time_scale: float | None = None) -> Iterator[Settings]:
    """The private stack of ``--local`` and ``demo``; Ctrl-C or SIGTERM stops all of it and exits 130."""

    options = {"time_scale": time_scale} if time_scale is not None else None
    try:
        with (
            interrupts(),
            local_stack(s, emulator=emulator, workers=workers, emulator_options=options, announce=_say) as s2,
        ):
            yield s2
    except KeyboardInterrupt:
        _say("interrupted: stopping everything this command started")
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _submit_and_follow(
    s: Settings, req: RunRequest, *, as_json: bool, timeout_s: float | None = None, detach: bool = True
) -> int:
    """Queue a run (and follow it when ``req.wait``); render both. Returns the exit code.

    ``detach``: Ctrl-C while following leaves the run to its workers (off for ``--local`` and ``demo``,
    whose workers stop with this process).
    """

    rt = _trusted(_runtime(s))
    stop = threading.Event()
    try:
        # Ctrl-C only sets a flag that the pass checks between rows: a KeyboardInterrupt raised
        # wherever the main thread happens to be can land in a finalizer, which swallows it.
        with interrupts(stop) if detach else contextlib.nullcontext():
            queued = start_run(rt, req, stdin=sys.stdin if req.manifest == "-" else None, stop=stop.is_set)
    except OverBudget as exc:
        _say(f"error: {exc}; nothing was queued (raise --budget, or split the manifest)")
        return EXIT_USAGE
    except ManifestError as exc:
        _say(f"error: {len(exc.errors)} invalid row(s); nothing was queued.")
        for e in exc.errors[:50]:
            _say(f"  {e}")
        if len(exc.errors) > 50:
            _say(f"  ... and {len(exc.errors) - 50} more (see `kontext-batch validate`)")
        return EXIT_USAGE
    except KontextBatchError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        _say(f"error: cannot read manifest {req.manifest}: {exc.strerror or exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if not detach:
            raise  # the local stack stops everything and says so
        _say("interrupted while checking the manifest: nothing was queued")
        return EXIT_INTERRUPTED
    if as_json:
        summary = {
            "event": "queued",
            "run_id": queued.run_id,
            "total": queued.total,
            "queued": queued.queued,
            "skipped": queued.skipped,
            "invalid": queued.invalid,
            "cost_credits": queued.report.cost_credits,
            "per_endpoint": queued.report.per_endpoint,
        }
        click.echo(json.dumps(summary))
    else:
        # The cost block: the total, then one line per model when the manifest mixes them.
        _say(render_report(queued.report).rpartition("\n\n")[2])
        click.echo(queued.run_id)
    if not req.wait:
        return 0
    return _follow(
        rt, queued.run_id, max_failures=req.max_failures, as_json=as_json, timeout_s=timeout_s, detach=detach
    )


def _follow(
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
    watchdog = _Watchdog(run_id, rt.settings.stall_warn_s)

    def on_progress(p: Progress) -> None:
        look = take_look(rt, run_id, p)
        reporter.update(look)
        watchdog(look)

    stop = threading.Event()
    try:
        with interrupts(stop) if detach else contextlib.nullcontext():
            try:
                # Twice a second: the live display moves smoothly; plain lines keep their own cadence.
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
    except KeyboardInterrupt:
        if not detach:
            raise
        _say(f"detached from run {run_id}: it goes on without this terminal")
        _say(f"re-attach with: kontext-batch follow {run_id}   (stop it: kontext-batch cancel {run_id})")
        return EXIT_INTERRUPTED
    if outcome.kind == "timed_out":
        _say(f"{run_id}: still running after --timeout {timeout_s:g} s; it goes on (`kontext-batch follow {run_id}`)")
    summary = summarize(rt, outcome)
    if as_json:
        click.echo(json.dumps(summary.doc()))
    else:
        click.echo(summary.render())
    return EXIT_CODES[outcome.kind]


class _Watchdog:
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
        _say(
            f"warning: run {self.run_id} has made no progress for {p.stalled_s:.0f} s "
            f"({view.waiting} row(s) waiting, {look.in_flight} active)" + ("; " + "; ".join(why) if why else "")
        )


@cli.command()
@click.argument("run_id", required=False)
@click.option("--limit", default=10, show_default=True, help="Runs to list when no RUN is given.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, run_id: str | None, limit: int, as_json: bool) -> None:
    """Show one run's progress, or list recent runs."""
    rt = _runtime(_settings(ctx))
    if run_id:
        _need_run(rt, run_id)
    ids = [run_id] if run_id else rt.runs.list_runs(limit)
    views = [view_run(rt, i) for i in ids]
    if as_json:
        click.echo(json.dumps([_view_doc(v) for v in views], indent=2))
        return
    if not views:
        click.echo(f"no runs in the Redis at {rt.settings.redis_display}")
    for v in views:
        i = v.info
        counts = " ".join(f"{k}={n}" for k, n in sorted(i.counts.items()))
        click.echo(f"{i.id}  {i.status:<10} {i.ndone}/{i.total}  {counts}")
        click.echo(f"    started {_started(i.meta)}, {_took(i.meta)}; manifest {i.meta.get('manifest', '?')}")
        click.echo(f"    credits: {_credits(v)}")
        if v.possible_duplicates:
            click.echo(f"    possible duplicate API tasks: {v.possible_duplicates}")
        if not i.finished:
            for k in v.keys:
                click.echo(f"    key {k.fp}: {k.note}")
        if i.meta.get("stopped_reason"):
            click.echo(f"    stopped: {i.meta['stopped_reason']}")
        if i.meta.get("results_uri"):
            click.echo(f"    results: {i.meta['results_uri']}")


def _started(meta: dict[str, str]) -> str:
    at = meta.get("created_at")
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(at))) if at else "?"


def _took(meta: dict[str, str]) -> str:
    if not meta.get("created_at"):
        return "duration unknown"
    if meta.get("finished_at"):
        return f"took {hms(float(meta['finished_at']) - float(meta['created_at']))}"
    return f"running for {hms(time.time() - float(meta['created_at']))}"


def _credits(v: RunView) -> str:
    sp = v.spend
    text = f"{sp.spent:g} spent"
    if sp.reserved:
        text += f", {sp.reserved:g} in flight"
    if sp.budget is not None:
        text += f" of a {sp.budget:g} budget"
    return text


def _view_doc(v: RunView) -> dict[str, object]:
    i = v.info
    return {
        "run_id": i.id,
        "status": i.status,
        "total": i.total,
        "done": i.ndone,
        "counts": i.counts,
        "output": i.meta.get("output"),
        "results": i.meta.get("results_uri"),
        "stopped": i.meta.get("stopped_reason"),
        "credits_spent": v.spend.spent,
        "credits_in_flight": v.spend.reserved,
        "budget": v.spend.budget,
        "possible_duplicates": v.possible_duplicates,
        "manifest": i.meta.get("manifest"),
        "created_at": float(i.meta["created_at"]) if i.meta.get("created_at") else None,
        "finished_at": float(i.meta["finished_at"]) if i.meta.get("finished_at") else None,
        "keys": [{"fingerprint": k.fp, "live": k.live, "active": k.active, "refused": k.refused} for k in v.keys],
    }


@cli.command()
@click.argument("run_id")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the CSV here instead of stdout.",
)
@click.pass_context
def results(ctx: click.Context, run_id: str, out: str | None) -> None:
    """Print a run's results CSV (rows not final yet show status `pending`)."""

    rt = _runtime(_settings(ctx))
    _need_run(rt, run_id)
    if out:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            render_results(rt.runs, run_id, fh)
        _say(out)
    else:
        render_results(rt.runs, run_id, sys.stdout)


@cli.command()
@click.argument("run_id")
@click.pass_context
def cancel(ctx: click.Context, run_id: str) -> None:
    """Stop RUN: rows not sent to the API become `cancelled`; running API tasks finish (if a worker
    holds their key); the run ends in any state."""

    rt = _runtime(_settings(ctx))
    _need_run(rt, run_id)
    n = cancel_run(rt, run_id)
    click.echo(f"{run_id}: cancelled; {n} row(s) marked cancelled; running API tasks finish")


@cli.command()
@click.argument("run_id")
@click.option("--failed", is_flag=True, help="Re-run failed rows (the default when no flag is given).")
@click.option("--moderated", is_flag=True, help="Re-run moderated rows.")
@click.option("--cancelled", is_flag=True, help="Re-run cancelled rows.")
@click.option("--budget-stopped", "budget_rows", is_flag=True, help="Re-run rows the budget stopped.")
@click.option(
    "--ids",
    "ids_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Re-run exactly the rows whose ids this file lists, one per line (a gallery's rejected rows).",
)
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    default=None,
    help="A new budget for the run, in credits (rows the old budget stopped run again by default).",
)
@click.option(
    "--ignore-unknown", is_flag=True, help="With --ids: queue the listed rows the run has, ignoring ids it has not."
)
@click.option("--wait/--no-wait", default=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def retry(
    ctx: click.Context,
    run_id: str,
    failed: bool,
    moderated: bool,
    cancelled: bool,
    budget_rows: bool,
    ids_file: str | None,
    budget: float | None,
    ignore_unknown: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Run RUN's failed (or moderated, cancelled, budget-stopped, listed) rows again, into the same run."""
    flags = (("failed", failed), ("moderated", moderated), ("cancelled", cancelled), ("budget", budget_rows))
    statuses = [n for n, on in flags if on] or (["failed", "budget"] if budget is not None else ["failed"])
    ids = ids_from_file(Path(ids_file)) if ids_file is not None else None
    rt = _trusted(_runtime(_settings(ctx)))
    _need_run(rt, run_id)
    n = retry_run(rt, run_id, statuses, ids=ids, ignore_unknown=ignore_unknown, budget=budget)
    _say(f"{run_id}: {n} row(s) queued again")
    if wait and n:
        sys.exit(_follow(rt, run_id, as_json=as_json))


@cli.command("follow")
@click.argument("run_id")
@MAX_FAILURES
@TIMEOUT
@click.option("--json", "as_json", is_flag=True, help="Print JSON events, one a line: progress, then the outcome.")
@click.pass_context
def follow_command(
    ctx: click.Context, run_id: str, max_failures: float, timeout_s: float | None, as_json: bool
) -> None:
    """Show RUN's progress until it ends (re-attach to a run started elsewhere); Ctrl-C detaches again."""
    rt = _runtime(_settings(ctx))
    _need_run(rt, run_id)
    sys.exit(_follow(rt, run_id, max_failures=max_failures, as_json=as_json, timeout_s=timeout_s))


@cli.command()
@click.option("--queues", "-Q", default=None, help="Queues to consume (default: those of the keys this worker holds).")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Threads: each holds one job step; API waits do not hold a thread.",
)
@click.option("--loglevel", "-l", envvar="KONTEXT_LOG_LEVEL", default="INFO", show_default=True)
@click.option("--hostname", "-n", default=None, help="Celery node name (default kontext@HOST-PID).")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    envvar="KONTEXT_METRICS_PORT",
    show_envvar=True,
    default=None,
    help="Serve Prometheus metrics on this port (address: KONTEXT_METRICS_HOST, default 127.0.0.1).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    queues: str | None,
    concurrency: int,
    loglevel: str,
    hostname: str | None,
    metrics_port: int | None,
) -> None:
    """Start a Celery worker of this app (threads pool) on the configured Redis."""
    from kontext_batch.workers.app import configure  # noqa: PLC0415
    from kontext_batch.workers.process import init_runtime, setup_logging, trust_redis  # noqa: PLC0415
    from kontext_batch.workers.queues import key_queues  # noqa: PLC0415

    s = _settings(ctx)
    _need_key(s)
    setup_logging(s, loglevel)
    app = configure(s)
    trust_redis(init_runtime(s, metrics_port=metrics_port))
    name = hostname or f"kontext@{socket.gethostname()}-{os.getpid()}"
    # Only the queues of the keys this process holds: it never runs a job with another key.
    queues = queues or ",".join(q for k in s.held_keys for q in key_queues(k.fingerprint))
    argv = ["worker", "-Q", queues, "-c", str(concurrency), "-P", "threads", "-l", loglevel, "-n", name]
    # Heartbeats stay on: Flower shows a worker online only while they arrive. JSON logs skip the banner.
    quiet = ["--quiet"] if s.log_format == "json" else []
    app.worker_main([*quiet, *argv, "--without-gossip", "--without-mingle"])


@cli.command("webhooks")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar="KONTEXT_WEBHOOK_PORT",
    show_envvar=True,
    default=8780,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--host",
    envvar="KONTEXT_WEBHOOK_HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (0.0.0.0 behind a proxy that KONTEXT_WEBHOOK_URL names).",
)
@click.pass_context
def webhooks_command(ctx: click.Context, port: int, host: str) -> None:
    """Receive the API's webhooks for runs started with KONTEXT_WEBHOOK_URL (needs no API key)."""
    from kontext_batch.steps.webhooks import WebhookReceiver  # noqa: PLC0415 - only this command serves HTTP

    rt = _runtime(_settings(ctx))
    with WebhookReceiver(rt, port, host) as receiver:
        _say(f"receiving webhooks on http://{host}:{receiver.port}/ (Ctrl-C to stop)")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            _say("stopped")


@cli.command("demo")
@click.option("--output", "-o", default="./output/demo", show_default=True, help="Where outputs and results go.")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.001),
    default=0.25,
    show_default=True,
    help="Emulator speed: 1.0 is the real service's latency.",
)
def demo_command(output: str, n_workers: int, time_scale: float) -> None:
    """Run the bundled catalogue manifest through the whole system, offline, and show where it went."""
    # Offline and private whatever the shell says: never a real key, the real API or a shared Redis.
    offline = ("KONTEXT_API_BASE", "KONTEXT_REDIS_URL", "KONTEXT_API_KEY", "KONTEXT_API_KEYS", "KONTEXT_WEBHOOK_URL")
    try:
        s = Settings.from_env({k: v for k, v in os.environ.items() if k not in offline})
        manifest = demo_manifest()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    _say(
        "demo: the Kontext API emulator stands in for BFL's API; its output images are placeholders "
        "(your input tinted and labelled, at the requested size and format), not real edits"
    )
    req = RunRequest(str(manifest), output, force=True, wait=True, max_failures=1.0)
    with _local(s, emulator=True, workers=n_workers, time_scale=time_scale) as s2:
        code = _submit_and_follow(s2, req, as_json=False, detach=False)
    folder = Path(output).resolve()
    _say(f"demo finished: results {folder}/results.csv")
    _say(f"review the edits: open {folder}/gallery.html (the images are the emulator's placeholders)")
    sys.exit(0 if code in (0, EXIT_FAILED_ROWS) else code)


@cli.command("gallery")
@click.argument("run_id")
@click.pass_context
def gallery_command(ctx: click.Context, run_id: str) -> None:
    """Write the run's review page (gallery.html) beside its results in the output store; print where."""

    rt = _runtime(_settings(ctx))
    _need_run(rt, run_id)
    click.echo(put_gallery(rt.runs, run_id, rt.store(rt.runs.meta(run_id)["output"])))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KontextBatchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except (RedisError, KombuOperationalError) as exc:
        # Redis went away after the start-up check (mid-follow, say): the same one line, no traceback.
        try:
            s = Settings.from_env()
        except ConfigError:
            s = Settings()
        click.echo(f"error: {explain(exc, s)}", err=True)
        sys.exit(EXIT_USAGE)
