"""Where the Redis is: a plain ``redis://`` / ``rediss://`` URL, or a Sentinel group.

``KONTEXT_REDIS_URL=redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]``
names the sentinels and the master they watch (``rediss+sentinel://`` for TLS, to the sentinels and
the data nodes alike, with the same certificate settings as ``rediss://``). The user and password
are the data nodes' (the master's and its replicas', which share them); the sentinels are asked
without credentials, as kombu's Sentinel transport does, so the state connection and the Celery
broker reach the same nodes the same way.

A Sentinel client asks the sentinels for the master at every new connection and drops its
connections when the old master answers as a replica (``READONLY``), so after a failover every
process carries on against the new master without a restart: our clients retry connection errors
for about 30 s (:func:`kontext_batch.runtime.connect_redis`), longer than a failover takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

import redis
from redis.sentinel import Sentinel

from kontext_batch.errors import ConfigError

__all__ = ["SENTINEL_SCHEMES", "SentinelGroup", "display", "is_tls", "make_client", "parse_sentinel", "scheme_of"]

SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
_DEFAULT_SENTINEL_PORT: Final = 26379
_URL: Final = re.compile(r"^(?P<scheme>[a-z+]+)://(?:(?P<userinfo>[^@/]*)@)?(?P<hosts>[^/]*)(?P<path>/.*)?$")


@dataclass(frozen=True)
class SentinelGroup:
    """The parts of a ``redis+sentinel://`` URL. ``repr`` leaves the password out."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None
    tls: bool

    def __repr__(self) -> str:
        return f"SentinelGroup(sentinels={self.sentinels!r}, master={self.master!r}, db={self.db}, tls={self.tls})"

    def broker_url(self) -> str:
        """The same group as kombu's Sentinel transport spells it (one ``sentinel://`` per sentinel)."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_tls(url: str) -> bool:
    return scheme_of(url) in ("rediss", "rediss+sentinel")


def parse_sentinel(url: str) -> SentinelGroup | None:
    """The Sentinel group a URL names, or None for a plain Redis URL. ConfigError names what is wrong."""
    scheme = scheme_of(url)
    if scheme not in SENTINEL_SCHEMES:
        return None
    form = "redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"
    m = _URL.match(url)
    if m is None:
        raise ConfigError(f"KONTEXT_REDIS_URL is not of the form {form}")
    sentinels: list[tuple[str, int]] = []
    for part in m["hosts"].split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        if not host:
            raise ConfigError(f"KONTEXT_REDIS_URL names an empty sentinel address ({form})")
        try:
            sentinels.append((host.strip("[]"), int(port) if port else _DEFAULT_SENTINEL_PORT))
        except ValueError:
            raise ConfigError(f"KONTEXT_REDIS_URL: sentinel port {port!r} is not a number ({form})") from None
    path = [p for p in (m["path"] or "").split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(f"KONTEXT_REDIS_URL names no master after the sentinels ({form})")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ConfigError(f"KONTEXT_REDIS_URL: database {path[1]!r} is not a number ({form})") from None
    username = password = None
    if m["userinfo"]:
        user, sep, pw = m["userinfo"].partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    return SentinelGroup(tuple(sentinels), unquote(path[0]), db, username, password, scheme == "rediss+sentinel")


def display(url: str) -> str:
    """The URL without its password, for messages and logs."""
    m = _URL.match(url)
    if m is None or not m["userinfo"] or ":" not in m["userinfo"]:
        return url
    user = m["userinfo"].split(":", 1)[0]
    return f"{m['scheme']}://{user}:***@{m['hosts']}{m['path'] or ''}"


def make_client(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` with redis-py ``options``; for a Sentinel group, one that always talks
    to its current master."""
    group = parse_sentinel(url)
    if group is None:
        return redis.Redis.from_url(url, **options)
    # Timeouts and TLS apply to the sentinels too; credentials, retries and pool options do not.
    per_sentinel = {k: v for k, v in options.items() if k.startswith("socket_") or k.startswith("ssl_") or k == "ssl"}
    if group.tls:
        options = {**options, "ssl": True}
        per_sentinel["ssl"] = True
    sentinel = Sentinel(list(group.sentinels), sentinel_kwargs=per_sentinel)
    client: redis.Redis = sentinel.master_for(
        group.master, db=group.db, username=group.username, password=group.password, **options
    )
    return client
