"""RetryPolicy: what is retried, how often, and how long it waits (nothing here really sleeps)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kontext_batch.api.retry import RetryPolicy, is_retryable
from kontext_batch.errors import (
    ApiConnectionError,
    ApiTimeout,
    ApiValidationError,
    AuthError,
    BadRequest,
    ConfigError,
    FieldError,
    KontextBatchError,
    OutOfCredits,
    RateLimited,
    RequestInvalid,
    SampleExpired,
    ServerError,
)
from kontext_batch.settings import Settings


class Recorder:
    """A ``sleep`` that records the waits instead of spending them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def failing(errors: list[BaseException], result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    """A function that raises ``errors`` one per call, then returns ``result``; counts its calls."""
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return result

    return fn, calls


RETRYABLE = [
    RateLimited("429"),
    ServerError("503", status_code=503),
    ApiTimeout("read timeout"),
    ApiConnectionError("reset"),
]
PERMANENT = [
    OutOfCredits("402"),
    AuthError("403"),
    ApiValidationError([FieldError(("body", "seed"), "bad")]),
    BadRequest("400"),
    RequestInvalid([FieldError(("prompt",), "blank")]),
    SampleExpired("gone"),
]


@pytest.mark.parametrize("error", RETRYABLE, ids=lambda e: type(e).__name__)
def test_retryable_error_is_retried_until_success(error: KontextBatchError) -> None:
    sleep = Recorder()
    fn, calls = failing([error, error])
    assert RetryPolicy(attempts=5, base_s=0.1, jitter=0).call(fn, sleep=sleep) == "ok"
    assert calls[0] == 3
    assert sleep.waits == [0.1, 0.2]


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_error_is_raised_at_once(error: KontextBatchError) -> None:
    sleep = Recorder()
    fn, calls = failing([error])
    with pytest.raises(type(error)) as info:
        RetryPolicy(attempts=5).call(fn, sleep=sleep)
    assert info.value is error
    assert calls[0] == 1
    assert sleep.waits == []


def test_foreign_exceptions_are_not_retried() -> None:
    fn, calls = failing([ValueError("a bug")])
    with pytest.raises(ValueError, match="a bug"):
        RetryPolicy(attempts=5).call(fn, sleep=Recorder())
    assert calls[0] == 1


@pytest.mark.parametrize("attempts", [1, 2, 6])
def test_attempts_are_bounded_and_last_error_reraised(attempts: int) -> None:
    errors = [ServerError(f"boom {i}", status_code=500) for i in range(10)]
    fn, calls = failing(errors)  # type: ignore[arg-type]
    sleep = Recorder()
    with pytest.raises(ServerError) as info:
        RetryPolicy(attempts=attempts, base_s=0.01, jitter=0).call(fn, sleep=sleep)
    assert calls[0] == attempts
    assert info.value is errors[attempts - 1]  # the last error itself, not tenacity.RetryError
    assert len(sleep.waits) == attempts - 1


def test_backoff_doubles_and_is_capped_by_max_s() -> None:
    sleep = Recorder()
    fn, _ = failing([ServerError("x")] * 7)
    with pytest.raises(ServerError):
        RetryPolicy(attempts=7, base_s=1.0, max_s=5.0, jitter=0).call(fn, sleep=sleep)
    assert sleep.waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_retry_after_raises_the_wait_but_not_past_max_s() -> None:
    sleep = Recorder()
    errors = [RateLimited("a", retry_after_s=7.0), RateLimited("b", retry_after_s=100.0), RateLimited("c")]
    fn, _ = failing(errors)  # type: ignore[arg-type]
    assert RetryPolicy(attempts=4, base_s=0.5, max_s=30.0, jitter=0).call(fn, sleep=sleep) == "ok"
    assert sleep.waits == [7.0, 30.0, 2.0]


def test_retry_after_shorter_than_backoff_keeps_the_backoff() -> None:
    sleep = Recorder()
    fn, _ = failing([ServerError("a", retry_after_s=0.1)])
    RetryPolicy(attempts=2, base_s=3.0, jitter=0).call(fn, sleep=sleep)
    assert sleep.waits == [3.0]


@pytest.mark.parametrize("jitter", [0.5, 1.0])
def test_jitter_stays_within_its_share_of_the_backoff(jitter: float) -> None:
    policy = RetryPolicy(base_s=2.0, max_s=100.0, jitter=jitter)
    waits = [policy.wait_s(3) for _ in range(300)]  # backoff 8 s before jitter
    assert all(8.0 * (1 - jitter) <= w <= 8.0 for w in waits)
    assert len({round(w, 6) for w in waits}) > 10  # really random, not a constant


def test_policy_sleep_field_is_used_when_call_gets_none() -> None:
    sleep = Recorder()
    fn, _ = failing([ApiTimeout("t")])
    RetryPolicy(attempts=2, base_s=0.25, jitter=0, sleep=sleep).call(fn)
    assert sleep.waits == [0.25]


def test_from_settings_reads_attempts_and_waits() -> None:
    settings = Settings(max_attempts=3, retry_base_s=0.2, retry_max_s=4.0)
    policy = RetryPolicy.from_settings(settings)
    assert (policy.attempts, policy.base_s, policy.max_s) == (3, 0.2, 4.0)


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"base_s": -1.0}, {"max_s": -1.0}, {"jitter": 1.5}, {"jitter": -0.1}]
)
def test_nonsense_policies_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_is_retryable_follows_the_exception_tree() -> None:
    assert all(is_retryable(e) for e in RETRYABLE)
    assert not any(is_retryable(e) for e in PERMANENT)
    assert not is_retryable(RuntimeError("x"))
