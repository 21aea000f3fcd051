"""How we reach Redis: TLS options from settings, a quick reachability check, and one-line causes.

redis-py reports a refused connection, a wrong password and a failed TLS handshake as a handful of
exception types whose messages were written for its own developers (``HELLO must be called with
the client already authenticated...``). :func:`explain` turns any of them into
:class:`~kontext_batch.errors.RedisUnavailable`, whose message names the Redis (without its
password) and the cause in words an operator can act on.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from redis import exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from kontext_batch.coord.address import is_tls, make_client, parse_sentinel
from kontext_batch.errors import ConfigError, RedisUnavailable
from kontext_batch.settings import Settings

__all__ = ["CHECK_TIMEOUT_S", "check_redis", "explain", "tls_options"]

#: Connect and read timeout of the start-up check: long enough for a loaded server, short enough
#: that an operator does not wait half a minute to learn that nothing listens.
CHECK_TIMEOUT_S: Final = 3.0


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py connection options for a ``rediss://`` URL (also kombu's ``broker_use_ssl``); ``{}`` else.

    Raises ConfigError when a certificate file is set for a plain ``redis://`` URL (the operator
    believes the connection is encrypted; it would not be) or when a file does not exist.
    """
    files = {
        "KONTEXT_REDIS_CA": settings.redis_ca,
        "KONTEXT_REDIS_CERT": settings.redis_cert,
        "KONTEXT_REDIS_KEY": settings.redis_key,
    }
    if not is_tls(settings.effective_redis_url):
        named = [name for name, value in files.items() if value]
        if named:
            raise ConfigError(
                f"{', '.join(named)} is set but KONTEXT_REDIS_URL is not rediss:// or rediss+sentinel:// (TLS)"
            )
        return {}
    for name, value in files.items():
        if value and not Path(value).is_file():
            raise ConfigError(f"{name}: no such file {value!r}")
    if bool(settings.redis_cert) != bool(settings.redis_key):
        raise ConfigError("KONTEXT_REDIS_CERT and KONTEXT_REDIS_KEY go together: set both or neither")
    # Verification is always on: kombu's default for rediss:// without options is CERT_NONE.
    opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca:
        opts["ssl_ca_certs"] = settings.redis_ca
    if settings.redis_cert:
        opts["ssl_certfile"] = settings.redis_cert
        opts["ssl_keyfile"] = settings.redis_key
    return opts


def check_redis(settings: Settings, *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """One PING, without retries. Raises RedisUnavailable (or ConfigError for bad TLS settings)."""
    client = make_client(
        settings.effective_redis_url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=0),
        **tls_options(settings),
    )
    try:
        client.ping()
    except (rx.RedisError, OSError) as exc:
        raise explain(exc, settings) from None
    finally:
        client.close()


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _find(chain: list[BaseException], kind: type[BaseException]) -> BaseException | None:
    return next((e for e in chain if isinstance(e, kind)), None)


def explain(exc: BaseException, settings: Settings) -> RedisUnavailable:  # noqa: C901, PLR0911 - one sentence per way a Redis connection fails
    """The one-line :class:`RedisUnavailable` for any error met while talking to the settings' Redis."""
    where = settings.redis_display
    url = settings.effective_redis_url
    tls = is_tls(url)
    group = parse_sentinel(url)
    has_password = (group.password if group else urlsplit(url).password) is not None
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()

    def out(message: str) -> RedisUnavailable:
        return RedisUnavailable(message, redis=where)

    if group is not None and _find(chain, MasterNotFoundError) is not None:
        return out(
            f"no sentinel at {where} answered with a master named {group.master!r}: "
            "check the sentinel addresses and the master name in KONTEXT_REDIS_URL"
        )

    if _find(chain, rx.AuthenticationError) is not None:
        if has_password:
            return out(
                f"Redis at {where} refused the password (WRONGPASS): check the user and password in KONTEXT_REDIS_URL"
            )
        return out(f"Redis at {where} requires a password (NOAUTH): put it in KONTEXT_REDIS_URL")
    if _find(chain, rx.BusyLoadingError) is not None:
        return out(f"Redis at {where} is loading its data set; try again shortly")
    if _find(chain, rx.NoPermissionError) is not None:
        return out(f"Redis at {where} refused a command to this ACL user (NOPERM): {exc}")
    verify = _find(chain, ssl.SSLCertVerificationError)
    if verify is not None:
        reason = getattr(verify, "verify_message", "") or "certificate verify failed"
        return out(
            f"TLS handshake with Redis at {where} failed: certificate verify failed ({reason}); "
            "set KONTEXT_REDIS_CA to the CA that signed the server's certificate"
        )
    if tls and "handshake" in text:
        return out(f"TLS handshake with Redis at {where} failed: no TLS answer (is it a plain redis:// server?)")
    sslerr = _find(chain, ssl.SSLError)
    if sslerr is not None:
        reason = getattr(sslerr, "reason", None) or str(sslerr)
        hint = " (the server may require a client certificate: KONTEXT_REDIS_CERT and KONTEXT_REDIS_KEY)"
        return out(f"TLS handshake with Redis at {where} failed: {reason}{hint if tls else ''}")
    if _find(chain, ConnectionRefusedError) is not None:
        return out(f"cannot reach Redis at {where}: connection refused")
    if _find(chain, socket.gaierror) is not None:
        return out(f"cannot reach Redis at {where}: unknown host")
    if _find(chain, ConnectionResetError) is not None or "closed by server" in text:
        hint = "" if tls else " (if it only speaks TLS, use a rediss:// URL)"
        return out(f"Redis at {where} closed the connection{hint}")
    if _find(chain, rx.TimeoutError) is not None or _find(chain, TimeoutError) is not None:
        return out(f"cannot reach Redis at {where}: timed out")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return out(f"Redis at {where} failed: {first}")
