from itertools import islice

from stream_app.core.backoff import Backoff, CircuitBreaker


def test_delays_grow_exponentially_up_to_the_cap():
    delays = list(islice(Backoff(base_s=0.1, cap_s=1.0).delays(rand=lambda: 1.0), 6))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_scales_each_delay():
    assert next(Backoff(base_s=2.0).delays(rand=lambda: 0.25)) == 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_failures_in_a_row():
    breaker = CircuitBreaker(threshold=3, cooldown_s=10, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allows_call()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allows_call()


def test_breaker_half_opens_after_the_cooldown_and_one_result_decides():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    clock.now = 9.9
    assert not breaker.allows_call()
    clock.now = 10.0
    assert breaker.state == "half_open" and breaker.allows_call()
    breaker.record_failure()  # the trial failed: open for another cool-down
    assert breaker.state == "open"
    clock.now = 20.0
    breaker.record_success()
    assert breaker.state == "closed"
