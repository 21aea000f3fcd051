"""The ``kontext-batch`` command: click commands and rendering. Run logic lives in :mod:`kontext_batch.runner`,
processes in :mod:`kontext_batch.local`.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import click
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from kontext_batch.api.keyless import KeylessProvider
from kontext_batch.control import cancel_run, retry_run
from kontext_batch.errors import ConfigError, KontextBatchError, ManifestError
from kontext_batch.local import demo_manifest, interrupts, local_stack
from kontext_batch.manifest.validate import render_report, validate_manifest
from kontext_batch.redisconn import check_redis, explain
from kontext_batch.results import render_results
from kontext_batch.runner import Progress, RunOutcome, RunRequest, follow, start_run
from kontext_batch.runtime import Runtime
from kontext_batch.settings import Settings

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
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = Settings.from_env()
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    s: Settings = obj["settings"]
    return s


def _runtime(settings: Settings) -> Runtime:
    """The command's runtime, once one quick PING says the Redis is usable.

    Without the check, a Redis that is down or refuses the password costs ~30 s of the client's
    reconnect retries and ends in a traceback; with it, one line (RedisUnavailable) and exit 2.
    Without a key the runtime gets no API client: commands that need one call ``_need_key`` first.
    """
    from workers.app import CelerySchedule, configure  # noqa: PLC0415

    check_redis(settings)
    provider = None if settings.api_key else KeylessProvider(settings.provider)
    return Runtime.create(settings, CelerySchedule(configure(settings)), provider=provider)


def _need_key(s: Settings) -> None:
    if not s.api_key:
        raise click.UsageError("KONTEXT_API_KEY is not set (use --emulator or `kontext-batch demo` to try offline)")


def _need_run(rt: Runtime, run_id: str) -> None:
    if not rt.runs.exists(run_id):
        raise click.ClickException(f"no run {run_id!r} in the Redis at {rt.settings.redis_display}")


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kontext-batch")
def cli() -> None:
    """Run FLUX.1 Kontext image edits in bulk from a CSV or JSONL manifest."""


@cli.command()
@click.argument("manifest")
@click.option("--model", envvar="KONTEXT_MODEL", default="pro", show_default=True, help="Model for rows without one.")
@click.option("--no-images", is_flag=True, help="Skip reading and decoding the input images.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(manifest: str, model: str, no_images: bool, as_json: bool) -> None:
    """Check every row of MANIFEST (`-`: stdin) and print the run's cost. Exit 0 only when every row is valid."""

    try:
        report = validate_manifest(manifest, default_model=model, check_images=not no_images)
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
    default="./output",
    show_default=True,
    help="Output store: a folder, file://, s3://bucket/prefix, gs://, az://.",
)
@click.option("--model", envvar="KONTEXT_MODEL", default="pro", show_default=True, help="Model for rows without one.")
@click.option("--skip-invalid", is_flag=True, help="Record invalid rows as `invalid` and run the rest.")
@click.option("--force", is_flag=True, help="Run rows again even when their output already exists.")
@click.option("--wait/--no-wait", default=False, help="Show progress until the run ends; write the results.")
@click.option(
    "--max-failures",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Rows allowed to fail before --wait exits 1: a count, or a fraction when < 1.",
)
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
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
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
    local: bool,
    emulator: bool,
    n_workers: int,
    as_json: bool,
) -> None:
    """Validate MANIFEST (`-`: stdin), register a run, and queue every row for the workers."""

    s = _settings(ctx)
    req = RunRequest(manifest, output, model, skip_invalid, force, wait or local or emulator, max_failures)
    if local or emulator:
        with _local(s, emulator=emulator, workers=n_workers) as s2:
            sys.exit(_submit_and_follow(s2, req, as_json=as_json))
    _need_key(s)
    sys.exit(_submit_and_follow(s, req, as_json=as_json))


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


def _submit_and_follow(s: Settings, req: RunRequest, *, as_json: bool) -> int:
    """Queue a run (and follow it when ``req.wait``); render both. Returns the exit code."""

    rt = _runtime(s)
    try:
        queued = start_run(rt, req, stdin=sys.stdin if req.manifest == "-" else None)
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
    if as_json:
        summary = {
            "run_id": queued.run_id,
            "total": queued.total,
            "queued": queued.queued,
            "skipped": queued.skipped,
            "invalid": queued.invalid,
        }
        click.echo(json.dumps(summary))
    else:
        _say(render_report(queued.report).splitlines()[-1])
        click.echo(queued.run_id)
    if not req.wait:
        return 0
    return _follow(rt, queued.run_id, max_failures=req.max_failures, as_json=as_json)


class _ProgressLine:
    """One progress line: rewritten in place on a terminal (and cleared at the end), printed plainly off one."""

    def __init__(self, run_id: str, *, quiet: bool) -> None:
        self.run_id = run_id
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.width = 0

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        info = p.info
        counts = " ".join(f"{k}={v}" for k, v in sorted(info.counts.items()))
        eta = "?" if p.eta_s is None else _hms(p.eta_s)
        line = (
            f"[{self.run_id}] {info.ndone}/{info.total} done ({counts or 'none yet'}) "
            f"{p.rows_per_s:.1f} rows/s ETA {eta}"
        )
        if self.tty:
            click.echo("\r" + line.ljust(self.width), err=True, nl=False)
            self.width = len(line)
        else:
            _say(line)

    def close(self) -> None:
        if self.tty and not self.quiet and self.width:
            click.echo("", err=True)


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _follow(rt: Runtime, run_id: str, *, max_failures: float = 0, as_json: bool = False) -> int:

    line = _ProgressLine(run_id, quiet=as_json)
    try:
        outcome = follow(rt, run_id, on_progress=line, max_failures=max_failures)
    finally:
        line.close()
    _render_outcome(outcome, as_json=as_json)
    return EXIT_CODES[outcome.kind]


def _render_outcome(outcome: RunOutcome, *, as_json: bool) -> None:
    info = outcome.info
    if as_json:
        doc = {
            "run_id": info.id,
            "status": info.status,
            "counts": info.counts,
            "results": outcome.results_uri,
            "stopped": outcome.stopped_reason,
        }
        click.echo(json.dumps(doc))
        return
    click.echo(f"results: {outcome.results_uri}")
    click.echo(f"outputs: {info.meta.get('output')}")
    if outcome.stopped_reason:
        _say(f"run stopped: {outcome.stopped_reason}")


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
    infos = [rt.runs.info(i) for i in ids]
    if as_json:
        docs = [
            {
                "run_id": i.id,
                "status": i.status,
                "total": i.total,
                "done": i.ndone,
                "counts": i.counts,
                "output": i.meta.get("output"),
                "results": i.meta.get("results_uri"),
                "stopped": i.meta.get("stopped_reason"),
            }
            for i in infos
        ]
        click.echo(json.dumps(docs, indent=2))
        return
    for i in infos:
        counts = " ".join(f"{k}={v}" for k, v in sorted(i.counts.items()))
        click.echo(f"{i.id}  {i.status:<10} {i.ndone}/{i.total}  {counts}")
        if i.meta.get("stopped_reason"):
            click.echo(f"    stopped: {i.meta['stopped_reason']}")
        if i.meta.get("results_uri"):
            click.echo(f"    results: {i.meta['results_uri']}")


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
    """Stop submitting RUN's rows: in-flight jobs finish; rows not yet submitted become `cancelled`."""

    rt = _runtime(_settings(ctx))
    _need_run(rt, run_id)
    n = cancel_run(rt, run_id)
    click.echo(f"{run_id}: cancelled; {n} queued row(s) marked cancelled; in-flight jobs will finish")


@cli.command()
@click.argument("run_id")
@click.option("--failed", is_flag=True, help="Re-run failed rows (the default when no flag is given).")
@click.option("--moderated", is_flag=True, help="Re-run moderated rows.")
@click.option("--cancelled", is_flag=True, help="Re-run cancelled rows.")
@click.option("--wait/--no-wait", default=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def retry(
    ctx: click.Context,
    run_id: str,
    failed: bool,
    moderated: bool,
    cancelled: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Run RUN's failed (and/or moderated, cancelled) rows again, into the same run and results."""

    statuses = [n for n, on in (("failed", failed), ("moderated", moderated), ("cancelled", cancelled)) if on]
    s = _settings(ctx)
    _need_key(s)  # rows go back to the gate of the current key
    rt = _runtime(s)
    _need_run(rt, run_id)
    n = retry_run(rt, run_id, statuses or ["failed"])
    _say(f"{run_id}: {n} row(s) queued again")
    if wait and n:
        sys.exit(_follow(rt, run_id, as_json=as_json))


@cli.command("follow")
@click.argument("run_id")
@click.option(
    "--max-failures",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Rows allowed to fail before exiting 1: a count, or a fraction when < 1.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def follow_command(ctx: click.Context, run_id: str, max_failures: float, as_json: bool) -> None:
    """Show RUN's progress until it ends (re-attach to a run started elsewhere)."""
    rt = _runtime(_settings(ctx))
    _need_run(rt, run_id)
    sys.exit(_follow(rt, run_id, max_failures=max_failures, as_json=as_json))


@cli.command()
@click.option("--queues", "-Q", default="kontext.submit,kontext.poll", show_default=True)
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
@click.pass_context
def worker(ctx: click.Context, queues: str, concurrency: int, loglevel: str, hostname: str | None) -> None:
    """Start a Celery worker of this app (threads pool) on the configured Redis."""
    from workers.app import configure  # noqa: PLC0415
    from workers.process import init_runtime  # noqa: PLC0415

    s = _settings(ctx)
    _need_key(s)
    app = configure(s)
    init_runtime(s)
    name = hostname or f"kontext@{socket.gethostname()}-{os.getpid()}"
    argv = ["worker", "-Q", queues, "-c", str(concurrency), "-P", "threads", "-l", loglevel, "-n", name]
    app.worker_main([*argv, "--without-gossip", "--without-mingle", "--without-heartbeat"])


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

    try:
        s = Settings.from_env(
            {k: v for k, v in os.environ.items() if k not in ("KONTEXT_API_BASE", "KONTEXT_REDIS_URL")}
        )
        manifest = demo_manifest()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    req = RunRequest(str(manifest), output, force=True, wait=True, max_failures=1.0)
    with _local(s, emulator=True, workers=n_workers, time_scale=time_scale) as s2:
        code = _submit_and_follow(s2, req, as_json=False)
    _say(f"demo finished: open {Path(output).resolve()}/results.csv")
    sys.exit(0 if code in (0, EXIT_FAILED_ROWS) else code)


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
