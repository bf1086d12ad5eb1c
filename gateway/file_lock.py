"""An exclusive lock between processes on one host: ``flock(2)`` on a lock file.

Used where several gateway processes share files: the SQLite control database's write turn
(``gateway.control_db``) and the build of a DuckDB bounded snapshot (``gateway.composition``).
A waiter sleeps in the kernel and is woken when the holder lets go, unlike SQLite's own busy
handler, which polls with sleeps of up to 100 ms: with two gateway processes on one SQLite file
that polling cost a fifth of the throughput (140 against 172-182 q/s) and gave p99 latencies of
0.7 s (bench/README.md).

Nothing's correctness depends on this lock: SQLite's own lock still guards every transaction,
and a snapshot build writes under a per-process scratch name. It only makes the processes take
turns without sleeping.

The lock belongs to the open file (one per :class:`FileLock`), not to a thread: threads sharing
one :class:`FileLock` serialise themselves first (``control_db.FifoLock``); threads that need to
exclude each other through it use one :class:`FileLock` each (``composition`` makes one per
build).
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FileLock:
    """An exclusive ``flock`` on ``path`` (created, mode 0600, at the first :meth:`acquire`).

    The file is opened on first use, not here, so that making one (e.g. with a control engine
    whose directory does not exist yet) fails where the file is needed, like SQLite's own
    files.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._opened: int | None = None
        self._mutex = threading.Lock()
        #: One thread waits in the kernel for a contended lock, so that a wait can time out.
        self._waiter: concurrent.futures.ThreadPoolExecutor | None = None
        #: A timed-out wait still queued or in the kernel: it lets go as soon as it gets the lock.
        self._abandoned: concurrent.futures.Future[None] | None = None

    @property
    def _fd(self) -> int:
        if self._opened is None:
            self._opened = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._opened

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; False if another process held it for ``timeout`` seconds.

        ``None`` waits as long as it takes.

        Raises:
            OSError: the lock file cannot be opened or created.
        """
        with self._mutex:
            if self._abandoned is None or self._abandoned.done():
                self._abandoned = None
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
            if timeout is None and self._abandoned is None:
                waiting = None
            else:
                if self._waiter is None:
                    self._waiter = concurrent.futures.ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="privgate-file-lock"
                    )
                # Queued behind an abandoned wait, if any: it lets go before this one runs.
                waiting = self._waiter.submit(fcntl.flock, self._fd, fcntl.LOCK_EX)
        if waiting is None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # sleeps in the kernel, without the GIL
            return True
        try:
            waiting.result(timeout)  # None: as long as it takes
            return True
        except concurrent.futures.TimeoutError:
            with self._mutex:
                self._abandoned = waiting
            # Runs in the waiting thread once it has the lock (or now, if it just got it).
            waiting.add_done_callback(self._let_go)
            return False

    def _let_go(self, waited: concurrent.futures.Future[None]) -> None:
        if waited.exception() is None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def held(self) -> Iterator[None]:
        """The lock for the ``with`` block, waiting as long as it takes."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.shutdown(wait=False, cancel_futures=True)
        if self._opened is not None:
            os.close(self._opened)
            self._opened = None
