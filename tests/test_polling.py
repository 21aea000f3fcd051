from kontext_batch.polling import PollPlanner


def test_first_poll_uses_the_prior_until_latencies_are_seen() -> None:
    p = PollPlanner(first_s=2.0, min_s=0.1, max_s=10)
    assert p.first_delay("ep") == 2.0
    for d in [1.0, 1.1, 0.9, 1.05, 0.95]:
        p.observe("ep", d)
    assert 0.9 <= p.first_delay("ep") <= 1.1


def test_progress_predicts_the_remaining_time() -> None:
    p = PollPlanner(min_s=0.01, max_s=60)
    # 2 s elapsed at 40 %: 3 s to go; poll just after that.
    d = p.next_delay("ep", 2.0, 0.4)
    assert 3.0 < d < 3.3


def test_without_progress_poll_at_the_median_of_longer_jobs() -> None:
    p = PollPlanner(min_s=0.01, max_s=60)
    for d in [1, 2, 3, 4, 5, 6, 7, 8]:
        p.observe("ep", float(d))
    assert abs(p.next_delay("ep", 4.5, None) - (7 - 4.5 + 0.03)) < 1e-6


def test_delays_stay_within_bounds() -> None:
    p = PollPlanner(min_s=0.25, max_s=5)
    assert p.next_delay("ep", 100.0, None) == 5
    assert p.next_delay("ep", 1.0, 0.999) == 0.25
