"""Progress of a long stage on the console: done of total, rate, elapsed and time left.

On a terminal it is a tqdm bar (on stderr); in logs (a Ray job's driver log, CI, a file) it is a
plain line at most every ``every_s`` seconds, and a line every ``every_s`` even while nothing
finishes, so a stage that works on one big piece never looks hung.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("lrat.progress")


class Progress:
    def __init__(self, stage: str, total: int | None, unit: str, every_s: float = 15.0, terminal: bool | None = None):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.done, self.extra, self._emitted = 0, {}, -1
        self.started = self._last = time.monotonic()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._bar = None
        if sys.stderr.isatty() if terminal is None else terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit=f" {unit}", desc=f"lrat {stage}", dynamic_ncols=True, file=sys.stderr)
        else:
            self._ticker = threading.Thread(target=self._tick, name=f"lrat-{stage}-progress", daemon=True)
            self._ticker.start()

    def update(self, n: int = 1, **extra) -> None:
        """``n`` more units done; ``extra`` counts are added up and shown beside (e.g. records=...)."""
        with self._lock:
            self.done += n
            for key, value in extra.items():
                self.extra[key] = self.extra.get(key, 0) + value
            if self._bar is not None:
                self._bar.update(n)
                if self.extra:
                    self._bar.set_postfix(self.extra, refresh=False)
            elif time.monotonic() - self._last >= self.every_s:
                self._emit()

    def set(self, done: int, **values) -> None:
        """The absolute count and current values (e.g. loss), from a report written elsewhere."""
        with self._lock:
            self.extra.update(values)
        self.update(done - self.done)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        total = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        going = self.total and rate > 0 and 0 < self.done < self.total
        left = f", ~{(self.total - self.done) / rate:.0f}s left" if going else ""
        extra = "".join(f", {v:,} {k}" if isinstance(v, int) else f", {k} {v:.4g}" for k, v in self.extra.items())
        return (
            f"{self.stage}: {self.done}{total} {self.unit}{share}{extra}, {rate:.2f} {self.unit}/s, "
            f"elapsed {elapsed:.0f}s{left}"
        )

    def _emit(self) -> None:
        self._last, self._emitted = time.monotonic(), self.done
        log.info("%s", self.line())

    def _tick(self) -> None:
        while not self._closed.wait(self.every_s):
            with self._lock:
                if time.monotonic() - self._last >= self.every_s:
                    self._emit()

    def close(self) -> None:
        self._closed.set()
        if self._bar is not None:
            self._bar.close()
        elif self.done and self.done != self._emitted:  # the last count, unless just said
            with self._lock:
                self._emit()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
