"""The commands that serve until stopped: a Celery worker (``worker``) and the webhook receiver
(``webhooks``). Each imports what it serves (Celery's worker, an HTTP server) only when it runs.
"""

from __future__ import annotations

import os
import socket
import threading

import click

from kontext_batch.cli.context import command_settings, need_key, runtime, say

__all__ = ["webhooks_command", "worker"]


@click.command()
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

    s = command_settings(ctx)
    need_key(s)
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


@click.command("webhooks")
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

    rt = runtime(command_settings(ctx))
    with WebhookReceiver(rt, port, host) as receiver:
        say(f"receiving webhooks on http://{host}:{receiver.port}/ (Ctrl-C to stop)")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            say("stopped")
