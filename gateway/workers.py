"""``privgate serve --workers N``: REST served by N processes on one port (uvicorn's supervisor).

One Python process answers at most about one core's worth of queries (the GIL). With several
workers the kernel spreads connections over N processes that share:

- the control database (budgets, audit chain, keys, stored answers, quarantine). On SQLite the
  processes take write turns through ``gateway.file_lock`` (on this host only); on PostgreSQL
  through row locks. No budget is ever held in a process's memory, so the no-overspend argument
  is the one for concurrent requests (docs/privacy-model.md).
- the bounded snapshot: the supervisor builds it before any worker starts; a later rebuild is
  made once, under a lock beside it, and every other process finds it done.

Each worker has its own warehouse connection, metrics and anomaly counters (as replicas do:
docs/operations.md "Several replicas"). The supervisor process keeps the PostgreSQL wire
endpoint, with its own services.

A policy reload must reach every process: ``SIGHUP`` to the supervisor (or
``POST /v1/admin/policy/reload`` on any worker, which checks the file and sends it) reloads the
supervisor's own policy and then replaces the workers one at a time, each new one ready before
the old one stops. If the file is invalid nothing is replaced and the old policy serves on.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gateway.composition import Services

log = logging.getLogger(__name__)

#: Set by the supervisor for its workers: the pid a worker may send SIGHUP to.
SUPERVISOR_ENV = "PRIVGATE_SUPERVISOR_PID"


def worker_app() -> FastAPI:
    """The ASGI app of one worker (uvicorn's factory): services from the same settings."""
    from gateway.composition import build_services
    from gateway.logs import configure_logging
    from gateway.rest import create_app
    from gateway.settings import Settings

    settings = Settings()
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    return create_app(build_services(settings))


def supervisor_pid() -> int | None:
    """The supervisor of this worker, or None when this process is not one of its workers."""
    raw = os.environ.get(SUPERVISOR_ENV, "")
    if not raw.isdigit() or int(raw) != os.getppid():
        return None
    return int(raw)


def ask_supervisor_to_reload() -> bool:
    """Ask the supervisor for a rolling restart (after a successful reload here); False when
    this process has no supervisor."""
    pid = supervisor_pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    return True


def warehouse_threads_per_worker(configured: int | None, workers: int, cores: int | None) -> int:
    """DuckDB threads for each of ``workers`` processes: the configured number, else the cores
    shared out among them (at least one each).

    Each worker's DuckDB would otherwise start a thread per core, and N workers on C cores
    would run N x C threads for many small concurrent queries: on 2 cores with 2 workers, one
    thread each gave ~20 % more REST queries per second than two (bench/README.md).

    >>> [warehouse_threads_per_worker(None, 2, 2), warehouse_threads_per_worker(None, 3, 8)]
    [1, 2]
    >>> [warehouse_threads_per_worker(4, 2, 2), warehouse_threads_per_worker(None, 4, 2)]
    [4, 1]
    """
    if configured is not None:
        return configured
    return max(1, (cores or 1) // workers)


def serve_workers(services: Services, *, workers: int, uvicorn_options: dict[str, Any]) -> None:
    """Run the supervisor until it is told to stop; ``services`` serve the wire endpoint."""
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            # The supervisor's policy first: if the file is invalid, nothing is replaced (the
            # new workers would fail the same way) and every process keeps the old policy.
            try:
                loaded = services.reload_policy()
            except Exception:
                log.exception("SIGHUP: the policy could not be reloaded; every process keeps it")
                return
            log.warning(
                "SIGHUP: policy version %s; replacing the %d workers one at a time",
                loaded.version,
                self.processes_num,
            )
            self.restart_all()

    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    os.environ["PRIVGATE_WORKERS"] = str(workers)
    os.environ["PRIVGATE_WAREHOUSE_THREADS"] = str(
        warehouse_threads_per_worker(
            services.settings.warehouse_threads, workers, len(os.sched_getaffinity(0))
        )
    )
    config = Config("gateway.workers:worker_app", factory=True, workers=workers, **uvicorn_options)
    sock = config.bind_socket()
    # The supervisor does what a single process's lifespan does, for its wire endpoint.
    services.start_reconciler()
    services.start_snapshot_watch()
    try:
        Supervisor(config, sockets=[sock]).run()
    finally:
        sock.close()
