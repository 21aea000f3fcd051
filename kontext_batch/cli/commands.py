"""The click group and its commands: each parses its options, calls :mod:`kontext_batch.run` (or the
library) and renders with :mod:`.render` or :mod:`.watch`; :func:`main` is the console script.

Exit codes are :mod:`kontext_batch.cli.exits`.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Final

import click
from redis.exceptions import RedisError

from kontext_batch.cli.context import (
    command_settings,
    naming,
    need_key,
    need_run,
    runtime,
    say,
    settings_used,
    trusted,
)
from kontext_batch.cli.exits import EXIT_FAILED_ROWS, EXIT_STOPPED, EXIT_USAGE, Refused, exit_help
from kontext_batch.cli.options import DELIMITER, INPUTS_ROOT, MAX_FAILURES, MODEL, SHEET, TIMEOUT, parse_duration
from kontext_batch.cli.render import report_doc, status_lines, view_doc
from kontext_batch.cli.serve import webhooks_command, worker
from kontext_batch.cli.watch import follow_run, private_stack, submit_and_follow
from kontext_batch.coord.connection import explain
from kontext_batch.errors import ConfigError, KontextBatchError, ManifestError, RunStateLost
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.manifest.images import ImageCache
from kontext_batch.manifest.validate import render_report, validate_manifest
from kontext_batch.run.control import cancel_run, gone_line, prune_runs, refuse_gone, retry_run
from kontext_batch.run.enqueue import RunRequest, done_rows
from kontext_batch.run.local import demo_manifest
from kontext_batch.run.view import view_run
from kontext_batch.settings import Settings
from kontext_batch.steps.gallery import ids_from_file, put_gallery
from kontext_batch.steps.presigned import put_presigned_gallery
from kontext_batch.steps.results import render_results

__all__ = ["main"]

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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=exit_help())
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
@DELIMITER
@SHEET
@click.option(
    "--output",
    "-o",
    envvar="KONTEXT_OUTPUT",
    show_envvar=True,
    default=None,
    help="The output a run would write to: rows whose output is there already (as `run` decides) are not priced.",
)
@click.option("--force", is_flag=True, help="With --output: price every row, as `run --force` runs them.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def validate(
    ctx: click.Context,
    manifest: str,
    model: str,
    no_images: bool,
    inputs_root: Path | None,
    delimiter: str | None,
    sheet: str | None,
    output: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Check every row of MANIFEST (`-`: stdin) and print the run's cost. Exit 0 only when every row is valid."""

    cache = ImageCache()
    try:
        done = done_rows(output, cache) if output and not force else None
        report = validate_manifest(
            manifest,
            default_model=model,
            check_images=not no_images,
            fetch=FetchPolicy.from_settings(command_settings(ctx)),
            inputs_root=inputs_root,
            delimiter=delimiter,
            sheet=sheet,
            cache=cache,
            done=done,
        )
    except ManifestError as exc:  # the file as a whole; invalid rows are in the report
        raise Refused(naming(manifest, str(exc))) from None
    except OSError as exc:
        raise Refused(f"cannot read manifest {manifest}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(report_doc(report), indent=2))
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
@DELIMITER
@SHEET
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
    delimiter: str | None,
    sheet: str | None,
    timeout_s: float | None,
    local: bool,
    emulator: bool,
    n_workers: int,
    as_json: bool,
) -> None:
    """Validate MANIFEST (`-`: stdin), register a run, and queue every row for the workers."""
    s = command_settings(ctx)
    wait = wait or local or emulator
    req = RunRequest(
        manifest, output, model, skip_invalid, force, wait, max_failures, budget, inputs_root, delimiter, sheet
    )
    if local or emulator:
        with private_stack(s, emulator=emulator, workers=n_workers) as s2:
            sys.exit(submit_and_follow(s2, req, as_json=as_json, timeout_s=timeout_s, detach=False))
    need_key(s)
    sys.exit(submit_and_follow(s, req, as_json=as_json, timeout_s=timeout_s))


@cli.command()
@click.argument("run_id", required=False)
@click.option("--limit", default=10, show_default=True, help="Runs to list when no RUN is given.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, run_id: str | None, limit: int, as_json: bool) -> None:
    """Show one run's progress, or list recent runs."""
    rt = runtime(command_settings(ctx))
    if run_id and (line := gone_line(rt, run_id)):
        click.echo(line)
        return
    if run_id and not rt.runs.known(run_id):  # a listed run whose metadata went shows as lost
        need_run(rt, run_id)
    # A run whose keys just expired is listed until the next sweep: not as lost.
    ids = [run_id] if run_id else [i for i in rt.runs.list_runs(limit) if not rt.runs.gone(i)]
    views = [view_run(rt, i) for i in ids]
    if as_json:
        click.echo(json.dumps([view_doc(v) for v in views], indent=2))
        return
    if not views:
        click.echo(f"no runs in the Redis at {rt.settings.redis_display}")
    for v in views:
        for line in status_lines(v):
            click.echo(line)


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
    """Print a run's own results CSV, read from Redis: what the run's own file in the output,
    runs/RUN_ID/results.csv, holds (rows not final yet show status `pending`). The output's
    results.csv holds the newest line of every row, from whichever run. Exit 3, writing nothing,
    for a run whose state Redis lost."""

    rt = runtime(command_settings(ctx))
    if not rt.runs.known(run_id):
        need_run(rt, run_id)
    try:
        if out:
            # Beside it first: a run lost while it is read out leaves no file that looks complete.
            part = Path(f"{out}.part")
            try:
                with part.open("w", newline="", encoding="utf-8") as fh:
                    render_results(rt.runs, run_id, fh)
                part.replace(out)
            except OSError as exc:
                raise Refused(f"cannot write {out}: {_why(exc)}") from None
            finally:
                part.unlink(missing_ok=True)
            say(out)
        else:
            render_results(rt.runs, run_id, sys.stdout)
    except RunStateLost as exc:
        say(f"error: {exc}; results not written")
        sys.exit(EXIT_STOPPED)


@cli.command()
@click.argument("run_id")
@click.pass_context
def cancel(ctx: click.Context, run_id: str) -> None:
    """Stop RUN: rows not sent to the API become `cancelled`; running API tasks finish (if a worker
    holds their key); the run ends in any state."""

    rt = runtime(command_settings(ctx))
    need_run(rt, run_id)
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
    try:
        ids = ids_from_file(Path(ids_file)) if ids_file is not None else None
    except (OSError, UnicodeDecodeError) as exc:
        raise Refused(f"cannot read --ids {ids_file}: {_why(exc)}") from None
    rt = trusted(runtime(command_settings(ctx)))
    refuse_gone(rt, run_id)
    need_run(rt, run_id)
    n = retry_run(rt, run_id, statuses, ids=ids, ignore_unknown=ignore_unknown, budget=budget)
    say(f"{run_id}: {n} row(s) queued again")
    if wait and n:
        sys.exit(follow_run(rt, run_id, as_json=as_json))


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
    rt = runtime(command_settings(ctx))
    need_run(rt, run_id)
    sys.exit(follow_run(rt, run_id, max_failures=max_failures, as_json=as_json, timeout_s=timeout_s))


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
    say(
        "demo: the Kontext API emulator stands in for BFL's API; its output images are placeholders "
        "(your input tinted and labelled, at the requested size and format), not real edits"
    )
    req = RunRequest(str(manifest), output, force=True, wait=True, max_failures=1.0)
    with private_stack(s, emulator=True, workers=n_workers, time_scale=time_scale) as s2:
        code = submit_and_follow(s2, req, as_json=False, detach=False)
    folder = Path(output).resolve()
    say(f"demo finished: results {folder}/results.csv")
    say(f"review the edits: open {folder}/gallery.html (the images are the emulator's placeholders)")
    sys.exit(0 if code in (0, EXIT_FAILED_ROWS) else code)


cli.add_command(worker)
cli.add_command(webhooks_command)


@cli.command()
@click.option(
    "--older-than",
    default=None,
    help="Remove runs that ended at least this long ago, e.g. 7d, 36h, 90m (default: KONTEXT_RUN_RETENTION_S).",
)
@click.pass_context
def prune(ctx: click.Context, older_than: str | None) -> None:
    """Remove finished runs' state from Redis now, leaving each a tombstone that says where its
    results.csv is. Runs not finished are never touched."""
    settings = command_settings(ctx)
    age_s = parse_duration(older_than) if older_than is not None else settings.run_retention_s
    rt = runtime(settings)
    n_runs, n_keys = prune_runs(rt, age_s)
    click.echo(f"pruned {n_runs} run(s): {n_keys} key(s) removed")


@cli.command("gallery")
@click.argument("run_id")
@click.option(
    "--presign",
    metavar="DURATION",
    default=None,
    help="For a private bucket: write gallery-presigned.html, every image link signed for DURATION "
    "(e.g. 12h, 7d; at most 7d), and print the page's own signed link. s3:// and az:// outputs only.",
)
@click.pass_context
def gallery_command(ctx: click.Context, run_id: str, presign: str | None) -> None:
    """Write the run's own review page (runs/RUN_ID/gallery.html, beside its own results.csv) in the
    output store; print where. The output's gallery.html is rewritten at each run's end."""
    expires_s = parse_duration(presign) if presign is not None else None
    rt = runtime(command_settings(ctx))
    need_run(rt, run_id)
    store = rt.store(rt.runs.meta(run_id)["output"])
    if expires_s is None:
        click.echo(put_gallery(rt.runs, run_id, store))
    else:
        click.echo(put_presigned_gallery(rt.runs, run_id, store, expires_s))


def _why(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return exc.strerror or str(exc)


def _redis_errors() -> tuple[type[Exception], ...]:
    """What a Redis lost after the start-up check raises: RedisError, and kombu's OperationalError
    once Celery is loaded. A ``run`` whose workers send its first wave never loads it (~10 ms)."""
    kombu_errors = sys.modules.get("kombu.exceptions")
    return (RedisError,) if kombu_errors is None else (RedisError, kombu_errors.OperationalError)


def main() -> None:
    """The console script: the group, with run-level errors as one ``error:`` line and exit 2."""
    obj: dict[str, object] = {}  # the group's context object: the settings the command used land here
    try:
        cli(standalone_mode=True, obj=obj)
    except KontextBatchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except _redis_errors() as exc:
        # Redis went away after the start-up check (mid-follow, say): the same one line, no traceback,
        # naming the Redis the command used (--redis-url counts, and --local's own).
        click.echo(f"error: {explain(exc, settings_used(obj))}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        # The interpreter's exit collects the whole heap (Celery's modules alone: ~250 ms here), after
        # the summary, while the user waits for the prompt. Frozen, its collections skip it; atexit
        # handlers, flushes, thread joins and each object's own finalizer still run as usual.
        gc.freeze()
