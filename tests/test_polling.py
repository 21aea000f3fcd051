from kontext_batch.api.models import PollResult, Status
from kontext_batch.steps.poll import _latency_seen
from kontext_batch.steps.timing import PollPlanner


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
    assert p.next_delay("ep", 1.0, 0.999, polls=2) == 0.25


def test_a_first_poll_just_short_of_the_end_is_followed_up_sooner_than_min_s() -> None:
    # 0.99 s in at 99 %: about 10 ms to go. Waiting min_s (0.25 s) would hold the slot 25 times
    # longer than needed; the follow-up comes ~40 ms later, and never under a tenth of min_s.
    p = PollPlanner(min_s=0.25, max_s=5)
    d = p.next_delay("ep", 0.99, 0.99, polls=1)
    assert 0.03 < d < 0.05
    assert p.next_delay("ep", 1.0, 0.9999, polls=1) < 0.031
    assert PollPlanner(min_s=1.0).next_delay("ep", 1.0, 0.9999, polls=1) == 0.1
    # A progress figure that stays near the end does not keep us polling fast: later polls wait min_s.
    assert p.next_delay("ep", 1.2, 0.99, polls=2) == 0.25


def _ready(end_time: float | None) -> PollResult:
    return PollResult(id="t", status=Status.READY, raw_status="Ready", end_time=end_time)


def test_latency_comes_from_the_apis_end_time_when_it_has_one() -> None:
    job = {"submitted_at": "100.0"}
    assert _latency_seen(_ready(101.0), job, elapsed=2.5, polls=1) == 1.0


def test_a_first_poll_finish_is_an_upper_bound_and_is_shaded_down() -> None:
    # Seen done at the first poll, 2 s in: it took at most 2 s. Learning 2 s would keep every
    # first poll at 2 s; learning less makes the planner probe earlier.
    assert _latency_seen(_ready(None), {"submitted_at": "100.0"}, elapsed=2.0, polls=1) < 2.0
    assert _latency_seen(_ready(None), {"submitted_at": "100.0"}, elapsed=2.0, polls=3) == 2.0


def test_first_polls_converge_from_a_late_prior() -> None:
    # True latency 1 s, prior 2 s, no end times: each run's first poll moves towards 1 s.
    p = PollPlanner(first_s=2.0, min_s=0.05, max_s=10, window=16)
    for _ in range(60):
        first = p.first_delay("ep")
        seen = first if first >= 1.0 else 1.0 + 0.05  # Ready at the first poll, or one poll later
        p.observe("ep", _latency_seen(_ready(None), {"submitted_at": "0"}, seen, 1 if first >= 1.0 else 2))
    assert 0.8 <= p.first_delay("ep") <= 1.1


def test_the_apis_own_start_and_end_give_the_latency_however_late_the_post_reached_it() -> None:
    # Our clock started 0.9 s before the API took the POST: the API's duration, not ours, is learnt.
    res = PollResult(id="t", status=Status.READY, raw_status="Ready", start_time=50.0, end_time=51.0)
    assert _latency_seen(res, {"submitted_at": "99.1", "accepted_at": "100.0"}, elapsed=1.2, polls=1) == 1.0
