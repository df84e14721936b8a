"""A replica's admission control, without Serve: how many it admits and the Retry-After it asks for."""

import pytest

from lrat_ray.serving.admission import Admission


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_admits_up_to_the_limit_and_releases_on_exit_even_after_an_error():
    admission = Admission(max_in_flight=2, retry_after_s=1)
    with admission.admitted():
        assert not admission.full
        with admission.admitted():
            assert admission.full and admission.in_flight == 2
    assert admission.in_flight == 0
    with pytest.raises(RuntimeError), admission.admitted():
        raise RuntimeError("the search broke")
    assert admission.in_flight == 0 and not admission.full


def test_retry_after_is_the_drain_time_at_the_recent_rate_within_bounds():
    clock = Clock()
    admission = Admission(max_in_flight=64, retry_after_s=2, clock=clock)
    assert admission.retry_after() == 2  # no rate measured yet: the floor
    admission.in_flight = 60
    admission.record_answered(20)
    clock.now += 4.0  # 20 answers in 4 s: 5/s, so 60 in flight drain in 12 s
    assert admission.retry_after() == 12
    clock.now += 1.0  # within the window the measured rate is kept
    assert admission.retry_after() == 12
    admission.in_flight = 3
    assert admission.retry_after() == 2  # 0.6 s to drain: never below the floor
    admission.in_flight = 10_000
    assert admission.retry_after() == 60  # nor above a minute
    clock.now += 10.0  # nothing answered for 10 s: no rate, back to the floor
    assert admission.retry_after() == 2
