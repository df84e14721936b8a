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


def hold(admission, count):
    """``count`` requests admitted and still in flight; returns their blocks, to be left with ``release``."""
    blocks = [admission.admitted() for _ in range(count)]
    for block in blocks:
        block.__enter__()
    return blocks


def release(blocks):
    while blocks:
        blocks.pop().__exit__(None, None, None)


def test_retry_after_is_the_drain_time_at_the_recent_rate_within_bounds():
    clock = Clock()
    admission = Admission(max_in_flight=20_000, retry_after_s=2, clock=clock)
    assert admission.retry_after() == 2  # no rate measured yet: the floor
    blocks = hold(admission, 60)
    admission.record_answered(20)
    clock.now += 4.0  # 20 answers in 4 busy seconds: 5/s, so 60 in flight drain in 12 s
    assert admission.retry_after() == 12
    clock.now += 1.0  # within the window the measured rate is kept
    assert admission.retry_after() == 12
    release(blocks[3:])
    assert admission.in_flight == 3 and admission.retry_after() == 2  # 0.6 s to drain: never below the floor
    blocks = blocks[:3] + hold(admission, 9_997)
    assert admission.retry_after() == 60  # nor above a minute
    clock.now += 10.0  # nothing answered for 10 busy seconds: no rate, back to the floor
    assert admission.retry_after() == 2
    release(blocks)
    assert admission.in_flight == 0


def test_an_idle_replica_hit_by_a_burst_asks_for_its_busy_drain_time_not_its_idle_time():
    """The rate is per busy second: seven idle seconds before the first answer must not make a
    replica that answers in half a second ask for an eight-second wait."""
    clock = Clock()
    admission = Admission(max_in_flight=1, retry_after_s=1, clock=clock)
    clock.now += 7.0  # deployed, then idle
    with admission.admitted():  # the burst's first request, answered in 0.5 s
        clock.now += 0.5
        admission.record_answered(1)
    with admission.admitted():  # the next one is in flight, so the replica is full
        clock.now += 0.1
        assert admission.full and admission.retry_after() == 1  # 1 in flight at 1/0.6 s: within the second
        assert admission.busy_seconds() == pytest.approx(0.6)
    assert admission.busy_seconds() == pytest.approx(0.6) and admission.in_flight == 0
    clock.now += 30.0  # idle time counts for nothing
    assert admission.busy_seconds() == pytest.approx(0.6)
