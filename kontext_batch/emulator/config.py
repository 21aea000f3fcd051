"""How an emulator behaves: latency, caps, credits, faults, and the parsers behind the CLI options.

Every duration the emulator applies is multiplied by ``time_scale`` (task latency, the 600 s life
of a sample URL, the stall of a ``timeout`` fault), so a test can run the real protocol in
milliseconds and a demo at full speed.

=====================================  =============================================================
CLI option string                      parsed by / meaning
=====================================  =============================================================
``--latency 1.0``                      :func:`parse_latency`: every endpoint takes 1 s
``--latency lognormal:5:0.4``          lognormal, median 5 s, sigma 0.4
``--latency flux-kontext-max=9``       one endpoint only (``*`` is the default entry)
``--max-active flux-kontext-max=6``    :func:`parse_max_active`: active tasks per key and endpoint
``--max-active total=24``              the per-key cap over all endpoints
``--fault 500=0.1``                    :func:`parse_fault`: 10 % of submits and polls answer 500
``--fault accepted-lost=0.02``         2 % of submits create the task, then drop the connection
``--key-max-active KEY=4``             :func:`parse_key_value`: this key's cap over all endpoints
``--key-credits KEY=100``              this key's starting credits
=====================================  =============================================================
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "ACCEPTED_FAULTS",
    "DEFAULT_COSTS",
    "FAULT_KINDS",
    "OUTCOME_FAULTS",
    "REQUEST_FAULTS",
    "EmulatorConfig",
    "LatencySpec",
    "parse_fault",
    "parse_key_value",
    "parse_latency",
    "parse_max_active",
]

#: Faults that change how one HTTP request is answered (submit and get_result).
REQUEST_FAULTS: Final = ("500", "503", "429", "timeout", "disconnect")
#: Faults that decide a task's final status at submit.
OUTCOME_FAULTS: Final = ("request-moderated", "content-moderated", "error")
#: Faults drawn after a submit created its task: ``accepted-lost`` drops the answer (the task stays).
ACCEPTED_FAULTS: Final = ("accepted-lost",)
#: Faults of webhook delivery: ``webhook-lost`` never delivers the task's webhook (nor retries it).
WEBHOOK_FAULTS: Final = ("webhook-lost",)
FAULT_KINDS: Final = REQUEST_FAULTS + OUTCOME_FAULTS + ACCEPTED_FAULTS + WEBHOOK_FAULTS

#: Credits per image; endpoints not listed cost ``DEFAULT_COST``.
DEFAULT_COSTS: Final[dict[str, float]] = {"flux-kontext-pro": 4, "flux-kontext-max": 8}
DEFAULT_COST: Final = 4.0
#: Seconds a sample URL stays valid after its task is Ready (before time_scale).
SAMPLE_URL_TTL_S: Final = 600.0
#: A stalled request never stalls less than this many real seconds, whatever the time_scale.
TIMEOUT_FAULT_FLOOR_S: Final = 2.0

_ENDPOINT_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_NUMBER: Final = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_LOGNORMAL_RE: Final = re.compile(rf"^lognormal:({_NUMBER}):({_NUMBER})$")


@dataclass(frozen=True)
class LatencySpec:
    """A task's run time in seconds: ``fixed`` always ``median``; ``lognormal`` around ``median``.

    =====================================  ===========================================
    ``LatencySpec.fixed(0.3)``             every task takes 0.3 s (times time_scale)
    ``LatencySpec.lognormal(4.0, 0.3)``    median 4 s, sigma 0.3: what BFL's API shows
    =====================================  ===========================================
    """

    kind: Literal["fixed", "lognormal"]
    median: float
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median) and self.median >= 0):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {self.median!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"lognormal sigma must be >= 0, got {self.sigma!r}")

    @classmethod
    def fixed(cls, seconds: float) -> LatencySpec:
        return cls("fixed", float(seconds))

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> LatencySpec:
        return cls("lognormal", float(median), float(sigma))

    def sample(self, rng: random.Random) -> float:
        """One draw in seconds (before time_scale)."""
        if self.kind == "fixed" or self.median == 0:
            return self.median
        return rng.lognormvariate(math.log(self.median), self.sigma)


def _default_latency() -> dict[str, LatencySpec]:
    return {"*": LatencySpec.lognormal(4.0, 0.3)}


def _default_max_active() -> dict[str, int]:
    return {"flux-kontext-max": 6}


def _default_costs() -> dict[str, float]:
    return dict(DEFAULT_COSTS)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything an emulator instance does differently from another. Defaults mimic BFL's API.

    ``api_keys`` empty means any non-empty key is accepted. ``credits`` is each key's starting balance
    (None: no limit). ``max_active`` caps active tasks per key and endpoint, ``max_active_total`` per
    key over all endpoints (a flux-kontext-max task counts in both). ``max_active_total_by_key`` and
    ``credits_by_key`` override those two for single keys (mapping the key itself; the emulator keeps
    only its fingerprint, and neither the keys nor these maps appear in the repr). ``faults`` maps a kind of
    :data:`FAULT_KINDS` to a rate 0..1. ``poll_host_swap`` makes ``polling_url`` name the other
    loopback host (127.0.0.1 <-> localhost) and ``not_found_on_submit_host`` makes polls on the
    submit host answer "Task not found", as a client that rebuilds poll URLs would see in production.
    """

    api_keys: tuple[str, ...] = field(default=(), repr=False)
    latency: dict[str, LatencySpec] = field(default_factory=_default_latency)
    time_scale: float = 1.0
    max_active: dict[str, int] = field(default_factory=_default_max_active)
    max_active_total: int = 24
    max_active_total_by_key: dict[str, int] = field(default_factory=dict, repr=False)
    credits: float | None = None
    credits_by_key: dict[str, float | None] = field(default_factory=dict, repr=False)
    faults: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    default_ratio: Literal["1:1", "input"] = "1:1"
    poll_host_swap: bool = True
    not_found_on_submit_host: bool = True
    webhook_form: Literal["bfl", "alt"] = "bfl"
    timeout_fault_s: float = 40.0
    costs: dict[str, float] = field(default_factory=_default_costs)
    #: Rendered samples held in memory at most (MiB); the oldest, downloaded first, are dropped past it.
    sample_cache_mb: float = 1024.0
    #: ``full``: each Ready task's own image (inputs, prompt, seed). ``fast``: one plain image per
    #: (width, height, format), rendered once and shared: load tests measure the pipeline, not Pillow.
    render: Literal["full", "fast"] = "full"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be > 0, got {self.time_scale!r}")
        caps = [self.max_active_total, *self.max_active.values(), *self.max_active_total_by_key.values()]
        if any(n < 1 for n in caps):
            raise ValueError("max_active caps must be >= 1")
        by_key = [*self.max_active_total_by_key, *self.credits_by_key]
        if any(not isinstance(k, str) or not k for k in by_key):
            raise ValueError("keys of max_active_total_by_key and credits_by_key must be non-empty strings")
        if any(c is not None and not (math.isfinite(c) and c >= 0) for c in self.credits_by_key.values()):
            raise ValueError("credits_by_key values must be None or numbers >= 0")
        check_faults(self.faults)
        if self.default_ratio not in ("1:1", "input"):
            raise ValueError(f"default_ratio must be '1:1' or 'input', got {self.default_ratio!r}")
        if self.render not in ("full", "fast"):
            raise ValueError(f"render must be 'full' or 'fast', got {self.render!r}")
        if self.webhook_form not in ("bfl", "alt"):
            raise ValueError(f"webhook_form must be 'bfl' or 'alt', got {self.webhook_form!r}")
        if any(not isinstance(k, str) or not k for k in self.api_keys):
            raise ValueError("api_keys must be non-empty strings")

    def latency_for(self, endpoint: str) -> LatencySpec:
        return self.latency.get(endpoint) or self.latency.get("*") or _default_latency()["*"]

    def cost_for(self, endpoint: str) -> float:
        return self.costs.get(endpoint, DEFAULT_COST)

    @property
    def sample_ttl_s(self) -> float:
        """Real seconds a sample URL is valid after Ready."""
        return SAMPLE_URL_TTL_S * self.time_scale

    @property
    def stall_s(self) -> float:
        """Real seconds a ``timeout`` fault holds a request before answering 504."""
        return max(TIMEOUT_FAULT_FLOOR_S, self.timeout_fault_s * self.time_scale)


def check_faults(faults: dict[str, float]) -> dict[str, float]:
    """Raise ValueError naming the bad entry when a kind is unknown or a rate is outside 0..1."""
    for kind, rate in faults.items():
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if not isinstance(rate, int | float) or not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"fault rate for {kind!r} must be a number between 0 and 1, got {rate!r}")
    return {k: float(v) for k, v in faults.items()}


def _split_endpoint(spec: str, what: str) -> tuple[str, str]:
    name, sep, value = spec.strip().partition("=")
    if not sep:
        return "*", name
    name = name.strip()
    if name != "*" and not _ENDPOINT_RE.match(name):
        raise ValueError(f"{what}: {name!r} is not an endpoint name (like flux-kontext-max)")
    return name, value.strip()


def parse_latency(spec: str) -> tuple[str, LatencySpec]:
    """``"1.0"`` -> ``("*", fixed 1 s)``; ``"flux-kontext-max=lognormal:9:0.4"`` -> that endpoint's.

    Raised ValueError says what a valid spec looks like.
    """
    endpoint, value = _split_endpoint(spec, "latency")
    hint = "use SECONDS, lognormal:MEDIAN:SIGMA, or ENDPOINT=either (e.g. flux-kontext-max=lognormal:9:0.4)"
    m = _LOGNORMAL_RE.match(value)
    try:
        if m:
            return endpoint, LatencySpec.lognormal(float(m.group(1)), float(m.group(2)))
        if re.fullmatch(_NUMBER, value):
            return endpoint, LatencySpec.fixed(float(value))
    except ValueError as exc:
        raise ValueError(f"bad latency {spec!r}: {exc}") from None
    raise ValueError(f"bad latency {spec!r}: {hint}")


def parse_fault(spec: str) -> tuple[str, float]:
    """``"500=0.1"`` -> ``("500", 0.1)``. Raised ValueError lists the known kinds."""
    kind, sep, rate = spec.strip().partition("=")
    kind = kind.strip()
    if not sep or kind not in FAULT_KINDS:
        raise ValueError(f"bad fault {spec!r}: use KIND=RATE with KIND one of {', '.join(FAULT_KINDS)}")
    try:
        value = float(rate)
    except ValueError:
        raise ValueError(f"bad fault {spec!r}: RATE must be a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"bad fault {spec!r}: RATE must be between 0 and 1")
    return kind, value


def parse_max_active(spec: str) -> tuple[str, int]:
    """``"flux-kontext-max=6"`` -> ``("flux-kontext-max", 6)``; ``"total=24"`` -> ``("total", 24)``."""
    name, sep, value = spec.strip().partition("=")
    name = name.strip()
    if not sep or not (name == "total" or _ENDPOINT_RE.match(name)):
        raise ValueError(f"bad max-active {spec!r}: use ENDPOINT=N or total=N (e.g. flux-kontext-max=6)")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"bad max-active {spec!r}: N must be a whole number >= 1") from None
    if n < 1:
        raise ValueError(f"bad max-active {spec!r}: N must be >= 1")
    return name, n


def parse_key_value(spec: str, what: str) -> tuple[str, float]:
    """``"KEY=4"`` -> ``("KEY", 4.0)``; the last ``=`` splits, so a key may contain ``=``.

    Raised ValueError never repeats ``spec``: it holds an API key.
    """
    key, sep, value = spec.rpartition("=")
    if not sep or not key:
        raise ValueError(f"bad {what}: use KEY=NUMBER")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"bad {what}: the part after the last '=' must be a number") from None
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"bad {what}: the number must be >= 0")
    return key, number
