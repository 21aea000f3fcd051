"""One way for tests to build Settings: the production defaults with every wait turned down.

``fast_settings(emu.base_url, redis_url, api_key=KEY, poll_first_s=0.2)``: the keyword arguments
override :data:`FAST` and set anything else on Settings. Polls start at 0.1 s,
retries back off from 0.01 s to 0.05 s and HTTP calls give up after 5 s, so a test against the
emulator finishes in seconds; a test that needs other timings says so in its own overrides.
"""

from __future__ import annotations

from typing import Any, Final

from kontext_batch.secret import Secret
from kontext_batch.settings import Settings

__all__ = ["FAST", "fast_settings"]

FAST: Final[dict[str, Any]] = {
    "poll_first_s": 0.1,
    "poll_min_s": 0.05,
    "retry_base_s": 0.01,
    "retry_max_s": 0.05,
    "http_timeout_s": 5.0,
}


def fast_settings(
    api_base: str, redis_url: str | None = None, *, api_key: str | Secret = "", **overrides: Any
) -> Settings:
    """Settings for the API at ``api_base`` and Redis at ``redis_url`` with :data:`FAST` timings;
    ``api_key`` may be given as plain text."""
    key = api_key if isinstance(api_key, Secret) else Secret(api_key)
    return Settings(**{**FAST, "api_base": api_base, "redis_url": redis_url, "api_key": key, **overrides})
