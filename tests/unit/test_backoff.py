from itertools import islice

from stream_app.backoff import Backoff


def test_delays_grow_exponentially_up_to_the_cap():
    delays = list(islice(Backoff(base_s=0.1, cap_s=1.0).delays(rand=lambda: 1.0), 6))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_scales_each_delay():
    assert next(Backoff(base_s=2.0).delays(rand=lambda: 0.25)) == 0.5
