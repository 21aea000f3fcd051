"""The ``kontext-batch`` command: parse, call a library function, render. Nothing else lives here.

Exit codes: 0 every row succeeded (or was skipped); 1 rows failed beyond the allowed threshold;
2 bad usage, settings or manifest (nothing was queued); 3 the run stopped (out of credits, key refused,
or cancelled); 130 interrupted.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import click

from kontext_batch.errors import ConfigError, KontextBatchError, ManifestError
from kontext_batch.settings import Settings

__all__ = ["main"]

EXIT_FAILED_ROWS = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3

_LAZY = {
    "emulator": ("kontext_batch.emulator.cli", "emulator_command"),
    "demo": ("kontext_batch.local", "demo_command"),
}


class _Group(click.Group):
    """Loads heavy subcommands (the emulator pulls in FastAPI) only when they are called."""

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


def _runtime(ctx: click.Context, settings: Settings | None = None) -> Any:
    from kontext_batch.runtime import Runtime  # noqa: PLC0415 - keeps `--help` fast
    from workers.app import CelerySchedule, configure  # noqa: PLC0415

    s = settings or _settings(ctx)
    return Runtime.create(s, CelerySchedule(configure(s)))


def _need_key(s: Settings) -> None:
    if not s.api_key:
        raise click.UsageError("KONTEXT_API_KEY is not set (use --emulator or `kontext-batch demo` to try offline)")


def _need_run(rt: Any, run_id: str) -> None:
    if not rt.runs.exists(run_id):
        raise click.ClickException(f"no run {run_id!r} in the Redis at {rt.settings.redis_display}")


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
    """Check every row of MANIFEST and print the run's cost. Exit 0 only when every row is valid."""
    from kontext_batch.enqueue import spooled_manifest  # noqa: PLC0415
    from kontext_batch.manifest.validate import render_report, validate_manifest  # noqa: PLC0415

    try:
        with spooled_manifest(manifest) as path:
            report = validate_manifest(path, default_model=model, check_images=not no_images)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot read manifest {manifest}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "rows_total": report.rows_total,
                    "rows_valid": report.rows_valid,
                    "errors_total": report.errors_total,
                    "errors": [{"row": e.row, "field": e.field, "message": e.msg} for e in report.errors],
                    "per_endpoint": report.per_endpoint,
                    "cost_credits": report.cost_credits,
                    "cost_usd": report.cost_usd,
                },
                indent=2,
            )
        )
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
    """Validate MANIFEST, register a run, and queue every row for the workers."""
    s = _settings(ctx)
    req = RunRequest(manifest, output, model, skip_invalid, force, wait, max_failures, as_json)
    if local or emulator:
        from kontext_batch.local import run_local  # noqa: PLC0415

        sys.exit(run_local(s, req, emulator=emulator, workers=n_workers))
    _need_key(s)
    sys.exit(submit_and_follow(s, req))


@dataclass(frozen=True)
class RunRequest:
    """What ``run`` was asked to do, handed as one value to ``--local`` and ``demo`` too."""

    manifest: str
    output: str
    model: str = "pro"
    skip_invalid: bool = False
    force: bool = False
    wait: bool = False
    max_failures: float = 0
    as_json: bool = False


def submit_and_follow(s: Settings, req: RunRequest) -> int:
    """Queue a run (and follow it with ``wait``). Returns the exit code. Used by ``run`` and ``--local``."""
    from kontext_batch.enqueue import spooled_manifest, start_run  # noqa: PLC0415
    from kontext_batch.manifest.validate import render_report  # noqa: PLC0415
    from kontext_batch.runtime import Runtime  # noqa: PLC0415
    from workers.app import CelerySchedule, configure  # noqa: PLC0415

    rt = Runtime.create(s, CelerySchedule(configure(s)))
    try:
        with spooled_manifest(req.manifest) as path:
            rep = start_run(
                rt, path, output=req.output, default_model=req.model, skip_invalid=req.skip_invalid, force=req.force
            )
    except ManifestError as exc:
        click.echo(f"error: {len(exc.errors)} invalid row(s); nothing was queued.", err=True)
        for e in exc.errors[:50]:
            click.echo(f"  {e}", err=True)
        if len(exc.errors) > 50:
            click.echo(f"  ... and {len(exc.errors) - 50} more (see `kontext-batch validate`)", err=True)
        return EXIT_USAGE
    except KontextBatchError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except OSError as exc:
        click.echo(f"error: cannot read manifest {req.manifest}: {exc.strerror or exc}", err=True)
        return EXIT_USAGE
    if rep.validation is not None and not req.as_json:
        click.echo(render_report(rep.validation).splitlines()[-1], err=True)
    click.echo(
        rep.run_id
        if not req.as_json
        else json.dumps(
            {
                "run_id": rep.run_id,
                "total": rep.total,
                "queued": rep.queued,
                "skipped": rep.skipped,
                "invalid": rep.invalid,
            }
        )
    )
    if not req.wait:
        return 0
    return follow(rt, rep.run_id, max_failures=req.max_failures, as_json=req.as_json)


def follow(rt: Any, run_id: str, *, max_failures: float = 0, as_json: bool = False, interval_s: float = 1.0) -> int:
    """Show progress until the run is final, then report where the results are. Returns the exit code."""
    start = time.monotonic()
    first_done: int | None = None
    tty = sys.stderr.isatty()
    while True:
        info = rt.runs.info(run_id)
        if first_done is None:
            first_done = info.ndone
        elapsed = time.monotonic() - start
        rate = (info.ndone - first_done) / elapsed if elapsed > 0 else 0.0
        left = info.total - info.ndone
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        counts = " ".join(f"{k}={v}" for k, v in sorted(info.counts.items()))
        line = f"[{run_id}] {info.ndone}/{info.total} done ({counts or 'none yet'}) {rate:.1f} rows/s ETA {eta}"
        if not as_json:
            click.echo(("\r" + line) if tty else line, err=True, nl=not tty)
        if info.finished:
            break
        time.sleep(interval_s)
    if tty and not as_json:
        click.echo("", err=True)
    info = rt.runs.info(run_id)
    bad = sum(v for k, v in info.counts.items() if k not in ("succeeded", "skipped"))
    allowed = max_failures * info.total if 0 < max_failures < 1 else max_failures
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run_id": run_id,
                    "status": info.status,
                    "counts": info.counts,
                    "results": info.meta.get("results_uri"),
                    "stopped": info.meta.get("stopped_reason"),
                }
            )
        )
    else:
        click.echo(f"results: {info.meta.get('results_uri')}")
        click.echo(f"outputs: {info.meta.get('output')}")
        if info.meta.get("stopped_reason"):
            click.echo(f"run stopped: {info.meta['stopped_reason']}", err=True)
    if info.meta.get("stopped") or info.status == "cancelled":
        return EXIT_STOPPED
    return EXIT_FAILED_ROWS if bad > allowed else 0


@cli.command()
@click.argument("run_id", required=False)
@click.option("--limit", default=10, show_default=True, help="Runs to list when no RUN is given.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, run_id: str | None, limit: int, as_json: bool) -> None:
    """Show one run's progress, or list recent runs."""
    rt = _runtime(ctx)
    ids = [run_id] if run_id else rt.runs.list_runs(limit)
    if run_id:
        _need_run(rt, run_id)
    infos = [rt.runs.info(i) for i in ids]
    if as_json:
        click.echo(
            json.dumps(
                [
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
                ],
                indent=2,
            )
        )
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
    from kontext_batch.results import render_results  # noqa: PLC0415

    rt = _runtime(ctx)
    _need_run(rt, run_id)
    if out:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            render_results(rt.runs, run_id, fh)
        click.echo(out, err=True)
    else:
        render_results(rt.runs, run_id, sys.stdout)


@cli.command()
@click.argument("run_id")
@click.pass_context
def cancel(ctx: click.Context, run_id: str) -> None:
    """Stop submitting RUN's rows: in-flight jobs finish; rows not yet submitted become `cancelled`."""
    from kontext_batch.control import cancel_run  # noqa: PLC0415

    rt = _runtime(ctx)
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
    from kontext_batch.control import retry_run  # noqa: PLC0415

    statuses = [n for n, on in (("failed", failed), ("moderated", moderated), ("cancelled", cancelled)) if on]
    rt = _runtime(ctx)
    _need_run(rt, run_id)
    n = retry_run(rt, run_id, statuses or ["failed"])
    click.echo(f"{run_id}: {n} row(s) queued again", err=True)
    if wait and n:
        sys.exit(follow(rt, run_id, as_json=as_json))


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
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from workers.app import configure  # noqa: PLC0415
    from workers.process import init_runtime  # noqa: PLC0415

    s = _settings(ctx)
    _need_key(s)
    app = configure(s)
    init_runtime(s)
    name = hostname or f"kontext@{socket.gethostname()}-{os.getpid()}"
    app.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            "threads",
            "-l",
            loglevel,
            "-n",
            name,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KontextBatchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
