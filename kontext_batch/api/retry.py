"""The one retry policy for API calls: exponential backoff with jitter, Retry-After honoured.

What is retried is decided by the exception tree alone (``errors.py``): an exception whose
``retryable`` is true (429, 5xx, bad bodies, timeouts, dropped connections) is tried again; anything
else (402, 401/403, 422, 400, moderation, a request our model refused) is raised at once.

==========  =======  ==========================================================================
field       default  meaning
==========  =======  ==========================================================================
attempts    6        total tries, the first included (1 = no retry)
base_s      0.5      backoff before the 2nd try; doubles for each later one
max_s       30.0     ceiling for any wait, Retry-After included
jitter      0.5      share of the backoff drawn at random: 0 = none, 1 = "full jitter"
==========  =======  ==========================================================================

Wait before try ``n + 1`` (after ``n`` failures)::

    backoff = min(max_s, base_s * 2 ** (n - 1)) * (1 - jitter * random())
    wait    = min(max_s, max(backoff, error.retry_after_s or 0))
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import tenacity

from kontext_batch.errors import ConfigError, KontextBatchError

if TYPE_CHECKING:
    from kontext_batch.settings import Settings

__all__ = ["RetryPolicy", "is_retryable"]

T = TypeVar("T")

log = logging.getLogger("kontext_batch.api")

# Jitter only spreads retries apart; it needs no cryptographic quality and no shared seed.
_rng = random.Random()


def is_retryable(exc: BaseException) -> bool:
    """True when ``exc`` belongs to the retryable half of the exception tree."""
    return isinstance(exc, KontextBatchError) and exc.retryable


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to repeat a failed API call. Immutable; share one per process.

    ``sleep`` is how waits are spent (``time.sleep``); tests pass a recorder so nothing sleeps.
    """

    attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.base_s < 0 or self.max_s < 0:
            raise ConfigError("retry waits must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"retry jitter must lie in 0..1, got {self.jitter}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy KONTEXT_MAX_ATTEMPTS, KONTEXT_RETRY_BASE_S and KONTEXT_RETRY_MAX_S ask for."""
        return cls(attempts=settings.max_attempts, base_s=settings.retry_base_s, max_s=settings.retry_max_s)

    def wait_s(self, failures: int, error: BaseException | None = None) -> float:
        """Seconds to wait after ``failures`` failed tries (>= 1) before the next one.

        Public so a caller that retries by rescheduling (a Celery countdown) waits the same way.
        """
        exp = min(self.max_s, self.base_s * 2.0 ** max(0, failures - 1))
        backoff = exp * (1.0 - self.jitter * _rng.random())
        hinted = getattr(error, "retry_after_s", None)
        if isinstance(hinted, int | float) and hinted > 0:
            backoff = max(backoff, float(hinted))
        return min(self.max_s, backoff)

    def call(self, fn: Callable[[], T], *, sleep: Callable[[float], None] | None = None) -> T:
        """Run ``fn`` until it returns, raises a permanent error, or ``attempts`` tries have failed.

        The last error is re-raised as itself (never ``tenacity.RetryError``).
        """

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            return self.wait_s(state.attempt_number, error)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            wait_s = state.next_action.sleep if state.next_action is not None else 0.0
            # Our exception messages never carry the key (see api/_http.py, statuses.py), so they are safe to log.
            log.debug(
                "retry %d/%d in %.2fs after %s: %s",
                state.attempt_number + 1,
                self.attempts,
                wait_s,
                type(error).__name__,
                error,
            )

        retrying = tenacity.Retrying(
            sleep=sleep or self.sleep,
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait,
            retry=tenacity.retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)
