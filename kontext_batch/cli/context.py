"""What every command gets from the group: its settings, a runtime on a checked Redis (for those
that queue rows, a Redis trusted with runs), and its preconditions (a key, a known run), each failing
as one line rather than a traceback; and, for :func:`~kontext_batch.cli.commands.main`'s error
lines, the settings a command used.
"""

from __future__ import annotations

import os

import click

from kontext_batch.cli.exits import Refused
from kontext_batch.coord.connection import check_redis
from kontext_batch.coord.protocol import refuse_other_protocols
from kontext_batch.errors import ConfigError
from kontext_batch.run.control import gone_line
from kontext_batch.runtime import Runtime
from kontext_batch.settings import Settings

__all__ = ["command_settings", "naming", "need_key", "need_run", "runtime", "say", "settings_used", "trusted"]


def command_settings(ctx: click.Context) -> Settings:
    """The environment's settings, with the group's ``--redis-url`` / ``--api-base`` over them."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        # The options go in before the environment is read: a bad KONTEXT_API_BASE that --api-base
        # overrides must not fail the command.
        given = {"KONTEXT_REDIS_URL": obj.get("redis_url"), "KONTEXT_API_BASE": obj.get("api_base")}
        environ = {**os.environ, **{name: value for name, value in given.items() if value}}
        try:
            obj["settings"] = Settings.from_env(environ)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    s: Settings = obj["settings"]
    return s


def trusted(rt: Runtime) -> Runtime:
    """``rt`` once its Redis is one to trust with runs: an evicting one is refused (ConfigError, exit 2),
    and so are live workers of its keys that speak another protocol (a rollout half done)."""
    from kontext_batch.workers.trust import trust_redis  # noqa: PLC0415 - Celery loads only for commands that need it

    trust_redis(rt, say=say)
    refuse_other_protocols(rt.holders.speakers(rt.held))
    return rt


def runtime(settings: Settings) -> Runtime:
    """The command's runtime, once one quick PING says the Redis is usable.

    Without the check, a Redis that is down or refuses the password costs ~30 s of the client's
    reconnect retries and ends in a traceback; with it, one line (RedisUnavailable) and exit 2.
    The runtime makes an API client only for a key it is asked to use, so commands that only read
    or change run state need no key.
    """
    from kontext_batch.workers.sender import sender_runtime  # noqa: PLC0415 - the worker package only for commands that need it

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        # Not always the group's settings: --local and demo talk to a Redis of their own.
        ctx.ensure_object(dict)["runtime_settings"] = settings
    check_redis(settings)
    return sender_runtime(settings)


def settings_used(obj: dict[str, object]) -> Settings:
    """The settings the command used, read from its context's ``obj``: those it made its runtime with,
    else the group's (``--redis-url`` and ``--api-base`` over the environment); when it made neither,
    the environment's, or the defaults if those do not parse."""
    for key in ("runtime_settings", "settings"):
        s = obj.get(key)
        if isinstance(s, Settings):
            return s
    try:
        return Settings.from_env()
    except ConfigError:
        return Settings()


def need_key(s: Settings) -> None:
    if not s.held_keys:
        raise click.UsageError(
            "neither KONTEXT_API_KEY nor KONTEXT_API_KEYS is set "
            "(use --emulator or `kontext-batch demo` to try offline)"
        )


def need_run(rt: Runtime, run_id: str) -> None:
    """Refused (exit 2) unless Redis holds the run: for one gone from it (pruned or expired), saying
    so and where its results.csv is, as ``status`` does; else that there is no such run."""
    if rt.runs.exists(run_id):
        return
    if line := gone_line(rt, run_id):
        raise Refused(line)
    raise Refused(f"no run {run_id!r} in the Redis at {rt.settings.redis_display}")


def naming(path: str, message: str) -> str:
    """``message`` about the file ``path``, naming it unless it already does."""
    return message if path in message else f"{path}: {message}"


def say(msg: str) -> None:
    click.echo(msg, err=True)
