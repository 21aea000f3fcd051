"""``kontext-batch emulator``: serve the Kontext API emulator in the foreground.

Thin: parse the options into an :class:`EmulatorConfig`, call :func:`server.run`, print the URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from kontext_batch.emulator.config import (
    FAULT_KINDS,
    EmulatorConfig,
    LatencySpec,
    parse_fault,
    parse_key_value,
    parse_latency,
    parse_max_active,
)
from kontext_batch.emulator.server import run

__all__ = ["emulator_command"]

T = TypeVar("T")


def _parse_all(parser: Callable[[str], T], values: tuple[str, ...], param: str) -> list[T]:
    out = []
    for value in values:
        try:
            out.append(parser(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=param) from None
    return out


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="KONTEXT_EMULATOR_HOST", help="Address to bind.")
@click.option(
    "--port", default=8765, show_default=True, type=int, envvar="KONTEXT_EMULATOR_PORT", help="0 = any free port."
)
@click.option(
    "--api-key", "api_keys", multiple=True, metavar="KEY", help="Accepted key (repeat). None: any non-empty key."
)
@click.option(
    "--latency",
    multiple=True,
    metavar="SPEC",
    help="Task latency: SECONDS, lognormal:MEDIAN:SIGMA, or ENDPOINT=either (repeat). Default lognormal:4:0.3.",
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=float,
    help="Multiplies every duration (latency, URL expiry, stalls).",
)
@click.option(
    "--max-active",
    multiple=True,
    metavar="ENDPOINT=N",
    help="Active-task cap per key; total=N for all endpoints (repeat).",
)
@click.option(
    "--key-max-active",
    multiple=True,
    metavar="KEY=N",
    help="One key's active-task cap over all endpoints, instead of total=N (repeat for each key).",
)
@click.option("--credits", type=float, default=None, help="Credits per key (default: unlimited).")
@click.option(
    "--key-credits",
    multiple=True,
    metavar="KEY=N",
    help="One key's starting credits, instead of --credits (repeat for each key).",
)
@click.option(
    "--fault",
    multiple=True,
    metavar="KIND=RATE",
    help=f"Inject faults: {', '.join(FAULT_KINDS)}. accepted-lost creates and bills the task, then drops "
    "the connection without an answer.",
)
@click.option("--seed", type=int, default=None, help="Seed for latency, outcome and fault draws.")
@click.option(
    "--default-ratio",
    type=click.Choice(["1:1", "input"]),
    default="1:1",
    show_default=True,
    help="Output ratio when a request names none.",
)
@click.option(
    "--webhook-form", type=click.Choice(["bfl", "alt"]), default="bfl", show_default=True, help="Webhook payload shape."
)
@click.option(
    "--render",
    type=click.Choice(["full", "fast"]),
    default="full",
    show_default=True,
    help="Samples: full = each task's own edit of its inputs; fast = one plain image per size and format, "
    "rendered once and reused (about 1 ms of CPU per task, for load tests). Both are real images of the "
    "requested size and format.",
)
@click.option(
    "--no-host-swap", is_flag=True, help="polling_url keeps the submit host (no 127.0.0.1 <-> localhost swap)."
)
def emulator_command(
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    latency: tuple[str, ...],
    time_scale: float,
    max_active: tuple[str, ...],
    key_max_active: tuple[str, ...],
    credits: float | None,
    key_credits: tuple[str, ...],
    fault: tuple[str, ...],
    seed: int | None,
    default_ratio: str,
    webhook_form: str,
    render: str,
    no_host_swap: bool,
) -> None:
    """Serve an offline FLUX.1 Kontext API (BFL and reseller dialects) for tests, CI and demos."""
    latencies: dict[str, LatencySpec] = {"*": LatencySpec.lognormal(4.0, 0.3)}
    latencies.update(_parse_all(parse_latency, latency, "--latency"))
    caps = dict(_parse_all(parse_max_active, max_active, "--max-active"))
    total = caps.pop("total", 24)
    key_caps = _parse_all(lambda v: parse_key_value(v, "--key-max-active"), key_max_active, "--key-max-active")
    if any(n != int(n) or n < 1 for _, n in key_caps):
        raise click.BadParameter("N must be a whole number >= 1", param_hint="--key-max-active")
    key_balances = _parse_all(lambda v: parse_key_value(v, "--key-credits"), key_credits, "--key-credits")
    per_endpoint = {"flux-kontext-max": 6} | caps
    try:
        config = EmulatorConfig(
            api_keys=api_keys,
            latency=latencies,
            time_scale=time_scale,
            max_active=per_endpoint,
            max_active_total=total,
            max_active_total_by_key={k: int(n) for k, n in key_caps},
            credits=credits,
            credits_by_key=dict(key_balances),
            faults=dict(_parse_all(parse_fault, fault, "--fault")),
            seed=seed,
            default_ratio="input" if default_ratio == "input" else "1:1",
            poll_host_swap=not no_host_swap,
            webhook_form="alt" if webhook_form == "alt" else "bfl",
            render="fast" if render == "fast" else "full",
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        run(config, host, port, on_ready=lambda url: click.echo(f"emulator ready at {url}", nl=True))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
