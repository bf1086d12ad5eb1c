"""One thread that fires every statement's timeout (a ``threading.Timer`` per statement started
an OS thread per query: about 0.2 ms each, on the hot path).

``arm(seconds, fire)`` schedules ``fire`` and returns a ``disarm`` function. ``disarm()`` returns
once ``fire`` can no longer start; if ``fire`` already started, it has finished by the time
``disarm`` returns — so a statement that completes and disarms is never interrupted afterwards
by its own watchdog, just as with ``Timer.cancel`` followed by the statement's cleanup.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("privgate.watchdog")


class _Entry:
    __slots__ = ("deadline", "done", "fire", "seq", "state")

    def __init__(self, deadline: float, seq: int, fire: Callable[[], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.fire = fire
        self.state = "armed"  # armed -> firing -> fired, or armed -> disarmed
        self.done = threading.Event()

    def __lt__(self, other: _Entry) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, fire: Callable[[], None]) -> Callable[[], None]:
        entry = _Entry(time.monotonic() + seconds, next(self._seq), fire)
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="privgate-watchdog", daemon=True
                )
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()

        def disarm() -> None:
            with self._cond:
                if entry.state == "armed":
                    entry.state = "disarmed"
                    return
            entry.done.wait()  # firing: wait until it has finished

        return disarm

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0].state != "armed":
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0].deadline - time.monotonic()
                    if wait <= 0:
                        entry = heapq.heappop(self._heap)
                        entry.state = "firing"
                        break
                    self._cond.wait(wait)
            # Each handler in a thread of its own (timeouts are rare): a slow one (a PostgreSQL
            # cancel request waits for the server) must not delay the other deadlines.
            threading.Thread(target=_fire, args=(entry,), daemon=True).start()


def _fire(entry: _Entry) -> None:
    try:
        entry.fire()
    except Exception:
        log.exception("a statement timeout's handler failed")
    finally:
        entry.state = "fired"
        entry.done.set()


#: The process's watchdog, shared by every warehouse adapter.
WATCHDOG = Watchdog()
