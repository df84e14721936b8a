"""Input off the training step's critical path: the next micro-batches are read, grouped and
tokenized in a background thread while the current one runs on the device.

Tokenization (Rust, GIL released) and Ray Data's batch iteration then overlap the forward and
backward instead of preceding them; on a GPU that is the host time between two steps, on CPU it
competes with torch's threads for the same cores (``bench_train`` measures both ways).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, produced up to ``depth`` ahead in a daemon thread (``depth`` 0: in the caller's
    thread, as a plain loop). An exception raised while producing is raised here, at the item
    where it happened; closing the iterator early (``break``, ``return``) stops the producer."""
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which raises it with its traceback
            put(_Raised(error))

    thread = threading.Thread(target=produce, name="lrat-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
