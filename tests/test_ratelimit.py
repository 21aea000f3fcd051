import redis

from kontext_batch.coord.ratelimit import SubmitRateLimiter


def test_at_most_n_submits_per_second_across_limiters(redis_client: redis.Redis) -> None:
    clock = [1000.2]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    a = SubmitRateLimiter(redis_client, "kbtest:rate", 3, sleep=sleep)
    b = SubmitRateLimiter(redis_client, "kbtest:rate", 3, sleep=sleep)  # another worker, same window
    waits = [lim.acquire(now=lambda: clock[0]) for lim in (a, b, a, b)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] > 0.7  # the fourth waits for the next second
    assert int(clock[0]) == 1001


def test_zero_means_no_limit(redis_client: redis.Redis) -> None:
    lim = SubmitRateLimiter(redis_client, "kbtest:rate0", 0, sleep=lambda s: None)
    assert all(lim.acquire() == 0.0 for _ in range(100))
