"""Typed settings, read once from the environment at start-up and passed down.

=============================  ==================================  ===============================
variable                       meaning                             default
=============================  ==================================  ===============================
KONTEXT_API_KEY                API key (x-key, or Bearer)          (none: required to run)
KONTEXT_API_KEYS               more keys: a pool (list or file)    (none)
KONTEXT_BUDGET                 credits a run may spend             (none: no limit)
KONTEXT_API_BASE               global | eu | us | any http(s) URL  global (https://api.bfl.ai)
KONTEXT_PROVIDER               bfl | reseller                      bfl
KONTEXT_REDIS_URL              broker and run state                (embedded Redis for demo/--local;
                                                                   else redis://127.0.0.1:6379/0)
KONTEXT_REDIS_CA               CA bundle for a rediss:// URL       (system trust store)
KONTEXT_REDIS_CERT             client certificate (rediss://)      (none)
KONTEXT_REDIS_KEY              its private key                     (none)
KONTEXT_OUTPUT                 output store URL or folder          ./output
KONTEXT_MODEL                  default model for rows without one  pro
KONTEXT_MAX_ACTIVE             active tasks per key, all models    24
KONTEXT_MAX_ACTIVE_MODELS      per-endpoint caps, "ep=N,ep=N"      flux-kontext-max=6
KONTEXT_SUBMITS_PER_S          global submit rate (0 = no limit)   0
KONTEXT_HTTP_TIMEOUT_S         per-request HTTP timeout            30
KONTEXT_MAX_ATTEMPTS           attempts per API call / row step    6
KONTEXT_RETRY_BASE_S           first backoff, doubled each time    0.5
KONTEXT_RETRY_MAX_S            backoff ceiling                     30
KONTEXT_LEASE_S                slot lease safety net (leak guard)  90
KONTEXT_STEP_GRACE_S           a due step's message late by this   5
                               much is sent again
KONTEXT_TASK_DEADLINE_S        least time an API task may take     300
                               (5 x the p95 latency seen if more)
KONTEXT_STALL_WARN_S           --wait warns after this long with   300
                               no row finishing
KONTEXT_WEBHOOK_URL            public URL of the webhook receiver  (none: poll every row)
KONTEXT_TASK_EVENTS            Celery task events (for Flower)     0
KONTEXT_PROGRESS_EVERY_S       off a terminal, --wait/follow print 30
                               a progress line this often
KONTEXT_POLL_FIRST_S           first poll before any latency seen  0.5
KONTEXT_POLL_MIN_S             shortest poll interval              0.25
KONTEXT_POLL_MAX_S             longest poll interval               10
KONTEXT_RESUBMIT_EXPIRED       resubmit a row whose sample expired 0
KONTEXT_ALLOW_PRIVATE_URLS     fetch URLs on loopback/private/     0
                               link-local addresses (intranet
                               image hosts, tests)
KONTEXT_FETCH_DEADLINE_S       whole fetch of one input image URL  60
KONTEXT_MAX_SAMPLE_BYTES       largest output image downloaded     64000000
KONTEXT_RUN_RETENTION_S        a finished run's state stays in     1209600 (14 days)
                               Redis this long after its end
KONTEXT_LOG_LEVEL              logging level                       INFO
KONTEXT_LOG_FORMAT             text | json (one object per line)   text
KONTEXT_METRICS_HOST           address a worker's metrics bind to  127.0.0.1
=============================  ==================================  ===============================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from kontext_batch.coord.address import display, parse_sentinel
from kontext_batch.errors import ConfigError
from kontext_batch.secret import Secret

__all__ = ["API_BASES", "DEFAULT_REDIS_URL", "ApiKey", "Settings", "parse_api_keys", "resolve_api_base"]

API_BASES: Final[dict[str, str]] = {
    "global": "https://api.bfl.ai",
    "eu": "https://api.eu.bfl.ai",
    "us": "https://api.us.bfl.ai",
}
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
_TRUE: Final = {"1", "true", "yes", "on"}


def resolve_api_base(value: str) -> str:
    """``eu`` -> ``https://api.eu.bfl.ai``; an http(s) URL passes through without its trailing slash."""
    v = value.strip()
    if v.lower() in API_BASES:
        return API_BASES[v.lower()]
    if not v.startswith(("http://", "https://")):
        raise ConfigError(f"KONTEXT_API_BASE must be global, eu, us or an http(s) URL, got {v!r}")
    return v.rstrip("/")


def _parse_caps(value: str) -> dict[str, int]:
    caps: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, num = part.partition("=")
        if not sep or not num.strip().isdigit() or int(num) < 1:
            raise ConfigError(f"KONTEXT_MAX_ACTIVE_MODELS entries look like 'flux-kontext-max=6', got {part!r}")
        caps[name.strip()] = int(num)
    return caps


def _webhook_url(value: str) -> str | None:
    v = value.strip()
    if not v:
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(f"KONTEXT_WEBHOOK_URL must be an http(s) URL without a query, got {v!r}")
    return v


@dataclass(frozen=True)
class ApiKey:
    """One API key and its own caps (None: the settings' defaults). ``repr`` shows only a mask."""

    secret: Secret
    max_active: int | None = None
    caps: dict[str, int] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.secret.fingerprint

    def entry(self) -> str:
        """The line of a KONTEXT_API_KEYS file that gives this key back (holds the key: never log it)."""
        opts = ([f"total={self.max_active}"] if self.max_active is not None else []) + [
            f"{k}={v}" for k, v in self.caps.items()
        ]
        return " ".join([self.secret.reveal(), *opts])


def parse_api_keys(value: str) -> tuple[ApiKey, ...]:
    """KONTEXT_API_KEYS: a file path, or entries separated by commas or new lines.

    An entry is a key, then optional caps of its own: ``KEY total=12 flux-kontext-max=3``. Lines
    starting with ``#`` are comments. Error messages never repeat a key.
    """
    text = value
    candidate = Path(value.strip()).expanduser() if "\n" not in value and "," not in value else None
    if candidate is not None and candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror or str(exc)
            raise ConfigError(f"KONTEXT_API_KEYS names the file {value.strip()}, which cannot be read: {why}") from None
    elif candidate is not None and value.strip().startswith(("/", "./", "~")):
        # A mounted secret that is missing must not become a "key" named after its path.
        raise ConfigError(f"KONTEXT_API_KEYS names the file {value.strip()}, which does not exist or is not a file")
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for n, raw in enumerate(text.replace(",", "\n").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        secret, *opts = line.split()
        total: int | None = None
        caps: dict[str, int] = {}
        for opt in opts:
            name, sep, num = opt.partition("=")
            if not sep or not num.isdigit() or int(num) < 1:
                raise ConfigError(f"KONTEXT_API_KEYS entry {n}: caps look like 'total=24' or 'flux-kontext-max=6'")
            if name == "total":
                total = int(num)
            else:
                caps[name] = int(num)
        key = ApiKey(Secret(secret), total, caps)
        if key.fingerprint not in seen:
            seen.add(key.fingerprint)
            keys.append(key)
    return tuple(keys)


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Build with :meth:`from_env`; ``repr`` never shows the key."""

    api_key: Secret = field(default_factory=lambda: Secret(""))
    api_keys: tuple[ApiKey, ...] = ()
    budget_credits: float | None = None
    api_base: str = API_BASES["global"]
    provider: str = "bfl"
    redis_url: str | None = field(default=None, repr=False)  # it may hold a password; see redis_display
    redis_ca: str | None = None
    redis_cert: str | None = None
    redis_key: str | None = None
    output: str = "./output"
    model: str = "pro"
    max_active: int = 24
    max_active_models: dict[str, int] = field(default_factory=lambda: {"flux-kontext-max": 6})
    submits_per_s: float = 0.0
    http_timeout_s: float = 30.0
    max_attempts: int = 6
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
    lease_s: float = 90.0
    #: A message taken by a worker that was killed before the step began has no holder to watch:
    #: only this grace brings its job back. At 15 s, one such poll decided the kills benchmark's
    #: wall (1.39-1.53 x quiet); at 5 s, 1.10-1.12. Late copies are fenced out, so a message that
    #: was merely slow costs one stale, harmless delivery.
    step_grace_s: float = 5.0
    #: Longest a step may hold its job, however alive its worker: past it the job is re-driven.
    step_deadline_s: float = 600.0
    task_deadline_s: float = 300.0
    stall_warn_s: float = 300.0
    shutdown_grace_s: float = 25.0
    redis_allow_eviction: bool = False
    #: The private Redis of ``demo`` and ``--local`` (nothing to persist: it lives and dies with the command).
    redis_embedded: bool = False
    webhook_url: str | None = None
    task_events: bool = False
    progress_every_s: float = 30.0
    poll_first_s: float = 0.5
    poll_min_s: float = 0.25
    poll_max_s: float = 10.0
    resubmit_expired: bool = False
    log_level: str = "INFO"
    allow_private_urls: bool = False
    fetch_deadline_s: float = 60.0
    #: How long a finished run's keys stay in Redis after its end (``prune`` removes them sooner).
    run_retention_s: float = 1_209_600.0
    max_sample_bytes: int = 64_000_000
    log_format: str = "text"
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()

        def num(name: str, default: float, *, minimum: float = 0.0) -> float:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None
            if value < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
            return value

        provider = env.get("KONTEXT_PROVIDER", d.provider).strip().lower()
        if provider not in ("bfl", "reseller"):
            raise ConfigError(f"KONTEXT_PROVIDER must be bfl or reseller, got {provider!r}")
        caps_raw = env.get("KONTEXT_MAX_ACTIVE_MODELS")
        log_format = env.get("KONTEXT_LOG_FORMAT", d.log_format).strip().lower() or d.log_format
        if log_format not in ("text", "json"):
            raise ConfigError(f"KONTEXT_LOG_FORMAT must be text or json, got {log_format!r}")
        redis_url = env.get("KONTEXT_REDIS_URL") or None
        if redis_url:
            parse_sentinel(redis_url)  # a malformed Sentinel URL is named here, not at first use
        return cls(
            api_key=Secret(env.get("KONTEXT_API_KEY", "").strip()),
            api_keys=parse_api_keys(env.get("KONTEXT_API_KEYS", "")),
            budget_credits=num("KONTEXT_BUDGET", 0.0) if env.get("KONTEXT_BUDGET", "").strip() else None,
            api_base=resolve_api_base(env.get("KONTEXT_API_BASE", d.api_base)),
            provider=provider,
            redis_url=redis_url,
            redis_ca=env.get("KONTEXT_REDIS_CA") or None,
            redis_cert=env.get("KONTEXT_REDIS_CERT") or None,
            redis_key=env.get("KONTEXT_REDIS_KEY") or None,
            output=env.get("KONTEXT_OUTPUT", d.output),
            model=env.get("KONTEXT_MODEL", d.model),
            max_active=int(num("KONTEXT_MAX_ACTIVE", d.max_active, minimum=1)),
            max_active_models=_parse_caps(caps_raw) if caps_raw is not None else dict(d.max_active_models),
            submits_per_s=num("KONTEXT_SUBMITS_PER_S", d.submits_per_s),
            http_timeout_s=num("KONTEXT_HTTP_TIMEOUT_S", d.http_timeout_s, minimum=0.1),
            max_attempts=int(num("KONTEXT_MAX_ATTEMPTS", d.max_attempts, minimum=1)),
            retry_base_s=num("KONTEXT_RETRY_BASE_S", d.retry_base_s),
            retry_max_s=num("KONTEXT_RETRY_MAX_S", d.retry_max_s),
            lease_s=num("KONTEXT_LEASE_S", d.lease_s, minimum=1.0),
            step_grace_s=num("KONTEXT_STEP_GRACE_S", d.step_grace_s, minimum=1.0),
            step_deadline_s=num("KONTEXT_STEP_DEADLINE_S", d.step_deadline_s, minimum=1.0),
            task_deadline_s=num("KONTEXT_TASK_DEADLINE_S", d.task_deadline_s, minimum=1.0),
            stall_warn_s=num("KONTEXT_STALL_WARN_S", d.stall_warn_s, minimum=1.0),
            shutdown_grace_s=num("KONTEXT_SHUTDOWN_GRACE_S", d.shutdown_grace_s),
            redis_allow_eviction=env.get("KONTEXT_REDIS_ALLOW_EVICTION", "0").strip().lower() in _TRUE,
            redis_embedded=env.get("KONTEXT_REDIS_EMBEDDED", "0").strip().lower() in _TRUE,
            webhook_url=_webhook_url(env.get("KONTEXT_WEBHOOK_URL", "")),
            task_events=env.get("KONTEXT_TASK_EVENTS", "0").strip().lower() in _TRUE,
            progress_every_s=num("KONTEXT_PROGRESS_EVERY_S", d.progress_every_s, minimum=0.1),
            poll_first_s=num("KONTEXT_POLL_FIRST_S", d.poll_first_s, minimum=0.01),
            poll_min_s=num("KONTEXT_POLL_MIN_S", d.poll_min_s, minimum=0.01),
            poll_max_s=num("KONTEXT_POLL_MAX_S", d.poll_max_s, minimum=0.01),
            resubmit_expired=env.get("KONTEXT_RESUBMIT_EXPIRED", "0").strip().lower() in _TRUE,
            log_level=env.get("KONTEXT_LOG_LEVEL", d.log_level).upper(),
            allow_private_urls=env.get("KONTEXT_ALLOW_PRIVATE_URLS", "0").strip().lower() in _TRUE,
            fetch_deadline_s=num("KONTEXT_FETCH_DEADLINE_S", d.fetch_deadline_s, minimum=0.1),
            run_retention_s=num("KONTEXT_RUN_RETENTION_S", d.run_retention_s, minimum=1.0),
            max_sample_bytes=int(num("KONTEXT_MAX_SAMPLE_BYTES", d.max_sample_bytes, minimum=1)),
            log_format=log_format,
            metrics_host=env.get("KONTEXT_METRICS_HOST", "").strip() or d.metrics_host,
        )

    def cap_for(self, endpoint: str, key: ApiKey | None = None) -> int:
        """Active-task cap for one endpoint: its own cap, never above the account-wide one."""
        total = self.cap_total(key)
        own = key.caps.get(endpoint) if key is not None else None
        return min(own or self.max_active_models.get(endpoint, total), total)

    def cap_total(self, key: ApiKey | None = None) -> int:
        """Active-task cap of one key over all endpoints."""
        return key.max_active if key is not None and key.max_active is not None else self.max_active

    @property
    def held_keys(self) -> tuple[ApiKey, ...]:
        """Every key this process holds: KONTEXT_API_KEY and KONTEXT_API_KEYS, each once."""
        by_fp: dict[str, ApiKey] = {}
        for key in self.api_keys + ((ApiKey(self.api_key),) if self.api_key else ()):
            by_fp.setdefault(key.fingerprint, key)
        return tuple(by_fp.values())

    @property
    def run_keys(self) -> tuple[ApiKey, ...]:
        """The keys a run started here is bound to: the pool KONTEXT_API_KEYS, else KONTEXT_API_KEY."""
        return self.api_keys or ((ApiKey(self.api_key),) if self.api_key else ())

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    @property
    def redis_display(self) -> str:
        """The Redis URL without any password, for messages."""
        return display(self.effective_redis_url)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (a worker we start)."""
        out = {
            "KONTEXT_API_KEY": self.api_key.reveal(),
            "KONTEXT_API_KEYS": "\n".join(k.entry() for k in self.api_keys),
            "KONTEXT_API_BASE": self.api_base,
            "KONTEXT_PROVIDER": self.provider,
            "KONTEXT_OUTPUT": self.output,
            "KONTEXT_MODEL": self.model,
            "KONTEXT_MAX_ACTIVE": str(self.max_active),
            "KONTEXT_MAX_ACTIVE_MODELS": ",".join(f"{k}={v}" for k, v in self.max_active_models.items()),
            "KONTEXT_RESUBMIT_EXPIRED": "1" if self.resubmit_expired else "0",
            "KONTEXT_LOG_LEVEL": self.log_level,
            "KONTEXT_ALLOW_PRIVATE_URLS": "1" if self.allow_private_urls else "0",
            "KONTEXT_LOG_FORMAT": self.log_format,
            "KONTEXT_METRICS_HOST": self.metrics_host,
        }
        for f in fields(self):
            if f.type in ("float", "int") and f.name not in ("max_active",):
                out[f"KONTEXT_{f.name.upper()}"] = str(getattr(self, f.name))
        if self.redis_url:
            out["KONTEXT_REDIS_URL"] = self.redis_url
        if self.budget_credits is not None:
            out["KONTEXT_BUDGET"] = str(self.budget_credits)
        if self.webhook_url:
            out["KONTEXT_WEBHOOK_URL"] = self.webhook_url
        if self.task_events:
            out["KONTEXT_TASK_EVENTS"] = "1"
        if self.redis_allow_eviction:
            out["KONTEXT_REDIS_ALLOW_EVICTION"] = "1"
        if self.redis_embedded:
            out["KONTEXT_REDIS_EMBEDDED"] = "1"
        for name in ("redis_ca", "redis_cert", "redis_key"):
            value = getattr(self, name)
            if value:
                out[f"KONTEXT_{name.upper()}"] = value
        return out
