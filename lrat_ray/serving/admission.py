"""Admission control of one retriever replica, a plain class (tested without Serve).

A full replica says so at once (503 with ``Retry-After``) rather than queueing work it cannot
finish before the client gives up; ``Retry-After`` is how long the requests in flight take to
drain at the recent answer rate, so a fleet turned away at once comes back spread over that time,
not every second (each 503 costs the proxy as much as an answer). The rate is answers per second
*busy* (with requests in flight): a replica that sat idle and is then hit by a burst would
otherwise divide its first answers by the idle time and ask for a wait many times too long.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager


class Admission:
    """``max_in_flight`` requests at a time; ``retry_after_s`` the shortest wait it asks for, 60 s
    the longest. ``clock`` is injectable so the drain rate can be tested without waiting."""

    RATE_WINDOW_S = 2.0  # the answer rate is re-measured at most this often

    def __init__(self, max_in_flight: int, retry_after_s: int, clock: Callable[[], float] = time.monotonic):
        self.max_in_flight, self.retry_after_s, self.clock = max_in_flight, retry_after_s, clock
        self.in_flight = 0
        self.answered = 0  # searches answered, for the drain rate
        self._busy_total = 0.0  # seconds with requests in flight, finished busy spells
        self._busy_from: float | None = None  # when the current busy spell began
        self._rate = 0.0
        self._window_from, self._answered_at, self._busy_at = clock(), 0, 0.0

    @property
    def full(self) -> bool:
        return self.in_flight >= self.max_in_flight

    @contextmanager
    def admitted(self):
        """One request in flight for the duration of the block."""
        if self.in_flight == 0:
            self._busy_from = self.clock()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._busy_total += self.clock() - self._busy_from
                self._busy_from = None

    def record_answered(self, count: int) -> None:
        self.answered += count

    def busy_seconds(self) -> float:
        """Seconds so far with at least one request in flight."""
        current = self.clock() - self._busy_from if self._busy_from is not None else 0.0
        return self._busy_total + current

    def retry_after(self) -> int:
        """Seconds for the requests in flight to drain at the recent answer rate per busy second
        (at least ``retry_after_s``, at most 60; ``retry_after_s`` before any rate is known)."""
        now = self.clock()
        if now - self._window_from >= self.RATE_WINDOW_S:
            busy = self.busy_seconds()
            spent = busy - self._busy_at
            self._rate = (self.answered - self._answered_at) / spent if spent > 0 else 0.0
            self._window_from, self._answered_at, self._busy_at = now, self.answered, busy
        if self._rate <= 0:
            return self.retry_after_s
        return max(self.retry_after_s, min(60, math.ceil(self.in_flight / self._rate)))
